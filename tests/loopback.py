"""Loopback stand-ins for the network: a model mirror, a package index, a port nobody listens on."""
from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeMirror:
    """Serves `files` under /codegen-tiny/; can cut a response short or ignore Range."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: dict[str, int] = {}  # name -> bytes sent before the connection drops
        self.ignore_range = False
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                mirror.requests.append((name, rng))
                body = mirror.files.get(name) if self.path.startswith("/codegen-tiny/") else None
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and not mirror.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = mirror.cut_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[start:start + cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port with nobody listening (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeIndex:
    """A PEP 503 package index on loopback for `wheels` (sha256 fragments, PEP 658 metadata; no
    cache headers, so pip's cache keeps nothing); a response for a file in `broken` is cut short."""

    def __init__(self, wheels: list[Path]):
        self.files = {p.name: p.read_bytes() for p in wheels}
        self.requests: list[str] = []
        self.broken: set[str] = set()
        index = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urllib.parse.unquote(self.path)
                index.requests.append(path)
                if path.startswith("/simple/"):
                    body = index.page(path.strip("/").split("/")[-1])
                elif path.startswith("/files/") and path.endswith(".metadata"):
                    body = index.metadata(path.removeprefix("/files/").removesuffix(".metadata"))
                else:
                    body = index.files.get(path.removeprefix("/files/"))
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if path.startswith("/simple/")
                                 else "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path.removeprefix("/files/") in index.broken:
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _project(filename: str) -> str:
        return re.sub(r"[-_.]+", "-", filename.split("-", 1)[0]).lower()

    def metadata(self, filename: str) -> bytes | None:
        if filename not in self.files:
            return None
        with zipfile.ZipFile(io.BytesIO(self.files[filename])) as z:
            name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            return z.read(name)

    def page(self, project: str) -> bytes | None:
        links = []
        for name, data in sorted(self.files.items()):
            if self._project(name) != project:
                continue
            meta = hashlib.sha256(self.metadata(name)).hexdigest()
            links.append(f'<a href="/files/{name}#sha256={hashlib.sha256(data).hexdigest()}" '
                         f'data-dist-info-metadata="sha256={meta}" '
                         f'data-core-metadata="sha256={meta}">{name}</a>')
        if not links:
            return None
        return ("<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>").encode()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
