"""A small HTTP file server that honours range requests and counts the bytes it sends.

It serves a folder the way a static object store or CDN does for COGs (``Accept-Ranges``,
``206 Partial Content``, overlapping ranges coalesced), so a remote build can be tried, tested
and measured on one machine::

    python -m data_pipelines.range_server ./archive --port 8000

Every answer is counted per path (requests, body bytes), which is how the remote-read benchmark
measures what a build fetched. Files are sent in chunks (memory stays flat whatever their size),
a connection idle for ``idle_timeout_s`` is closed, and a ``Range`` header the server does not
understand is ignored as RFC 9110 allows: the whole file, ``200``. A well-formed range that
lies past the end of the file is ``416``.
"""

from __future__ import annotations

import argparse
import re
import threading
from collections import Counter
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
CHUNK_BYTES = 2**20  # a file is read and sent this much at a time
IDLE_TIMEOUT_S = 30.0  # a connection (keep-alive included) silent this long is closed


def range_is_understood(header: str) -> bool:
    """Whether ``header`` is a byte-range set this server parses; any other ``Range`` header
    (another unit, bad syntax) is ignored and the whole file sent (RFC 9110, section 14.2)."""
    if not header.startswith("bytes="):
        return False
    parts = header[len("bytes=") :].split(",")
    return all((m := _RANGE.match(p)) is not None and any(m.groups()) for p in parts)


def parse_ranges(header: str, size: int) -> tuple[int, int] | None:
    """The byte range ``[start, end]`` a ``Range`` header asks for; several ranges are
    coalesced into the one range that covers them (RFC 9110 allows it). None: not satisfiable."""
    if not header.startswith("bytes="):
        return None
    spans = []
    for part in header[len("bytes=") :].split(","):
        m = _RANGE.match(part)
        if m is None:
            return None
        first, last = m.groups()
        if first == "":  # suffix range: the last N bytes
            if not last:
                return None
            start, end = max(0, size - int(last)), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        if start <= end and start < size:
            spans.append((start, end))
    if not spans:
        return None
    return min(s for s, _ in spans), max(e for _, e in spans)


class RangeServer(ThreadingHTTPServer):
    """Serves ``root`` on ``host:port`` (port 0: a free port) in a background thread."""

    daemon_threads = True

    def __init__(
        self,
        root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ):
        self.root = Path(root).resolve()
        self.idle_timeout_s = idle_timeout_s
        self.bytes_sent: Counter[str] = Counter()  # url path -> body bytes
        self.requests: Counter[str] = Counter()  # url path -> requests (any status)
        self.whole_file_answers: Counter[str] = Counter()  # url path -> 200 answers to a GET
        # (url path, header name) of every request, lower-case names: which credentials came
        self.headers_seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _RangeHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_sent.values())

    def reset_counts(self) -> None:
        with self._lock:
            self.bytes_sent.clear()
            self.requests.clear()
            self.whole_file_answers.clear()
            self.headers_seen.clear()

    def count(self, path: str, nbytes: int, whole: bool = False) -> None:
        with self._lock:
            self.requests[path] += 1
            self.bytes_sent[path] += nbytes
            self.whole_file_answers[path] += int(whole)

    def count_bytes(self, path: str, nbytes: int) -> None:
        with self._lock:
            self.bytes_sent[path] += nbytes

    def start(self) -> RangeServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _RangeHandler(SimpleHTTPRequestHandler):
    server: RangeServer
    protocol_version = "HTTP/1.1"  # keep-alive, as GDAL's curl expects of a real server

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: tests and benchmarks read the counters instead

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout_s  # the socket timeout of this connection
        super().setup()

    def _file(self) -> Path | None:
        rel = unquote(urlparse(self.path).path).lstrip("/")
        target = (self.server.root / rel).resolve()
        if self.server.root not in target.parents or not target.is_file():
            return None
        return target

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = urlparse(self.path).path
        with self.server._lock:
            self.server.headers_seen.update((path, name.lower()) for name in self.headers)
        target = self._file()
        if target is None:
            self.server.count(path, 0)
            self.send_error(HTTPStatus.NOT_FOUND, "no such file")
            return
        size = target.stat().st_size
        start, end, status = 0, size - 1, HTTPStatus.OK
        header = self.headers.get("Range")
        if header and range_is_understood(header):
            span = parse_ranges(header, size)
            if span is None:
                self.server.count(path, 0)
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end, status = span[0], span[1], HTTPStatus.PARTIAL_CONTENT
        length = end - start + 1
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", self.guess_type(str(target)))
        self.send_header("Content-Length", str(length))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            self.server.count(path, 0)
            return
        self.server.count(path, 0, whole=status == HTTPStatus.OK)
        with target.open("rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                data = f.read(min(CHUNK_BYTES, left))
                if not data:
                    break  # the file shrank while being sent; the client sees a short body
                # counted before the write: a client that has the bytes must find them counted
                self.server.count_bytes(path, len(data))
                self.wfile.write(data)
                left -= len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        parser.error(f"root: {args.root} is not a folder; give the folder to serve")
    server = RangeServer(args.root, args.host, args.port)
    print(f"serving {server.root} at {server.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print(f"sent {server.total_bytes} bytes in {sum(server.requests.values())} requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
