"""The Python API, mirroring the CLI command for command.

Every function takes the store as a SQLAlchemy :class:`~sqlalchemy.Engine` (open one with
:func:`connect`) and returns plain data. Nothing here prints or exits: the CLI does that.

Examples
--------
>>> from automation import api
>>> engine = api.connect("sqlite:///:memory:")
>>> report = api.ingest(engine, [api.BUNDLED_ONLINE_RETAIL], preset="online-retail")  # doctest: +SKIP
>>> result = api.segment(engine, k="auto")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Row, select, text

from automation.campaigns.store import routing_of
from automation.config import Settings
from automation.errors import EmptyStoreError, NotFoundError, ValidationError
from automation.features.build import build_features, latest_event_time
from automation.ingest.run import IngestReport, ingest_files
from automation.segments.pipeline import SegmentationResult, run_segmentation
from automation.segments.update import run_update
from automation.store.bulk import read_frame
from automation.store.db import open_store
from automation.store.history import migrations_between, resolve, resolve_user
from automation.store.segmentations import current_version, segments_of, version_as_of
from models import User

BUNDLED_ONLINE_RETAIL = Path(__file__).resolve().parent / "data" / "online_retail.csv.gz"


def connect(db: str | None = None, settings: Settings | None = None) -> Engine:
    """Open the store (``db`` URL or path, else ``SHOAL_DATABASE_URL``, else ``shoal.db``)."""
    s = settings or Settings.from_env(database_url=db)
    return open_store(s.database_url)


def ingest(
    engine: Engine,
    paths: Sequence[str | Path],
    preset: str | None = None,
    maps: Sequence[str] = (),
    sets: Sequence[str] = (),
    settings: Settings | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    return ingest_files(
        engine, paths, settings or Settings.from_env(), preset, maps, sets, progress
    )


def segment(
    engine: Engine,
    method: str = "kmeans",
    k: str | int = "auto",
    as_of: datetime | str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SegmentationResult:
    at = _timestamp(as_of) if as_of is not None else None
    return run_segmentation(engine, method, k, at, seed, progress)


def _timestamp(value: datetime | str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValidationError(f"as_of={value!r} should be a date or an ISO 8601 time") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _version_dict(engine: Engine, seg: Row[Any]) -> dict[str, Any]:
    with engine.connect() as conn:
        segs = segments_of(conn, seg.id)
    return {
        "version": seg.id,
        "method": seg.method,
        "k": seg.k,
        "as_of": pd.Timestamp(seg.as_of).isoformat(),
        "created_at": pd.Timestamp(seg.created_at).isoformat() if seg.created_at else None,
        "n_users": seg.n_users,
        "quality": {
            key: seg.quality.get(key)
            for key in ("silhouette", "davies_bouldin", "calinski_harabasz", "stability_ari")
        },
        "k_selection": seg.k_selection,
        "segments": [
            {
                "id": s.segment_id,
                "name": s.name,
                "size": s.size,
                "share": s.share,
                "outliers": s.n_outliers,
                "profile": s.profile,
                "quality": s.quality,
            }
            for s in segs
        ],
    }


def segments(engine: Engine, as_of: datetime | str | None = None) -> dict[str, Any]:
    """The current segmentation (or the one in force at ``as_of``) with its segments."""
    with engine.connect() as conn:
        seg = current_version(conn) if as_of is None else version_as_of(conn, _timestamp(as_of))
    return _version_dict(engine, seg)


def assignments(engine: Engine, as_of: datetime | str | None = None) -> pd.DataFrame:
    """Every user's segment id and name (current, or as of a time), with the version."""
    with engine.connect() as conn:
        seg = current_version(conn) if as_of is None else version_as_of(conn, _timestamp(as_of))
        frame = resolve(conn, seg)
        users = read_frame(conn, "SELECT id AS user_key, external_id AS user_id FROM users")
        names = {str(s.segment_id): str(s.name) for s in segments_of(conn, seg.id)}
    out = frame.merge(users, on="user_key", how="left")
    out["segment_name"] = out["segment_id"].astype(str).map(names)
    out["version"] = seg.id
    out["as_of"] = pd.Timestamp(seg.as_of).isoformat()
    cols = ["user_id", "segment_id", "segment_name", "is_outlier", "version", "as_of"]
    return out[cols].sort_values("user_id").reset_index(drop=True)


def user(engine: Engine, user_id: str, as_of: datetime | str | None = None) -> dict[str, Any]:
    """A user's features now, segment (current or as of a time) and segment history."""
    with engine.connect() as conn:
        key = conn.execute(select(User.id).where(User.external_id == user_id)).scalar()
        if key is None:
            raise NotFoundError(f"no user {user_id!r} in the store")
        feats = build_features(conn, user_keys=[int(key)])
        at = latest_event_time(conn)
        segment = None
        try:
            version = (
                current_version(conn) if as_of is None else version_as_of(conn, _timestamp(as_of))
            )
        except EmptyStoreError:
            version = None
        if version is not None:
            sid = resolve_user(conn, version, int(key))
            names = {str(s.segment_id): str(s.name) for s in segments_of(conn, version.id)}
            if sid is not None:
                segment = {
                    "version": version.id,
                    "as_of": pd.Timestamp(version.as_of).isoformat(),
                    "id": sid,
                    "name": names.get(sid),
                }
        moves = migrations_between(conn, user_key=int(key))
        route = routing_of(conn, int(key))
    row = feats.frame.iloc[0] if len(feats.frame) else pd.Series(dtype=float)
    return {
        "user_id": user_id,
        "as_of": at.isoformat(),
        "features": {k: float(v) for k, v in row.items()},
        "segment": segment,
        "routing": route,
        "history": [_migration_dict(r) for r in moves.to_dict("records")],
    }


def _migration_dict(r: dict[Any, Any]) -> dict[str, Any]:
    expl = r["explanation"]
    return {
        "user_id": r["user_id"],
        "from": r["from"],
        "to": r["to"],
        "at": pd.Timestamp(r["at"]).isoformat(),
        "reason": r["reason"],
        "events": int(r["events"]),
        "version": int(r["version"]),
        "explanation": json.loads(expl) if isinstance(expl, str) else expl,
    }


def migrations(
    engine: Engine,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    user_id: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Recorded migrations: who moved, from where, to where, when, why."""
    with engine.connect() as conn:
        key = None
        if user_id is not None:
            key = conn.execute(select(User.id).where(User.external_id == user_id)).scalar()
            if key is None:
                raise NotFoundError(f"no user {user_id!r} in the store")
        frame = migrations_between(
            conn,
            _timestamp(since) if since is not None else None,
            _timestamp(until) if until is not None else None,
            key,
            limit,
        )
    return [_migration_dict(r) for r in frame.to_dict("records")]


def history(engine: Engine, segment_id: str) -> dict[str, Any]:
    """A segment's life: its size in every version, and every transition involving it."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.segmentation_id, g.kind, g.as_of, s.name, s.size, s.share "
                "FROM segments s JOIN segmentations g ON g.id = s.segmentation_id "
                "WHERE s.segment_id = :sid ORDER BY g.as_of, g.id"
            ),
            {"sid": segment_id},
        ).all()
        if not rows:
            raise NotFoundError(f"no segment {segment_id!r}")
        trans = conn.execute(
            text(
                "SELECT version_id, at, type, segments, evidence FROM segment_transitions "
                "ORDER BY at, id"
            )
        ).all()
        state = conn.execute(
            text("SELECT status, born_at FROM segment_state WHERE segment_id = :sid"),
            {"sid": segment_id},
        ).first()
    mine = []
    for t in trans:
        segs = json.loads(t.segments) if isinstance(t.segments, str) else t.segments
        if segment_id in segs:
            ev = json.loads(t.evidence) if isinstance(t.evidence, str) else t.evidence
            mine.append(
                {
                    "version": t.version_id,
                    "at": pd.Timestamp(t.at).isoformat(),
                    "type": t.type,
                    "segments": segs,
                    "evidence": ev,
                }
            )
    return {
        "segment_id": segment_id,
        "name": rows[-1].name,
        "status": state.status if state is not None else "historical",
        "versions": [
            {
                "version": r.segmentation_id,
                "kind": r.kind,
                "as_of": pd.Timestamp(r.as_of).isoformat(),
                "name": r.name,
                "size": int(r.size),
                "share": float(r.share),
            }
            for r in rows
        ],
        "transitions": mine,
    }


def update(
    engine: Engine,
    paths: Sequence[str | Path] = (),
    preset: str | None = None,
    maps: Sequence[str] = (),
    sets: Sequence[str] = (),
    settings: Settings | None = None,
    refit_on_drift: bool = True,
) -> dict[str, Any]:
    """Ingest ``paths`` (if any) and fold every pending batch into the live segmentation.

    With no segmentation yet, the first call fits one (a refit). When the update finds drift
    beyond the bound, a refit runs at once (the embedded default; workers enqueue it instead).
    """
    out: dict[str, Any] = {}
    if paths:
        out["ingest"] = ingest(engine, paths, preset, maps, sets, settings).to_dict()
    try:
        with engine.connect() as conn:
            current_version(conn)
    except EmptyStoreError:
        result = segment(engine)
        out.update(
            {
                "version": result.version,
                "events": out.get("ingest", {}).get("accepted", 0),
                "users_touched": result.n_users,
                "migrations": 0,
                "transitions": [],
                "quality": result.to_dict()["quality"],
                "refit": result.to_dict(),
            }
        )
        return out
    upd = run_update(engine, settings)
    if upd is None:
        out.update(
            {
                "version": None,
                "events": 0,
                "users_touched": 0,
                "migrations": 0,
                "transitions": [],
                "quality": {},
            }
        )
        return out
    out.update(upd.to_dict())
    if upd.refit_recommended and refit_on_drift:
        out["refit"] = segment(engine).to_dict()
    return out


def quarantine(engine: Engine, samples: int = 3) -> dict[str, Any]:
    """Quarantined rows: counts by reason, with a few samples of each."""
    with engine.connect() as conn:
        counts = conn.execute(
            text("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY 2 DESC")
        ).all()
        out: dict[str, Any] = {"total": int(sum(c for _, c in counts)), "reasons": []}
        for reason, n in counts:
            rows = conn.execute(
                text(
                    "SELECT source, line, detail, raw FROM quarantine WHERE reason = :r "
                    "ORDER BY id LIMIT :n"
                ),
                {"r": reason, "n": samples},
            ).all()
            out["reasons"].append(
                {
                    "reason": reason,
                    "count": int(n),
                    "samples": [
                        {"source": s, "line": ln, "detail": d, "raw": r} for s, ln, d, r in rows
                    ],
                }
            )
    return out
