"""A tiny Hugging Face Hub look-alike on 127.0.0.1, for download tests that never touch the internet.

It answers what ``huggingface_hub.hf_hub_download`` asks, the way the Hub does for LFS files:

* ``HEAD|GET /{repo_id}/resolve/{revision}/{filename}`` (``/datasets/{repo_id}/...`` for a data set) -> 302 to a storage server (another
  port, so another origin, like the Hub's CDN), with ``X-Repo-Commit``, ``X-Linked-Etag``
  and ``X-Linked-Size``; or 404 with ``X-Error-Code`` RepoNotFound / RevisionNotFound /
  EntryNotFound.
* ``HEAD|GET /blobs/{sha256}`` on the storage server -> the bytes, with ``ETag`` and
  ``Content-Length``.

Every request is logged in ``hub.requests`` as (method, path).

``FileServer`` is a plain HTTP file server (with Range requests and failure modes) for the
models that are published as direct downloads rather than on the Hub.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class LocalHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"revisions": {name: commit}, "files": {commit: {filename: bytes}}}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self._hub = self._serve(self._hub_handler())
        self._storage = self._serve(self._storage_handler())

    # -------------------------------------------------------------- content

    def add_file(self, repo_id: str, filename: str, data: bytes, revision: str = "main", repo_type: str = "model") -> str:
        """Commit `data` as `filename` on branch/tag `revision`; returns the new commit hash."""
        repo_id = f"datasets/{repo_id}" if repo_type == "dataset" else repo_id
        repo = self.repos.setdefault(repo_id, {"revisions": {}, "files": {}})
        previous = repo["files"].get(repo["revisions"].get(revision), {})
        files = {**previous, filename: data}
        commit = hashlib.sha1(repr((repo_id, revision, sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()))).encode()).hexdigest()
        repo["files"][commit] = files
        repo["revisions"][revision] = commit
        self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    # -------------------------------------------------------------- servers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def storage_url(self) -> str:
        # Another host name than the Hub's (as the real CDN is): no client version follows it as a same-host redirect.
        return f"http://localhost:{self._storage.server_address[1]}"

    def stop(self) -> None:
        for server in (self._hub, self._storage):
            server.shutdown()
            server.server_close()

    @staticmethod
    def _serve(handler) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def _resolve(self, repo_id: str, revision: str, filename: str):
        """-> (status, headers) for /resolve."""
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        commit = repo["revisions"].get(revision, revision if revision in repo["files"] else None)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: " + revision}
        data = repo["files"][commit].get(filename)
        if data is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit}
        sha = hashlib.sha256(data).hexdigest()
        return 302, {
            "Location": f"{self.storage_url}/blobs/{sha}",
            "X-Repo-Commit": commit,
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(data)),
            "ETag": f'"{sha}"',
        }

    def _hub_handler(self):
        hub = self

        class Handler(_Quiet):
            def _answer(self, body: bool):
                hub.requests.append((self.command, self.path))
                parts = unquote(self.path.split("?")[0]).lstrip("/").split("/")
                prefix = parts[:1] if parts[:1] == ["datasets"] else []  # data sets live under /datasets/
                parts = parts[len(prefix):]
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"")
                status, headers = hub._resolve("/".join(prefix + parts[:2]), parts[3], "/".join(parts[4:]))
                self._send(status, headers, b"" if status == 302 else b'{"error": "not found"}', body)

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        return Handler

    def _storage_handler(self):
        hub = self

        class Handler(_Quiet):
            def _answer(self, body: bool):
                hub.requests.append((self.command, self.path))
                sha = self.path.rsplit("/", 1)[-1]
                data = hub.blobs.get(sha)
                if data is None:
                    return self._send(404, {}, b"")
                self._send(200, {"ETag": f'"{sha}"', "Content-Type": "application/zip"}, data, body)

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        return Handler


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, headers: dict, data: bytes, body: bool = True):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and data:
            self.wfile.write(data)


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class FileServer:
    """Plain HTTP file server on 127.0.0.1 for direct (non-Hub) model downloads, with failure modes.

    ``files[path] = bytes`` serves GET/HEAD with Content-Length and Range support (206).
    Per path, ``truncate[path] = n`` closes the connection after n bytes of the body (once),
    ``html`` answers with a web page, ``delay_s`` slows each 4 KiB block (to overlap clients).
    Every request is logged in ``requests`` as (method, path, Range header or None).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.html: set[str] = set()
        self.delay_s = 0.0
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(_Quiet):
            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                import time

                path = unquote(self.path.split("?")[0])
                rng = self.headers.get("Range")
                server.requests.append((self.command, path, rng))
                if path in server.html:
                    page = b"<html><body>Not here</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    return self.wfile.write(page) if body else None
                data = server.files.get(path)
                if data is None:
                    return self._send(404, {"Content-Type": "text/plain"}, b"Not Found", body)
                start, status = 0, 200
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start, status = int(rng[6:-1]), 206
                    if start >= len(data):
                        return self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", body)
                payload = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                cut = server.truncate.pop(path, None)
                if cut is not None:
                    payload = payload[:cut]
                for offset in range(0, len(payload), 4096):
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    self.wfile.write(payload[offset:offset + 4096])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self._server = LocalHub._serve(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
