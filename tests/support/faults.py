"""A fault-injecting HTTP proxy in front of a real S3 server: 503 SlowDown, connection resets,
writes whose response is lost after they succeeded, and slow answers, by a deterministic rule."""

from __future__ import annotations

import http.client
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
# (method, path, request number) -> one of None, "slowdown", "reset", "drop_after_write", "delay", "denied"
Rule = Callable[[str, str, int], str | None]
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


@dataclass
class FaultLog:
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, fault: str) -> None:
        with self.lock:
            self.counts[fault] = self.counts.get(fault, 0) + 1


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # resets are deliberate here


class FaultProxy:
    """Forwards to `upstream` (http://host:port), applying `rule` to each request; the Host header is
    passed through unchanged so SigV4 signatures made for the proxy still verify upstream."""

    def __init__(self, upstream: str, rule: Rule, delay: float = 0.5):
        self.upstream = urlsplit(upstream)
        self.rule, self.delay = rule, delay
        self.log = FaultLog()
        self._numbers = itertools.count(1)
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy.rule(self.command, self.path, next(proxy._numbers))
                if fault:
                    proxy.log.add(fault)
                if fault == "slowdown":
                    return self._reply(503, [("Content-Type", "application/xml")], SLOWDOWN)
                if fault == "denied":  # not retried by botocore: fails the write at once
                    return self._reply(403, [("Content-Type", "application/xml")],
                                       SLOWDOWN.replace(b"SlowDown", b"AccessDenied"))
                if fault == "reset":
                    return self._reset()
                if fault == "delay":
                    time.sleep(proxy.delay)
                status, headers, data = self._forward(body)
                if fault == "drop_after_write":
                    return self._reset()  # the write happened upstream; the client never hears of it
                self._reply(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_HEADERS:
                            conn.putheader(name, value)
                    conn.endheaders(body or None)
                    response = conn.getresponse()
                    data = response.read()
                    headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
                    return response.status, headers, data
                finally:
                    conn.close()

            def _reply(self, status: int, headers, data: bytes) -> None:
                self.send_response(status)
                head = self.command == "HEAD"  # its Content-Length is the object's size, with no body
                for name, value in headers:
                    if head or name.lower() != "content-length":
                        self.send_header(name, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _reset(self) -> None:
                # SO_LINGER 0: close with RST, as a dying load balancer does.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

        return Handler
