"""Trigger occurrences: which users a campaign's trigger fired for, once per occurrence.

Each occurrence has a stable key, so evaluating the same trigger twice (a retry, a replay of
the same events) finds the same keys and the unique decision per (campaign, user, occurrence)
keeps it to one decision:

- ``entered`` / ``exited`` / ``migrated``: the segment-change outbox rows after the campaign's
  cursor (the outbox row's key is the occurrence);
- ``segment_event``: ``Segment Born`` / ``Drifted`` / ... rows; the segment's current members;
- ``feature``: current members (of the segment, if given) whose feature crosses the threshold;
  the occurrence is the user's latest activity, so one quiet spell fires once;
- ``schedule``: the newest cron fire time not after now (live, not before the campaign was
  loaded); every member of the segment (or every user) at that time.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Connection

from automation.campaigns.spec import CampaignSpec
from automation.features.build import as_utc
from automation.store.bulk import read_frame
from automation.store.history import resolve
from automation.store.segmentations import current_version, segments_of

OCCURRENCE_COLUMNS = ["user_key", "occurrence", "triggered_at", "from_segment", "to_segment"]
OPS = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_OUTBOX_EVENT = {
    "born": "Segment Born",
    "retired": "Segment Retired",
    "split": "Segment Split",
    "merged": "Segment Merged",
    "drifted": "Segment Drifted",
}


@dataclass
class Live:
    """The current segmentation: every user's segment, and segment ids by id and by name."""

    members: pd.DataFrame  # user_key, segment_id
    names: dict[str, str]  # segment id -> name
    version: int

    def segment_id(self, ref: str | None) -> str | None:
        """A segment given by id or (case-insensitive) name; None if ``ref`` is None."""
        if ref is None:
            return None
        if ref in self.names:
            return ref
        by_name = {n.lower(): s for s, n in self.names.items()}
        return by_name.get(ref.lower(), f"?{ref}")


def live_segments(conn: Connection) -> Live:
    version = current_version(conn)
    members = resolve(conn, version)[["user_key", "segment_id"]]
    members = members.assign(segment_id=members["segment_id"].astype(str))
    names = {str(s.segment_id): str(s.name) for s in segments_of(conn, version.id)}
    return Live(members, names, int(version.id))


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in OCCURRENCE_COLUMNS})


def _outbox(conn: Connection, after: int, events: list[str]) -> pd.DataFrame:
    marks = ", ".join(f":e{i}" for i in range(len(events)))
    return read_frame(
        conn,
        f"SELECT id, key, event, user_key, segment_id, at, payload FROM outbox "
        f"WHERE id > :after AND event IN ({marks}) ORDER BY id",
        {"after": after, **{f"e{i}": e for i, e in enumerate(events)}},
    )


def max_outbox_id(conn: Connection) -> int:
    frame = read_frame(conn, "SELECT MAX(id) AS m FROM outbox")
    value = frame["m"].iloc[0] if len(frame) else None
    return 0 if value is None or pd.isna(value) else int(value)


def occurrences(
    conn: Connection,
    spec: CampaignSpec,
    live: Live,
    cursor: int,
    now: pd.Timestamp,
    loaded_at: pd.Timestamp,
    features: Any,
) -> pd.DataFrame:
    """The trigger's occurrences since ``cursor``: one row per (user, occurrence)."""
    t = spec.trigger
    if t.entered is not None or t.exited is not None or t.migrated is not None:
        return _moves(conn, spec, live, cursor)
    if t.segment_event is not None:
        rows = _outbox(conn, cursor, [_OUTBOX_EVENT[t.segment_event.type]])
        wanted = live.segment_id(t.segment_event.segment)
        if wanted is not None:
            rows = rows[rows["segment_id"].astype(str) == wanted]
        parts = []
        for r in rows.itertuples():
            m = live.members[live.members["segment_id"] == str(r.segment_id)]
            parts.append(
                pd.DataFrame(
                    {
                        "user_key": m["user_key"].to_numpy(),
                        "occurrence": str(r.key),
                        "triggered_at": as_utc(r.at),
                        "from_segment": None,
                        "to_segment": str(r.segment_id),
                    }
                )
            )
        return pd.concat(parts, ignore_index=True) if parts else _empty()
    if t.feature is not None:
        ft = t.feature
        frame = features()
        seg = live.segment_id(ft.segment)
        pool = live.members if seg is None else live.members[live.members["segment_id"] == seg]
        f = frame.frame.reindex(pool["user_key"].to_numpy())
        if ft.feature not in f.columns:
            return _empty()
        hit = OPS[ft.op](f[ft.feature], ft.value).fillna(False).to_numpy(dtype=bool)
        users = f.index[hit]
        last = frame.last_seen.reindex(users)
        return pd.DataFrame(
            {
                "user_key": users.to_numpy(),
                "occurrence": [
                    f"feature:{ft.feature}{ft.op}{ft.value}:{pd.Timestamp(x).isoformat()}"
                    for x in last
                ],
                "triggered_at": now,
                "from_segment": None,
                "to_segment": pool.set_index("user_key")["segment_id"].reindex(users).to_numpy(),
            }
        )
    assert t.schedule is not None
    fire = last_fire_time(t.schedule.cron, t.schedule.timezone, now)
    # Live, a campaign starts when it is loaded (no slot from before then fires at once); a
    # replay of the past (``now`` before loading) takes the newest slot.
    if fire is None or (fire < loaded_at <= now):
        return _empty()
    seg = live.segment_id(t.schedule.segment)
    pool = live.members if seg is None else live.members[live.members["segment_id"] == seg]
    return pd.DataFrame(
        {
            "user_key": pool["user_key"].to_numpy(),
            "occurrence": f"schedule:{fire.isoformat()}",
            "triggered_at": fire,
            "from_segment": None,
            "to_segment": pool["segment_id"].to_numpy(),
        }
    )


def _moves(conn: Connection, spec: CampaignSpec, live: Live, cursor: int) -> pd.DataFrame:
    t = spec.trigger
    kind = "Segment Exited" if t.exited is not None else "Segment Entered"
    rows = _outbox(conn, cursor, [kind])
    if rows.empty:
        return _empty()
    payload = rows["payload"].map(_json)
    seg = rows["segment_id"].astype(str)
    if t.entered is not None:
        keep = seg == live.segment_id(t.entered)
        from_seg = payload.map(lambda p: p.get("from"))
        to_seg = seg
    elif t.exited is not None:
        keep = seg == live.segment_id(t.exited)
        from_seg = seg
        to_seg = payload.map(lambda p: p.get("to"))
    else:
        assert t.migrated is not None
        from_seg = payload.map(lambda p: p.get("from"))
        to_seg = seg
        keep = (seg == live.segment_id(t.migrated.to)) & (
            from_seg.astype(str) == str(live.segment_id(t.migrated.from_))
        )
    rows = rows[keep.to_numpy()]
    return pd.DataFrame(
        {
            "user_key": rows["user_key"].astype("int64").to_numpy(),
            "occurrence": rows["key"].astype(str).to_numpy(),
            "triggered_at": pd.to_datetime(rows["at"], utc=True).to_numpy(),
            "from_segment": from_seg[keep.to_numpy()].to_numpy(),
            "to_segment": to_seg[keep.to_numpy()].to_numpy(),
        }
    )


def _json(value: Any) -> dict[str, Any]:
    import json

    if isinstance(value, dict):
        return value
    try:
        out = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def last_fire_time(cron: str, timezone: str, now: pd.Timestamp) -> pd.Timestamp | None:
    """The newest time ``cron`` fired at or before ``now`` (looking back up to 8 days)."""
    from automation.tasks.cron import crontab_trigger

    trig = crontab_trigger(cron, timezone)
    start = (now - pd.Timedelta(days=8)).to_pydatetime()
    prev = None
    fire = trig.get_next_fire_time(None, start)
    while fire is not None and fire <= now.to_pydatetime():
        prev = fire
        fire = trig.get_next_fire_time(fire, fire + pd.Timedelta(seconds=1).to_pytimedelta())
    return None if prev is None else pd.Timestamp(prev).tz_convert("UTC")
