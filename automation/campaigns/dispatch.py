"""``shoal dispatch``: send due deliveries from the outbox, one transaction per message.

Each delivery is claimed with a row lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
workers share the queue; SQLite serialises writers), sent, and marked ``sent`` before the lock is
released. A failure counts an attempt and schedules the next one with exponential back-off
(``base * 2 ** (attempts - 1)``); after ``max_attempts`` the delivery is ``dead`` and copied to
``dead_letters`` with its last error. Deliveries of a campaign switched off (``active: false``)
are ``cancelled``, not sent. A worker killed mid-send leaves the row ``pending`` (its
transaction never committed) and the next dispatch sends it again, with the same idempotency key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, text

from automation.campaigns.channels import (
    SendError,
    append_export,
    post_webhook,
    send_email,
    write_parquet_part,
)
from automation.campaigns.spec import CampaignSpec
from automation.campaigns.store import campaign_named
from automation.config import Settings
from automation.errors import ConfigError
from automation.features.build import as_utc, ts_param


@dataclass
class DispatchReport:
    sent: int = 0
    retried: int = 0
    dead: int = 0
    cancelled: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "retried": self.retried,
            "dead": self.dead,
            "cancelled": self.cancelled,
            "errors": self.errors[:20],
        }


def _claim(conn: Connection, now: pd.Timestamp) -> Any:
    skip = " FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else ""
    return conn.execute(
        text(
            "SELECT id, key, campaign, channel, user_key, payload, attempts FROM deliveries "
            f"WHERE status = 'pending' AND next_attempt_at <= :now ORDER BY id LIMIT 1{skip}"
        ),
        {"now": ts_param(conn, now)},
    ).first()


def _send(row: Any, spec: CampaignSpec, settings: Settings) -> None:
    payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
    ch = spec.channel
    if ch.type in ("email", "coupon"):
        to = settings.email_address.format(user_id=payload["user_id"])
        send_email(settings.smtp_url, to, payload, row.key)
    elif ch.type in ("webhook", "routing"):
        assert ch.url is not None
        body = {"delivery": row.key, "campaign": row.campaign, "channel": ch.type, **payload}
        post_webhook(ch.url, body, row.key, ch.secret_env)
    elif ch.type == "export":
        assert ch.path is not None
        path = ch.path.format(campaign=row.campaign)
        if ch.format == "parquet":
            write_parquet_part(path, int(row.id), [export_row(row, payload)])
        else:
            append_export(path, export_row(row, payload))


def export_row(row: Any, payload: dict[str, Any]) -> dict[str, Any]:
    event = payload.get("event", {})
    seg = event.get("segment", {})
    return {
        "key": row.key,
        "campaign": row.campaign,
        "user_id": payload["user_id"],
        "segment_id": seg.get("id"),
        "segment_name": seg.get("name"),
        "occurrence": event.get("trigger", {}).get("occurrence"),
        "at": event.get("trigger", {}).get("at"),
    }


def _parquet_parts(engine: Engine, at: pd.Timestamp, report: DispatchReport) -> None:
    """Due Parquet-export deliveries, one part file per campaign, marked sent with it."""
    with engine.begin() as conn:
        skip = " FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else ""
        rows = conn.execute(
            text(
                "SELECT id, key, campaign, payload FROM deliveries WHERE status = 'pending' "
                f"AND channel = 'export' AND next_attempt_at <= :now ORDER BY id{skip}"
            ),
            {"now": ts_param(conn, at)},
        ).all()
        by_campaign: dict[str, list[Any]] = {}
        for r in rows:
            by_campaign.setdefault(r.campaign, []).append(r)
        for name, mine in by_campaign.items():
            spec = campaign_named(conn, name).spec
            if spec.channel.format != "parquet" or spec.channel.path is None or not spec.active:
                continue
            try:
                _write_part(conn, name, spec, mine, at)
            except (OSError, ValueError) as exc:  # left pending: retried by the per-row pass
                report.errors.append(f"{name}: parquet export: {exc}")
                continue
            report.sent += len(mine)


def _write_part(conn: Connection, name: str, spec: CampaignSpec, mine: list[Any], at: Any) -> None:
    """One part file for ``mine`` (a campaign's due rows), then the rows marked sent."""
    assert spec.channel.path is not None
    payloads = [p if isinstance(p, dict) else json.loads(p) for p in (r.payload for r in mine)]
    write_parquet_part(
        spec.channel.path.format(campaign=name),
        int(mine[0].id),
        [export_row(r, p) for r, p in zip(mine, payloads, strict=True)],
    )
    ids = [int(r.id) for r in mine]
    for start in range(0, len(ids), 5000):
        part = ids[start : start + 5000]
        marks = ", ".join(f":i{k}" for k in range(len(part)))
        conn.execute(
            text(
                "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, "
                f"sent_at = :t, last_error = NULL WHERE id IN ({marks})"
            ),
            {"t": ts_param(conn, at), **{f"i{k}": v for k, v in enumerate(part)}},
        )


def dispatch(
    engine: Engine,
    settings: Settings,
    limit: int = 1000,
    now: pd.Timestamp | None = None,
    max_attempts: int = 5,
    backoff_seconds: float = 30.0,
) -> DispatchReport:
    """Send up to ``limit`` due deliveries; see the module docstring."""
    report = DispatchReport()
    specs: dict[str, CampaignSpec] = {}
    _parquet_parts(engine, as_utc(now if now is not None else pd.Timestamp.now(tz="UTC")), report)
    for _ in range(limit):
        at = as_utc(now if now is not None else pd.Timestamp.now(tz="UTC"))
        with engine.begin() as conn:
            row = _claim(conn, at)
            if row is None:
                break
            if row.campaign not in specs:
                specs[row.campaign] = campaign_named(conn, row.campaign).spec
            if not specs[row.campaign].active:  # switched off: what it queued is not sent
                conn.execute(
                    text(
                        "UPDATE deliveries SET status = 'cancelled', last_error = "
                        "'campaign deactivated' WHERE id = :id"
                    ),
                    {"id": row.id},
                )
                report.cancelled += 1
                continue
            try:
                spec = specs[row.campaign]
                if spec.channel.type != row.channel:
                    raise ConfigError(
                        f"campaign {row.campaign} now sends by {spec.channel.type}, "
                        f"not {row.channel}: this delivery is not sent"
                    )
                _send(row, spec, settings)
            except (SendError, ConfigError, ValueError, OSError, KeyError, TypeError) as exc:
                # A delivery that cannot go out counts an attempt (dead-lettered in the end)
                # instead of blocking every delivery queued after it.
                attempts = int(row.attempts) + 1
                report.errors.append(f"{row.key}: {exc}")
                if attempts >= max_attempts:
                    _dead(conn, row, attempts, str(exc))
                    report.dead += 1
                else:
                    delay = pd.Timedelta(seconds=backoff_seconds * 2 ** (attempts - 1))
                    conn.execute(
                        text(
                            "UPDATE deliveries SET attempts = :a, last_error = :e, "
                            "next_attempt_at = :n WHERE id = :id"
                        ),
                        {
                            "a": attempts,
                            "e": str(exc),
                            "n": ts_param(conn, at + delay),
                            "id": row.id,
                        },
                    )
                    report.retried += 1
                continue
            conn.execute(
                text(
                    "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, "
                    "sent_at = :t, last_error = NULL WHERE id = :id"
                ),
                {"t": ts_param(conn, at), "id": row.id},
            )
            report.sent += 1
    return report


def _dead(conn: Connection, row: Any, attempts: int, error: str) -> None:
    conn.execute(
        text(
            "UPDATE deliveries SET status = 'dead', attempts = :a, last_error = :e WHERE id = :id"
        ),
        {"a": attempts, "e": error, "id": row.id},
    )
    conn.execute(
        text(
            "INSERT INTO dead_letters (delivery_id, campaign, channel, attempts, error) "
            "VALUES (:d, :c, :ch, :a, :e)"
        ),
        {"d": row.id, "c": row.campaign, "ch": row.channel, "a": attempts, "e": error},
    )


def deliveries(engine: Engine, campaign: str | None = None, limit: int = 50) -> dict[str, Any]:
    """Counts by campaign, channel and status, and the newest deliveries."""
    where = "WHERE campaign = :c" if campaign else ""
    params = {"c": campaign} if campaign else {}
    with engine.connect() as conn:
        counts = conn.execute(
            text(
                f"SELECT campaign, channel, status, COUNT(*) AS n FROM deliveries {where} "
                "GROUP BY campaign, channel, status ORDER BY campaign, channel, status"
            ),
            params,
        ).all()
        recent = conn.execute(
            text(
                "SELECT d.key, d.campaign, d.channel, u.external_id AS user_id, d.status, "
                "d.attempts, d.last_error, d.created_at, d.sent_at FROM deliveries d "
                f"JOIN users u ON u.id = d.user_key {where.replace('campaign', 'd.campaign')} "
                "ORDER BY d.id DESC LIMIT :lim"
            ),
            {**params, "lim": limit},
        ).all()
        dead = conn.execute(text("SELECT COUNT(*) FROM dead_letters")).scalar() or 0
    return {
        "counts": [dict(r._mapping) for r in counts],
        "dead_letters": int(dead),
        "recent": [
            {
                k: (str(v) if k in ("created_at", "sent_at") and v is not None else v)
                for k, v in r._mapping.items()
            }
            for r in recent
        ],
    }
