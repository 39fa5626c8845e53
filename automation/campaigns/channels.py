"""Channel senders: SMTP e-mail, signed JSON webhooks, audience export files.

Every message carries its delivery key as an idempotency key (the e-mail's ``Message-ID`` and
``X-Shoal-Delivery`` header, the webhook's ``Idempotency-Key`` header, the export's ``key``
column). The dispatcher marks a delivery sent in the same transaction that holds its row lock,
so a message is sent again only if the process dies between the receiver accepting it and that
commit; a receiver that honours the key then sees it once.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import re
import smtplib
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from automation.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: str) -> str:
    """``${NAME}`` replaced by the environment variable NAME (an error when it is not set)."""

    def sub(m: re.Match[str]) -> str:
        got = os.environ.get(m.group(1))
        if got is None:
            raise ConfigError(f"{m.group(1)} is not set (used in {value!r})")
        return got

    return _VAR.sub(sub, value)


class SendError(Exception):
    """A channel refused or failed to take a message (retried with back-off)."""


def message_id(key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"<{digest}@shoal>"


def send_email(
    smtp_url: str, to: str, payload: dict[str, Any], key: str, timeout: float = 10.0
) -> None:
    """One multipart (plain text + HTML) message over SMTP (``smtp://host:port``).

    ``file:///DIR`` writes the message to ``DIR/<message id>.eml`` instead (development and the
    demo): the same delivery always lands in the same file.
    """
    url = urlsplit(smtp_url)
    if url.scheme == "file":
        folder = Path(url.netloc + url.path)
    elif url.scheme not in ("smtp", "smtps") or not url.hostname:
        raise ConfigError(
            f"SHOAL_SMTP_URL={smtp_url!r} should look like smtp://host:port or file:///folder"
        )
    msg = EmailMessage()
    msg["Subject"] = payload.get("subject", "")
    msg["From"] = payload.get("from", "shop@example.com")
    msg["To"] = to
    msg["Message-ID"] = message_id(key) if key else make_msgid()
    msg["X-Shoal-Delivery"] = key
    msg.set_content(payload.get("text", ""))
    if payload.get("html"):
        msg.add_alternative(payload["html"], subtype="html")
    if url.scheme == "file":
        try:
            folder.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha256(key.encode()).hexdigest()[:32]
            (folder / f"{name}.eml").write_bytes(bytes(msg))
        except OSError as exc:
            raise SendError(f"{folder}: {exc}") from None
        return
    try:
        cls = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
        with cls(url.hostname or "", url.port or 25, timeout=timeout) as smtp:
            if url.username:
                smtp.login(url.username, url.password or "")
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise SendError(f"smtp {url.hostname}:{url.port}: {exc}") from None


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_webhook(
    url: str, body: dict[str, Any], key: str, secret_env: str, timeout: float = 10.0
) -> None:
    """POST JSON with an HMAC-SHA256 signature (``X-Shoal-Signature``) and ``Idempotency-Key``."""
    url = expand(url)
    secret = os.environ.get(secret_env, "")
    if not secret:
        raise ConfigError(f"{secret_env} is not set: the webhook's signing secret")
    data = json.dumps(body, sort_keys=True, default=str).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "X-Shoal-Signature": sign(secret, data),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
            if resp.status >= 300:
                raise SendError(f"webhook {url}: HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        raise SendError(f"webhook {url}: HTTP {exc.code}") from None
    except (OSError, urllib.error.URLError) as exc:
        raise SendError(f"webhook {url}: {exc}") from None


EXPORT_FIELDS = ["key", "campaign", "user_id", "segment_id", "segment_name", "occurrence", "at"]


def write_parquet_part(folder: str, first_id: int, rows: list[dict[str, Any]]) -> Path:
    """Rows as one Parquet file ``part-<first delivery id>.parquet`` in ``folder``.

    The name depends only on the first delivery of the part, so a part written again after a
    crash (before its deliveries were marked sent) replaces itself instead of adding rows.
    """
    import pandas as pd

    out = Path(expand(folder))
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"part-{first_id:012d}.parquet"
    tmp = target.with_suffix(".tmp")
    pd.DataFrame(rows, columns=EXPORT_FIELDS).to_parquet(tmp, index=False)
    os.replace(tmp, target)
    return target


def append_export(path: str, row: dict[str, Any]) -> None:
    """Append one audience row to a CSV file (with a header when the file is new)."""
    p = Path(expand(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists() or p.stat().st_size == 0
    with p.open("a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=EXPORT_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())
