"""Real local receivers for the campaign tests: an SMTP server (aiosmtpd) and an HTTP server.

Both run in the test process on loopback ports and record what they receive, as a mail relay
and a CRM would.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)  # type: ignore[arg-type]
        return "250 OK"

    def keys(self) -> list[str]:
        with self.lock:
            return [str(m["X-Shoal-Delivery"]) for m in self.messages]


@contextmanager
def smtp_server(box: Mailbox | None = None) -> Iterator[tuple[str, Mailbox]]:
    """``(smtp://127.0.0.1:PORT, mailbox)`` for the duration of the block."""
    box = box or Mailbox()
    port = free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield f"smtp://127.0.0.1:{port}", box
    finally:
        ctl.stop()


@dataclass
class Inbox:
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0  # answer HTTP 503 to this many requests first
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def http_server(fail_first: int = 0) -> Iterator[tuple[str, Inbox]]:
    """``(http://127.0.0.1:PORT/hook, inbox)``: records JSON posts with their headers."""
    inbox = Inbox(fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with inbox.lock:
                if inbox.fail_first > 0:
                    inbox.fail_first -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                inbox.requests.append(
                    {"headers": dict(self.headers), "raw": body, "json": json.loads(body)}
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", inbox
    finally:
        server.shutdown()
        server.server_close()
