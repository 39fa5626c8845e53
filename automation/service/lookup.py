"""The support lookup's fast path: a caller's segment and features from the newest snapshot.

Every fold stores the per-user features and segment ids of the new version (the feature
snapshot); the API process loads it once per version into memory, so ``GET /v1/users/{id}``
answers with one round trip to the store (:data:`_LOOKUP`: the user's key, routing and latest
migrations, all indexed) and an array lookup, instead of recomputing features per request.
Users who arrived after the newest version (not folded yet) take the library's path
(:func:`automation.api.user`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from automation.campaigns.store import routing_dict
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


_LOOKUP = text(
    """WITH u AS (SELECT id FROM users WHERE external_id = :x)
    SELECT 0 AS kind, u.id AS ukey, r.queue AS a, r.script AS b, r.campaign AS c,
           r.segment_id AS d, r.priority AS e, r.updated_at AS ts, 0 AS mid
    FROM u LEFT JOIN routing r ON r.user_key = u.id
    UNION ALL
    SELECT * FROM (
        SELECT 1, m.user_key, m.from_segment, m.to_segment, m.reason, NULL, m.version_id, m.at,
               m.id
        FROM segment_migrations m WHERE m.user_key = (SELECT id FROM u)
        ORDER BY m.at DESC, m.id DESC LIMIT :n) mm"""
)
"""The user's key, routing and latest migrations in one round trip (the first row: key and
routing, its routing columns NULL when the user has none; then the migrations, newest first)."""


def lookup(conn: Connection, snap: Snapshot, user_id: str, n_moves: int) -> dict[str, Any] | None:
    """``None`` when the user is not in the snapshot (the caller falls back)."""
    rows = conn.execute(_LOOKUP, {"x": user_id, "n": n_moves}).all()
    head = next((r for r in rows if r.kind == 0), None)  # UNION ALL keeps no order by contract
    if head is None or snap.labels is None:
        return None
    row = snap.rows.get(int(head.ukey))
    if row is None:
        return None
    seg = str(snap.labels[row])
    route = None
    if head.a is not None:  # queue is NOT NULL in routing: the user has a routing row
        route = routing_dict(head.a, head.e, head.b, head.c, head.d, head.ts)
    moves = sorted(  # oldest first
        (r for r in rows if r.kind == 1), key=lambda m: (pd.Timestamp(m.ts), m.mid)
    )
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
        "features": dict(zip(snap.columns, snap.values[row].tolist(), strict=True)),
        "migrations": [
            {
                "from": m.a,
                "to": m.b,
                "at": pd.Timestamp(m.ts).isoformat(),
                "reason": m.c,
                "version": m.e,
            }
            for m in moves
        ],
    }
