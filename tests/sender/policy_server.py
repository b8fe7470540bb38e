"""A local HTTPS server that serves MTA-STS policies by Host header.

It runs Python's threaded HTTP server behind a trustme certificate for the
``mta-sts.<domain>`` names the test lists, and records each request's
Host and path so tests can check what the fetcher asked for.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import trustme

HOST = "127.0.0.1"


@dataclass
class Served:
    """One canned response: status, headers and body."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(
        default_factory=lambda: {"Content-Type": "text/plain"})


class PolicyServer:
    """Serve ``responses[host]`` for any path on that host."""

    def __init__(self, certificate: trustme.LeafCert) -> None:
        self.responses: dict[str, Served] = {}
        self.requests: list[tuple[str, str]] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                host = (self.headers.get("Host") or "").split(":")[0]
                server.requests.append((host, self.path))
                served = server.responses.get(host, Served(b"not found", 404))
                self.send_response(served.status)
                for name, value in served.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def serve(self, domain: str, body: bytes | str, **options: object) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.responses[f"mta-sts.{domain}"] = Served(data, **options)  # type: ignore[arg-type]

    def fetches(self, domain: str) -> int:
        return sum(1 for host, _ in self.requests if host == f"mta-sts.{domain}")

    def __enter__(self) -> PolicyServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, traceback: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)
