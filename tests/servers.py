"""A static HTTP file server with byte ranges, started and stopped by a test.

Serves a folder on 127.0.0.1 like an object store serves COGs: ``HEAD`` with
``Content-Length``, ``ETag`` and ``Last-Modified``; ``GET`` with one byte range (206)
or several (206 ``multipart/byteranges``, what GDAL asks with
``GDAL_HTTP_MULTIRANGE=YES``); 404 for missing files. Each request is logged so a test
can check that reads were ranged rather than whole-file.
"""

from __future__ import annotations

import email.utils
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BOUNDARY = "rsscgeo-test-boundary"


@dataclass
class Served:
    """A running server: its base URL and the requests it answered."""

    root: Path
    url: str
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, range

    def url_of(self, name: str) -> str:
        """The URL of a file in the served folder."""
        return f"{self.url}/{name}"


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class RangeHandler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean; requests are recorded instead

        def _file(self) -> Path | None:
            path = served.root / self.path.split("?")[0].lstrip("/")
            return path if path.is_file() else None

        def _headers(self, path: Path) -> None:
            stat = path.stat()
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"')
            self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))

        def do_HEAD(self) -> None:
            served.requests.append(("HEAD", self.path, ""))
            path = self._file()
            if path is None:
                self.send_error(404)
                return
            self.send_response(200)
            self._headers(path)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Content-Type", "image/tiff")
            self.end_headers()

        def do_GET(self) -> None:
            wanted = self.headers.get("Range", "")
            served.requests.append(("GET", self.path, wanted))
            path = self._file()
            if path is None:
                self.send_error(404)
                return
            data = path.read_bytes()
            size = len(data)
            ranges = [
                (int(a), min(int(b) if b else size - 1, size - 1))
                for a, b in re.findall(r"(\d+)-(\d*)", wanted)
            ]
            if not ranges:
                self.send_response(200)
                self._headers(path)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.write(data)
                return
            if any(start >= size for start, _ in ranges):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            self.send_response(206)
            self._headers(path)
            if len(ranges) == 1:
                start, end = ranges[0]
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                self.wfile.write(data[start : end + 1])
                return
            body = (
                b"".join(
                    f"--{BOUNDARY}\r\nContent-Type: image/tiff\r\n"
                    f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n".encode()
                    + data[start : end + 1]
                    + b"\r\n"
                    for start, end in ranges
                )
                + f"--{BOUNDARY}--\r\n".encode()
            )
            self.send_header("Content-Type", f"multipart/byteranges; boundary={BOUNDARY}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return RangeHandler


@contextmanager
def serve_folder(root: Path) -> Iterator[Served]:
    """Serve ``root`` on a free port of 127.0.0.1 for the duration."""
    served = Served(root, "")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":  # python tests/servers.py FOLDER [PORT]: try remote scenes locally
    import sys

    folder, port = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 8765
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(Served(folder, "")))
    print(f"serving {folder} with byte ranges at http://127.0.0.1:{port}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
