"""The support lookup's fast path: a caller's segment and features from the newest snapshot.

Every fold stores the per-user features and segment ids of the new version (the feature
snapshot); the background loop loads it once per version into memory, so ``GET
/v1/users/{id}`` answers with three indexed queries (the user's key, routing, latest migrations)
and an array lookup, instead of recomputing features per request. Users who arrived after the
newest version (not folded yet) take the library's path (:func:`automation.api.user`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from automation.campaigns.store import routing_of
from automation.store.segmentations import current_version, segments_of
from automation.store.snapshots import load_snapshot


@dataclass
class Snapshot:
    version: int
    as_of: str
    columns: list[str]
    rows: dict[int, int]  # user_key -> row
    values: np.ndarray
    labels: np.ndarray | None
    names: dict[str, str]
    version_as_of: str
    erasures: int = 0  # the store's erasure count when loaded (a later erasure makes it stale)


def load(conn: Connection) -> Snapshot | None:
    """The newest version's snapshot, ready for lookups (None before the first segmentation)."""
    snap = load_snapshot(conn)
    if snap is None:
        return None
    version = current_version(conn)
    names = {str(s.segment_id): str(s.name) for s in segments_of(conn, version.id)}
    keys = snap.raw.index.to_numpy(dtype=np.int64)
    return Snapshot(
        version=int(version.id),
        as_of=pd.Timestamp(snap.at).isoformat(),
        columns=[str(c) for c in snap.raw.columns],
        rows={int(k): i for i, k in enumerate(keys.tolist())},
        values=snap.raw.to_numpy(dtype=np.float64),
        labels=None if snap.labels is None else snap.labels.astype(str).to_numpy(),
        names=names,
        version_as_of=pd.Timestamp(version.as_of).isoformat(),
    )


def lookup(conn: Connection, snap: Snapshot, user_id: str, n_moves: int) -> dict[str, Any] | None:
    """``None`` when the user is not in the snapshot (the caller falls back)."""
    key = conn.execute(text("SELECT id FROM users WHERE external_id = :x"), {"x": user_id}).scalar()
    if key is None or int(key) not in snap.rows or snap.labels is None:
        return None
    row = snap.rows[int(key)]
    seg = str(snap.labels[row])
    route = routing_of(conn, int(key))
    moves = conn.execute(
        text(
            "SELECT from_segment, to_segment, at, reason, version_id FROM segment_migrations "
            "WHERE user_key = :u ORDER BY at DESC, id DESC LIMIT :n"
        ),
        {"u": int(key), "n": n_moves},
    ).all()
    return {
        "user_id": user_id,
        "as_of": snap.as_of,
        "segment": {
            "id": seg,
            "name": snap.names.get(seg),
            "version": snap.version,
            "as_of": snap.version_as_of,
        },
        "routing": route,
        "features": {c: float(v) for c, v in zip(snap.columns, snap.values[row], strict=True)},
        "migrations": [
            {
                "from": m.from_segment,
                "to": m.to_segment,
                "at": pd.Timestamp(m.at).isoformat(),
                "reason": m.reason,
                "version": m.version_id,
            }
            for m in reversed(moves)
        ],
    }
