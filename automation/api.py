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

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Row, select, text

from automation.config import Settings
from automation.errors import EmptyStoreError, NotFoundError, ValidationError
from automation.features.build import build_features, latest_event_time
from automation.ingest.run import IngestReport, ingest_files
from automation.segments.pipeline import SegmentationResult, run_segmentation
from automation.store.bulk import read_frame
from automation.store.db import open_store
from automation.store.segmentations import (
    assignments as _assignments,
)
from automation.store.segmentations import (
    current_version,
    segments_of,
    version_as_of,
)
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
    """Every user's segment id and name (current, or as of a time)."""
    with engine.connect() as conn:
        seg = current_version(conn) if as_of is None else version_as_of(conn, _timestamp(as_of))
        return _assignments(conn, seg.id)


def user(engine: Engine, user_id: str) -> dict[str, Any]:
    """A user's features now, current segment and segment history across versions."""
    with engine.connect() as conn:
        key = conn.execute(select(User.id).where(User.external_id == user_id)).scalar()
        if key is None:
            raise NotFoundError(f"no user {user_id!r} in the store")
        feats = build_features(conn, user_keys=[int(key)])
        history = read_frame(
            conn,
            """SELECT m.segmentation_id AS version, m.segment_id, s.name AS segment_name,
                      m.is_outlier, m.valid_from, m.valid_to
               FROM memberships m JOIN segments s
                 ON s.segmentation_id = m.segmentation_id AND s.segment_id = m.segment_id
               WHERE m.user_key = :k ORDER BY m.valid_from, m.segmentation_id""",
            {"k": int(key)},
        )
        try:
            cur: Row[Any] | None = current_version(conn)
        except EmptyStoreError:
            cur = None
        as_of = latest_event_time(conn)
    row = feats.frame.iloc[0] if len(feats.frame) else pd.Series(dtype=float)
    current = None
    if cur is not None and len(history):
        now = history[history["version"].astype(int) == cur.id]
        if len(now):
            current = {
                "version": cur.id,
                "id": str(now["segment_id"].iloc[0]),
                "name": str(now["segment_name"].iloc[0]),
                "is_outlier": str(now["is_outlier"].iloc[0]).lower() in ("1", "true", "t"),
            }
    return {
        "user_id": user_id,
        "as_of": as_of.isoformat(),
        "features": {k: float(v) for k, v in row.items()},
        "segment": current,
        "history": [
            {
                "version": int(r["version"]),
                "segment_id": str(r["segment_id"]),
                "segment_name": str(r["segment_name"]),
                "valid_from": str(r["valid_from"]),
                "valid_to": None if pd.isna(r["valid_to"]) else str(r["valid_to"]),
            }
            for _, r in history.iterrows()
        ],
    }


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
