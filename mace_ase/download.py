"""One file over HTTPS into a cache folder: resumable, checksum-verified, safe with two processes.

The bytes go to ``<target>.part`` under a lock (``<target>.lock``), so a second process
waits instead of downloading the same file, and an interrupted transfer resumes where it
stopped (an HTTP Range request) the next time. Only a complete file whose size matches
the server's and whose sha256 matches the expected one (when one is known) is renamed to
``target``: the target is whole or absent, never half a file.

Errors name the URL and what went wrong: ``ModelNotFoundError`` (404/410),
``ChecksumError`` (the bytes are not the published file) and ``DownloadError``
(unreachable host, other HTTP statuses, an HTML page, a truncated transfer).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import ChecksumError, DownloadError, ModelNotFoundError
from .fileio import file_lock

CHUNK = 1 << 20
TIMEOUT_S = 30.0  # per connection attempt and per read, not for the whole file
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def download(url: str, target: str | os.PathLike, *, sha256: str | None = None, force: bool = False,
             timeout: float = TIMEOUT_S, user_agent: str = "mace-ase") -> tuple[Path, str]:
    """Fetch `url` into `target` (unless it is there already); returns (target, its sha256).

    force: fetch again even if `target` exists (a damaged copy, say); it is replaced only
    once the new file is complete and verified.
    """
    _check_scheme(url)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock"), what=f"the download of {target.name}"):
        if target.exists() and not force:  # another process finished it while this one waited
            return target, file_sha256(target)
        part = target.with_name(target.name + ".part")
        _fetch(url, part, timeout, user_agent)
        digest = file_sha256(part)
        if sha256 is not None and digest != sha256.lower():
            part.unlink()
            raise ChecksumError(
                f"the file downloaded from {url} has sha256 {digest}, not the published {sha256.lower()}: "
                "it is not the published file (a corrupted transfer, or the file was replaced on the server). "
                "It was deleted; try again, and report it if it persists"
            )
        os.replace(part, target)
    return target, digest


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_scheme(url: str) -> None:
    """HTTPS only; plain HTTP only to this machine (local mirrors, tests)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in LOOPBACK):
        return
    raise DownloadError(f"refusing to download {url}: only https:// URLs (or http:// on this machine) are used")


def _fetch(url: str, part: Path, timeout: float, user_agent: str) -> None:
    """Download into `part`, continuing a partial file when the server supports ranges."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is not a prefix the server knows: start again
            part.unlink()
            return _fetch(url, part, timeout, user_agent)
        raise _http_error(url, error.code, error.reason) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise DownloadError(f"{_host(url)} is unreachable ({_reason(error)})") from None
    with response:
        if "text/html" in (response.headers.get("Content-Type") or ""):
            raise DownloadError(f"{url} answered with a web page (text/html), not the file: the URL is wrong or moved")
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        received = have
        try:
            with open(part, "ab" if resumed else "wb") as handle:
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
                    received += len(block)
                handle.flush()
                os.fsync(handle.fileno())
        except (OSError, http.client.HTTPException) as error:
            if isinstance(error, OSError) and error.filename is not None:
                raise  # a local disk problem, not the network
            raise _interrupted(url, part, received, expected, error) from None
    if expected is not None and received < expected:
        raise _interrupted(url, part, received, expected, None)


def _interrupted(url, part, received, expected, error) -> DownloadError:
    of = f" of {expected:,}" if expected is not None else ""
    why = f" ({_reason(error)})" if error is not None else ""
    return DownloadError(
        f"the transfer from {url} stopped after {received:,}{of} bytes{why}; the partial file {part} is kept "
        "and the next attempt continues from there"
    )


def _http_error(url: str, status: int, reason) -> Exception:
    if status in (404, 410):
        return ModelNotFoundError(f"{url} does not exist (HTTP {status})")
    return DownloadError(f"{_host(url)} answered HTTP {status} ({reason}) for {url}")


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _reason(error: BaseException) -> str:
    inner = getattr(error, "reason", None)
    if isinstance(inner, BaseException):
        error = inner
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
