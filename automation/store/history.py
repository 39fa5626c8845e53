"""The recorded history of the live segmentation: resolution as of a time, and its writers.

A *refit* version stores a full snapshot of memberships; an *update* version stores only the
users who moved (``segment_migrations``) on top of its refit (``base_id``). The assignment of
every user as of T is the snapshot of the newest version at or before T plus, per user, the last
migration of that lineage up to that version: two range queries, no replay.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Row, text

from automation.store.bulk import read_frame, write_frame


def _bool(col: pd.Series) -> pd.Series:
    return col.astype(str).str.lower().isin(["1", "true", "t"])


def resolve(conn: Connection, version: Row[Any]) -> pd.DataFrame:
    """``user_key``, ``segment_id``, ``is_outlier`` of every user in ``version``."""
    base = version.base_id or version.id
    snap = read_frame(
        conn,
        "SELECT user_key, segment_id, is_outlier FROM memberships WHERE segmentation_id = :b",
        {"b": base},
    )
    snap["is_outlier"] = _bool(snap["is_outlier"]) if len(snap) else snap["is_outlier"]
    if version.id == base:
        return snap
    moves = read_frame(
        conn,
        """SELECT user_key, to_segment, version_id, id FROM segment_migrations
           WHERE base_id = :b AND version_id > :b AND version_id <= :v""",
        {"b": base, "v": version.id},
    )
    if moves.empty:
        return snap
    last = moves.sort_values(["version_id", "id"]).drop_duplicates("user_key", keep="last")
    merged = snap.set_index("user_key")
    upd = last.set_index("user_key")["to_segment"].astype(str)
    merged = merged.reindex(merged.index.union(upd.index))
    merged.loc[upd.index, "segment_id"] = upd
    merged["is_outlier"] = merged["is_outlier"].fillna(False).astype(bool)
    return merged.reset_index()


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (PostgreSQL's JSON rejects them)."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_migrations(
    conn: Connection, version_id: int, base_id: int, at: pd.Timestamp, moves: pd.DataFrame
) -> None:
    """``moves``: user_key, from_segment, to_segment, reason, n_events, explanation (dict)."""
    n = len(moves)
    if n == 0:
        return
    write_frame(
        conn,
        "segment_migrations",
        {
            "version_id": pd.Series(np.full(n, version_id, dtype=np.int64)),
            "base_id": pd.Series(np.full(n, base_id, dtype=np.int64)),
            "user_key": moves["user_key"].astype("int64").reset_index(drop=True),
            "from_segment": moves["from_segment"].astype(object).reset_index(drop=True),
            "to_segment": moves["to_segment"].astype(str).reset_index(drop=True),
            "at": pd.Series([at] * n).astype("datetime64[us, UTC]"),
            "reason": moves["reason"].astype(str).reset_index(drop=True),
            "n_events": moves["n_events"].astype("int64").reset_index(drop=True),
            "explanation": pd.Series(
                [json.dumps(_finite(e)) for e in moves["explanation"]], dtype=object
            ),
        },
    )


def write_outbox(
    conn: Connection,
    version_id: int,
    at: pd.Timestamp,
    moves: pd.DataFrame,
    transitions: list[dict[str, Any]],
    names: dict[str, str],
) -> int:
    """Segment Entered / Exited per move, Segment Born / Retired per transition; unique keys."""
    rows: list[dict[str, Any]] = []
    stamp = at.isoformat()
    users: list[Any] = moves["user_key"].tolist()
    froms: list[Any] = moves["from_segment"].tolist()
    tos: list[Any] = moves["to_segment"].tolist()
    reasons: list[Any] = moves["reason"].tolist()
    for user_key, from_seg, to_seg, reason in zip(users, froms, tos, reasons, strict=True):
        user = int(user_key)
        from_seg = from_seg if isinstance(from_seg, str) and from_seg else None
        if from_seg is not None:
            extra = {"to": to_seg, "reason": reason}
            rows.append(_event("Segment Exited", version_id, user, from_seg, stamp, extra, names))
        extra = {"from": from_seg, "reason": reason}
        rows.append(_event("Segment Entered", version_id, user, str(to_seg), stamp, extra, names))
    seen: dict[str, int] = {}
    for t in transitions:
        kind = {
            "born": "Segment Born",
            "emergence": "Segment Born",
            "retired": "Segment Retired",
            "disappearance": "Segment Retired",
            "merged": "Segment Merged",
            "split": "Segment Split",
            "drifted": "Segment Drifted",
        }.get(t["type"])
        if kind:
            row = _event(
                kind,
                version_id,
                None,
                t["segments"][0],
                stamp,
                {"segments": t["segments"], "evidence": t["evidence"]},
                names,
            )
            # One update can report two changes of a kind on one segment (a segment absorbing
            # two others, a behaviour drift beside a centre shift): numbered in the update's
            # order, so the key stays unique and the same on a retry.
            seen[row["key"]] = seen.get(row["key"], 0) + 1
            if seen[row["key"]] > 1:
                row["key"] = f"{row['key']}:{seen[row['key']]}"
            rows.append(row)
    if not rows:
        return 0
    frame = pd.DataFrame(rows)
    write_frame(
        conn,
        "outbox",
        {
            "key": frame["key"],
            "event": frame["event"],
            "user_key": frame["user_key"].astype("Int64"),
            "segment_id": frame["segment_id"],
            "version_id": frame["version_id"].astype("int64"),
            "at": pd.Series([at] * len(frame)).astype("datetime64[us, UTC]"),
            "payload": frame["payload"],
        },
    )
    return len(frame)


def _event(
    kind: str,
    version: int,
    user: int | None,
    segment: str,
    at: str,
    extra: dict[str, Any],
    names: dict[str, str],
) -> dict[str, Any]:
    key = f"{kind.split()[-1].lower()}:{version}:{user if user is not None else '-'}:{segment}"
    payload = {
        "event": kind,
        "segment_id": segment,
        "segment_name": names.get(segment),
        "version": version,
        "at": at,
        **extra,
    }
    return {
        "key": key,
        "event": kind,
        "user_key": user,
        "segment_id": segment,
        "version_id": version,
        "payload": json.dumps(_finite(payload), default=str),
    }


def write_transitions(
    conn: Connection, version_id: int, at: pd.Timestamp, transitions: list[dict[str, Any]]
) -> None:
    for t in transitions:
        conn.execute(
            text(
                "INSERT INTO segment_transitions (version_id, at, type, segments, evidence) "
                "VALUES (:v, :at, :t, :s, :e)"
            ),
            {
                "v": version_id,
                "at": _ts(conn, at),
                "t": t["type"],
                "s": json.dumps(t["segments"]),
                "e": json.dumps(_finite(t["evidence"])),
            },
        )


def _ts(conn: Connection, at: pd.Timestamp) -> Any:
    from automation.features.build import ts_param

    return ts_param(conn, at)


def save_state(
    conn: Connection, version_id: int, at: pd.Timestamp, states: list[dict[str, Any]]
) -> None:
    """Replace the live segment state (retired and merged segments keep their last row)."""
    for s in states:
        conn.execute(
            text(
                "INSERT INTO segment_state (segment_id, status, version_id, weight, center, "
                "spread, radius, state, born_at, updated_at) VALUES (:id, :st, :v, :w, :c, :sp, "
                ":r, :state, :at, :at) ON CONFLICT (segment_id) DO UPDATE SET "
                "status = excluded.status, version_id = excluded.version_id, "
                "weight = excluded.weight, center = excluded.center, spread = excluded.spread, "
                "radius = excluded.radius, state = excluded.state, updated_at = excluded.updated_at"
            ),
            {
                "id": s["segment_id"],
                "st": s["status"],
                "v": version_id,
                "w": s["weight"],
                "c": json.dumps(s["center"]),
                "sp": s["spread"],
                "r": s["radius"],
                "state": json.dumps(s),
                "at": _ts(conn, at),
            },
        )


def load_state(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        text("SELECT state FROM segment_state WHERE status = 'active' ORDER BY segment_id")
    ).all()
    return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]


def resolve_user(conn: Connection, version: Row[Any], user_key: int) -> str | None:
    """One user's segment id in ``version`` (``None`` when not segmented then)."""
    base = version.base_id or version.id
    moved = conn.execute(
        text(
            "SELECT to_segment FROM segment_migrations WHERE base_id = :b AND user_key = :u "
            "AND version_id > :b AND version_id <= :v ORDER BY version_id DESC, id DESC LIMIT 1"
        ),
        {"b": base, "u": user_key, "v": version.id},
    ).scalar()
    if moved is not None:
        return str(moved)
    snap = conn.execute(
        text("SELECT segment_id FROM memberships WHERE segmentation_id = :b AND user_key = :u"),
        {"b": base, "u": user_key},
    ).scalar()
    return None if snap is None else str(snap)


def migrations_between(
    conn: Connection,
    since: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    user_key: int | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Recorded migrations (newest last), optionally for one user and a time window."""
    from automation.features.build import ts_param

    where = ["TRUE"]
    params: dict[str, Any] = {}
    if since is not None:
        where.append("m.at >= :since")
        params["since"] = ts_param(conn, since)
    if until is not None:
        where.append("m.at < :until")
        params["until"] = ts_param(conn, until)
    if user_key is not None:
        where.append("m.user_key = :u")
        params["u"] = user_key
    tail = f" LIMIT {int(limit)}" if limit else ""
    rows = conn.execute(
        text(
            "SELECT u.external_id, m.from_segment, m.to_segment, m.at, m.reason, m.n_events, "
            "m.explanation, m.version_id FROM segment_migrations m "
            f"JOIN users u ON u.id = m.user_key WHERE {' AND '.join(where)} "
            f"ORDER BY m.at, m.id{tail}"
        ),
        params,
    ).all()
    return pd.DataFrame(
        rows,
        columns=["user_id", "from", "to", "at", "reason", "events", "explanation", "version"],
    )
