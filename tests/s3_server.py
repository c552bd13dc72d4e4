"""A real S3-compatible server on loopback for the tests, and a fault-injecting proxy in front of it.

:class:`MotoServer` runs moto's ``moto_server`` console script as a subprocess on 127.0.0.1.
:class:`FaultProxy` is a small threaded HTTP forwarder between s3fs and that server: it forwards every
request unchanged and records it, unless told to answer the next matching requests with an HTTP error
(500 InternalError, 503 SlowDown) or to stall them past the client's read timeout. Both stop when
asked (the fixtures do so at the end of the test module).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def moto_command(port: int) -> list[str]:
    """``moto_server`` from the running interpreter's bin folder, else ``python -m moto.server``."""
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", HOST, "-p", str(port)]
    found = shutil.which("moto_server")
    if found:
        return [found, "-H", HOST, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]


def storage_options(endpoint: str, **config: Any) -> dict[str, Any]:
    """s3fs options for ``endpoint``; botocore does not retry (so injected faults reach ckpthooks;
    s3fs's own retries are a class attribute, ``S3FileSystem.retries``, which the fixtures set to 1),
    and ``config`` adds botocore settings such as ``read_timeout``."""
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 10, "retries": {"total_max_attempts": 1}, **config},
    }


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even if it is killed before its
    fixtures can stop the server (Linux only; elsewhere the fixture's stop() is all there is)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def create_bucket(port: int, name: str) -> None:
    """Create bucket ``name`` with one plain (unsigned) request; moto accepts those."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("PUT", f"/{name}", body=b"", headers={"Content-Length": "0"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"creating bucket {name} failed: {response.status} {body[:500]!r}")
    finally:
        conn.close()


class MotoServer:
    """``moto_server`` on a free loopback port, in a subprocess of its own."""

    def __init__(self, log_path: Path, start_timeout: float = 30.0) -> None:
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> MotoServer:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        for _ in range(3):  # the free port may be taken between the probe and the bind
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    moto_command(self.port), stdout=log, stderr=log, env=env, preexec_fn=_die_with_parent
                )
            if self._wait_until_up():
                return self
            self.stop()
        raise RuntimeError(f"moto_server did not start; see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")

    def _wait_until_up(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/moto-api/")
                conn.getresponse().read()
                conn.close()
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@dataclass
class Rule:
    """Answer the next ``remaining`` requests matching ``method`` and ``suffix`` with a fault."""

    action: str  # "status" or "stall"
    remaining: int
    method: str | None = None
    suffix: str | None = None
    status: int = 503
    stall_seconds: float = 0.0
    query: str | None = None  # a substring of the query, e.g. "partNumber=1"
    fired: int = 0

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.query is not None and self.query not in query:
            return False
        return self.suffix is None or path.endswith(self.suffix)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # unquoted, without the query
    query: str
    outcome: str  # "200", "204", ... for forwarded requests; "fault 503", "stall" for injected ones
    sent: int = 0  # bytes of the response body the client got


_ERROR_CODES = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "expect", "content-length",
}


@dataclass
class FaultProxy:
    """A forwarding HTTP proxy to ``upstream_port`` that injects faults on request."""

    upstream_port: int
    port: int = 0
    rules: list[Rule] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _connections: set[socket.socket] = field(default_factory=set)
    _refusing: bool = False
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    # ------------------------------------------------------------------ control
    def fail(
        self, count: int, status: int = 503, method: str | None = None, suffix: str | None = None,
        query: str | None = None,
    ) -> Rule:
        """Answer the next ``count`` matching requests with ``status`` (500 or 503) and an S3 error body."""
        rule = Rule("status", count, method, suffix, status=status, query=query)
        with self._lock:
            self.rules.append(rule)
        return rule

    def stall(self, count: int, seconds: float, method: str | None = None, suffix: str | None = None) -> Rule:
        """Hold the next ``count`` matching requests for ``seconds``, then drop the connection unanswered."""
        rule = Rule("stall", count, method, suffix, stall_seconds=seconds)
        with self._lock:
            self.rules.append(rule)
        return rule

    def cut_connections(self) -> int:
        """Close every client connection now, and each new one at once until :meth:`reset` (a
        watchdog's way to unblock a stuck client: it gets errors instead of waiting forever);
        returns how many were open."""
        with self._lock:
            self._refusing = True
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return len(connections)

    def reset(self) -> None:
        with self._lock:
            self._refusing = False
            self.rules.clear()
            self.log.clear()

    def requests(self, method: str | None = None, suffix: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r for r in self.log
                if (method is None or r.method == method) and (suffix is None or r.path.endswith(suffix))
            ]

    def _take_rule(self, method: str, path: str, query: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, query):
                    rule.remaining -= 1
                    rule.fired += 1
                    return rule
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and "Expect: 100-continue", as S3 clients use
            disable_nagle_algorithm = True  # headers and body go out at once: no delayed-ACK stalls
            wbufsize = 1 << 16  # flushed after every request

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)
                    refusing = proxy._refusing
                if refusing:
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def handle_expect_100(self) -> bool:
                answer = super().handle_expect_100()
                self.wfile.flush()  # the client waits for the "100 Continue" before sending the body
                return answer

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(parsed.path)
                body = self._body()
                rule = proxy._take_rule(self.command, path, parsed.query)
                if rule is not None and rule.action == "stall":
                    proxy._record(Request(self.command, path, parsed.query, "stall"))
                    proxy._stopping.wait(rule.stall_seconds)
                    self.close_connection = True  # drop it unanswered
                    return
                if rule is not None:
                    proxy._record(Request(self.command, path, parsed.query, f"fault {rule.status}"))
                    code, message = _ERROR_CODES.get(rule.status, ("InternalError", "Injected failure."))
                    payload = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n'
                        f"<Error><Code>{code}</Code><Message>{message}</Message>"
                        f"<Resource>{path}</Resource><RequestId>injected</RequestId></Error>"
                    ).encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(HOST, proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    # recorded before the client gets the answer, so that the log is complete when it does
                    sent = 0 if self.command == "HEAD" else len(data)
                    proxy._record(Request(self.command, path, parsed.query, str(response.status), sent))
                    self.send_response_only(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP:
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", response.getheader("Content-Length") or "0")
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        server = ThreadingHTTPServer((HOST, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


@contextlib.contextmanager
def running_s3(log_path: Path) -> Iterator[tuple[MotoServer, FaultProxy]]:
    """Moto on loopback with a proxy in front; both are stopped on exit."""
    moto = MotoServer(log_path).start()
    try:
        proxy = FaultProxy(moto.port).start()
        try:
            yield moto, proxy
        finally:
            proxy.stop()
    finally:
        moto.stop()
