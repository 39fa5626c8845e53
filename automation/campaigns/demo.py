"""The demo's campaigns: one of each channel from ``examples/campaigns/`` on the real data.

:func:`load_examples` stores the example campaigns (the demo calls it before the replay's last
months, so those months' segment changes trigger them). :func:`run_examples` then decides them
on the replay's clock, and dispatches: e-mails (and coupons) to ``.eml`` files through the file
transport, the webhook to a receiver on loopback that checks each signature (as the shop's CRM
would), the audience export to a CSV file, routing into the table ``shoal user`` reads.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text

from automation.campaigns import service
from automation.campaigns.dispatch import dispatch
from automation.config import Settings
from automation.features.build import latest_event_time

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "campaigns"


def load_examples(engine: Engine, folder: Path = EXAMPLES) -> list[dict[str, Any]]:
    return [service.load(engine, f) for f in sorted(folder.glob("*.yaml"))]


@contextmanager
def _crm(secret: str) -> Iterator[tuple[str, dict[str, int]]]:
    """A loopback HTTP receiver counting posts whose HMAC signature checks out."""
    seen = {"posts": 0, "verified": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            seen["posts"] += 1
            seen["verified"] += hmac.compare_digest(want, self.headers.get("X-Shoal-Signature", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/crm", seen
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_examples(engine: Engine, out_dir: Path) -> dict[str, Any]:
    """Decide and dispatch the loaded campaigns; returns counts and one rendered e-mail."""
    with engine.connect() as conn:
        now = latest_event_time(conn)  # the replay's clock
    mail_dir = out_dir / "mail"
    secret = secrets.token_hex(16)
    with (
        _crm(secret) as (url, crm),
        _env(SHOAL_CRM_WEBHOOK=url, SHOAL_WEBHOOK_SECRET=secret),
    ):
        report = service.run(engine, now=now)
        sent = dispatch(
            engine, Settings(smtp_url=mail_dir.resolve().as_uri()), limit=1_000_000, now=now
        )
    rendered = _one_email(mail_dir)
    with engine.connect() as conn:
        routed = conn.execute(
            text(
                "SELECT u.external_id, r.queue FROM routing r JOIN users u ON u.id = r.user_key "
                "ORDER BY r.user_key LIMIT 1"
            )
        ).first()
    return {
        "campaigns": report.campaigns,
        "dispatch": sent.to_dict(),
        "crm": crm,
        "email": rendered,
        "routed_user": None if routed is None else str(routed[0]),
        "mail_dir": str(mail_dir),
        "at": pd.Timestamp(now).isoformat(),
    }


def _one_email(folder: Path) -> dict[str, str] | None:
    files = sorted(folder.glob("*.eml")) if folder.exists() else []
    for f in files:
        msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
        if "picked" not in str(msg["Subject"]).lower():
            continue
        html = msg.get_body(("html",))
        plain = msg.get_body(("plain",))
        html_path = f.with_suffix(".html")
        if html is not None:
            html_path.write_text(html.get_content())
        return {
            "file": str(f),
            "html_file": str(html_path),
            "subject": str(msg["Subject"]),
            "to": str(msg["To"]),
            "text": plain.get_content() if plain is not None else "",
        }
    return None


__all__ = ["load_examples", "run_examples"]
