"""Campaign versions in the store: load (a changed file is a new version), list, activate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from automation.campaigns.render import check_templates
from automation.campaigns.spec import CampaignSpec, field_lines, load_campaign_file
from automation.errors import NotFoundError


@dataclass
class StoredCampaign:
    name: str
    version: int
    spec: CampaignSpec
    loaded_at: Any
    active: bool


def validate_file(path: str | Path, templates: Path | None = None) -> CampaignSpec:
    """Parse, validate and render-check one campaign file."""
    spec = load_campaign_file(path)
    lines = field_lines(Path(path).read_text(encoding="utf-8"))
    check_templates(spec, str(path), templates, lines)
    return spec


def load_file(engine: Engine, path: str | Path, templates: Path | None = None) -> dict[str, Any]:
    """Store a campaign file; an unchanged file keeps its version, a changed one adds one."""
    spec = validate_file(path, templates)
    digest = spec.digest()
    with engine.begin() as conn:
        last = conn.execute(
            text(
                "SELECT version, digest FROM campaigns WHERE name = :n "
                "ORDER BY version DESC LIMIT 1"
            ),
            {"n": spec.name},
        ).first()
        if last is not None and last.digest == digest:
            return {"name": spec.name, "version": int(last.version), "changed": False}
        version = 1 if last is None else int(last.version) + 1
        if last is None:
            # A new campaign starts from now: segment changes recorded before it was loaded
            # do not trigger it (no retroactive messages).
            top = conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM outbox")).scalar()
            set_cursor(conn, spec.name, int(top or 0), None)
        conn.execute(
            text(
                "INSERT INTO campaigns (name, version, digest, source, spec, active) "
                "VALUES (:n, :v, :d, :s, :spec, :a)"
            ),
            {
                "n": spec.name,
                "v": version,
                "d": digest,
                "s": str(path),
                "spec": json.dumps(spec.model_dump(mode="json", by_alias=True)),
                "a": spec.active,
            },
        )
    return {"name": spec.name, "version": version, "changed": True}


def _spec(value: Any) -> CampaignSpec:
    data = json.loads(value) if isinstance(value, str) else value
    return CampaignSpec.model_validate(data)


def latest_campaigns(conn: Connection, names: list[str] | None = None) -> list[StoredCampaign]:
    """The newest version of every campaign (or of ``names``), highest priority first."""
    rows = conn.execute(
        text(
            "SELECT c.name, c.version, c.spec, c.loaded_at, c.active FROM campaigns c "
            "JOIN (SELECT name, MAX(version) AS v FROM campaigns GROUP BY name) m "
            "ON m.name = c.name AND m.v = c.version ORDER BY c.name"
        )
    ).all()
    out = [
        StoredCampaign(r.name, int(r.version), _spec(r.spec), r.loaded_at, bool(r.active))
        for r in rows
    ]
    if names:
        known = {c.name for c in out}
        missing = [n for n in names if n not in known]
        if missing:
            raise NotFoundError(
                f"no campaign {', '.join(map(repr, missing))} in the store "
                f"(loaded: {', '.join(sorted(known)) or 'none: run `shoal campaign load FILE`'})"
            )
        out = [c for c in out if c.name in names]
    return sorted(out, key=lambda c: (-c.spec.priority, c.name))


def campaign_named(conn: Connection, name: str) -> StoredCampaign:
    return latest_campaigns(conn, [name])[0]


def cursor_of(conn: Connection, name: str) -> int:
    value = conn.execute(
        text("SELECT outbox_id FROM campaign_cursors WHERE name = :n"), {"n": name}
    ).scalar()
    return int(value or 0)


def set_cursor(conn: Connection, name: str, outbox_id: int, now: Any) -> None:
    updated = conn.execute(
        text("UPDATE campaign_cursors SET outbox_id = :o, updated_at = :t WHERE name = :n"),
        {"o": outbox_id, "t": now, "n": name},
    ).rowcount
    if not updated:
        conn.execute(
            text("INSERT INTO campaign_cursors (name, outbox_id, updated_at) VALUES (:n, :o, :t)"),
            {"o": outbox_id, "t": now, "n": name},
        )


def routing_of(conn: Connection, user_key: int) -> dict[str, Any] | None:
    """A user's customer-service routing (queue, priority, script, from which campaign), if any."""
    route = conn.execute(
        text(
            "SELECT queue, priority, script, campaign, segment_id, updated_at FROM routing "
            "WHERE user_key = :u"
        ),
        {"u": user_key},
    ).first()
    if route is None:
        return None
    return routing_dict(
        route.queue,
        route.priority,
        route.script,
        route.campaign,
        route.segment_id,
        route.updated_at,
    )


def routing_dict(
    queue: str, priority: Any, script: Any, campaign: Any, segment_id: Any, updated_at: Any
) -> dict[str, Any]:
    """A routing row as the API and the CLI show it."""
    return {
        "queue": queue,
        "priority": int(priority),
        "script": script,
        "campaign": campaign,
        "segment_id": segment_id,
        "since": str(updated_at),
    }
