"""An HTTP server that mimics yubihsm-connector in front of a simulated device.

``POST /connector/api`` carries one raw command frame (application/octet-stream) and
answers with the raw response frame; ``GET /connector/status`` answers the connector's
``key=value`` status text. ``YubiHsm.connect(server.url)`` works against it unchanged.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .device import YubiHsmDevice

CONNECTOR_VERSION = "3.0.4"
API_PATH = "/connector/api"
STATUS_PATH = "/connector/status"
MAX_BODY = 4096


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], device: YubiHsmDevice) -> None:
        super().__init__(address, _Handler)
        self.device = device
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request is routine here (tests drop connections)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # header and body go out in separate writes
    server: _Server

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path != API_PATH:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._send(HTTPStatus.BAD_REQUEST, b"bad request\n", "text/plain")
            self.close_connection = True
            return
        frame = self.rfile.read(length)
        reply = self.server.device.transceive(frame)
        self._send(HTTPStatus.OK, reply, "application/octet-stream")

    def do_GET(self) -> None:
        if self.path != STATUS_PATH:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        host, port = self.server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        text = (
            f"status=OK\nserial=*\nversion={CONNECTOR_VERSION}\npid={os.getpid()}\n"
            f"address={host}\nport={port}\n"
        )
        self._send(HTTPStatus.OK, text.encode(), "text/plain")

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging (the connector is quiet by default too)."""


class ConnectorServer:
    """A yubihsm-connector look-alike for one device, served from a background thread.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. ``port=0`` picks a
    free port; :attr:`url` is what ``YubiHsm.connect`` takes.
    """

    def __init__(self, device: YubiHsmDevice, host: str = "127.0.0.1", port: int = 0) -> None:
        self.device = device
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ConnectorServer:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("connector already started")
        server_class = _Server6 if ":" in self.host else _Server
        self._server = server_class((self.host, self.port), self.device)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"yubihsm-connector:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block until :meth:`stop` is called from another thread (used by ``__main__``)."""
        if self._thread is None:
            raise RuntimeError("connector not started")
        self._thread.join()

    def stop(self) -> None:
        """Stop accepting, drop open keep-alive connections, and release the port."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> ConnectorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
