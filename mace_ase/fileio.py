"""Files that two processes may write at once: atomic replacement and advisory locks.

Every file mace-ase writes for the user (archives, checkpoints, metrics, the licence
record) is written to a uniquely named temporary file in the same folder, flushed, and
renamed over the target, so a reader sees the old file or the new one, never half of
one, and two writers never share a temporary name. A read-modify-write (the licence
record) or a folder that one process owns for a while (a training run) takes an
advisory lock (``fcntl.flock``) on a ``.lock`` file beside it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Callable, IO, Iterator

from .errors import MaceAseError


class LockedError(MaceAseError, BlockingIOError):
    """Another process holds the lock (a second `train` on the same output folder, say)."""


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a unique temporary file beside `path`; on success it replaces `path` atomically.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def atomic_save(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """For writers that want a file name (zipfile, matplotlib): `write(tmp_path)`, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True, what: str | None = None) -> Iterator[Path]:
    """Hold an exclusive advisory lock on `path` (created if needed) for the block.

    blocking=False raises LockedError at once when another process holds it; `what`
    names the resource in that message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle.fileno(), flags)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockedError(
                    f"{what or path} is in use by another process (lock file {path}); "
                    "wait for it to finish, or stop it"
                ) from None
            raise
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
