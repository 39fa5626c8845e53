"""``shoal campaign run``: turn trigger occurrences into decisions and deliveries, exactly once.

For every active campaign, highest priority first: find the trigger's occurrences since the
campaign's cursor, drop those already decided, then decide for each (user, occurrence):

``suppressed``  a condition failed, the campaign's cooldown or the channel's frequency cap
                applies, or a higher-priority campaign already takes the user on this channel
                in this run (the reason says which);
``holdout``     the user drew under the campaign's holdout share (a fixed draw per user);
``treatment``   everything else: a delivery is queued (with a coupon issued when the campaign
                has one, and the routing table updated for routing campaigns).

Decisions, deliveries, coupons, routing and the cursor are written in one transaction under the
``campaigns`` lock; a decision is unique per (campaign, user, occurrence), so a retry or a
replay of the same events decides nothing twice. A dry run returns the same decisions and
writes nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import TemplateError
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from automation.campaigns.limits import (
    failed_condition,
    holdout_draw,
    in_cooldown,
    medium,
    quiet_until,
    sent_counts,
)
from automation.campaigns.render import render_message
from automation.campaigns.spec import CampaignSpec, duration
from automation.campaigns.store import StoredCampaign, cursor_of, latest_campaigns, set_cursor
from automation.campaigns.triggers import Live, live_segments, max_outbox_id, occurrences
from automation.errors import ShoalError
from automation.features.build import as_utc, build_features, ts_param
from automation.store.bulk import create_temp_like, read_frame, write_frame
from automation.store.locks import acquire_lock

log = logging.getLogger("shoal.campaigns")
#: Media where campaigns compete for a user (one message, or one queue, per run; the highest
#: priority wins). Webhooks and exports feed other systems and never displace each other.
COMPETING = ("email", "routing")
Recommend = Callable[[list[str], int], dict[str, list[dict[str, Any]]]]


@dataclass
class RunReport:
    dry_run: bool
    campaigns: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, limit: int = 50) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "campaigns": self.campaigns,
            "decisions": self.decisions[:limit],
            "n_decisions": len(self.decisions),
        }


@dataclass
class _Table:
    frame: pd.DataFrame  # features, index user_key
    last_seen: pd.Series  # newest event time, index user_key


class _Features:
    """Every user's features, computed once per run and only when a campaign needs them."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._table: _Table | None = None

    def __call__(self) -> _Table:
        if self._table is None:
            ft = build_features(self.conn)
            last = read_frame(self.conn, "SELECT user_key, last_ts FROM user_stats")
            seen = pd.Series(
                pd.to_datetime(last["last_ts"], utc=True).to_numpy(),
                index=last["user_key"].astype("int64"),
            )
            self._table = _Table(ft.frame, seen)
        return self._table


def _decide(
    conn: Connection,
    camp: StoredCampaign,
    occ: pd.DataFrame,
    feats: _Features,
    ext: pd.Series,
    claimed: dict[str, set[int]],
    now: pd.Timestamp,
) -> pd.DataFrame:
    spec = camp.spec
    users = occ["user_key"].astype("int64").to_numpy()
    reason = pd.Series("", index=occ.index, dtype=object)
    if spec.conditions:
        f = feats().frame.reindex(users)
        failed = failed_condition(f, spec.conditions).to_numpy()
        reason[:] = failed
    cool = in_cooldown(conn, spec, users, occ["triggered_at"])
    reason[(reason == "").to_numpy() & cool] = f"cooldown {spec.limits.cooldown}"
    draw = holdout_draw(spec.name, ext.reindex(users).fillna("").reset_index(drop=True))
    group = np.where(draw < spec.holdout, "holdout", "treatment").astype(object)
    channel = medium(spec.channel.type)  # a coupon travels by e-mail
    taken = claimed.setdefault(channel, set())
    cap = spec.limits.frequency_cap
    counts = sent_counts(conn, channel, now - duration(cap.per)) if cap is not None else {}
    for i, u in enumerate(users):
        # Every eligibility rule applies before the holdout draw, to both groups alike, so the
        # held-out users stay comparable with the treated ones.
        if reason.iat[i]:
            group[i] = "suppressed"
            continue
        if channel in COMPETING and int(u) in taken:
            group[i], reason.iat[i] = "suppressed", f"a higher-priority {channel} campaign"
            continue
        if cap is not None and counts.get(int(u), 0) >= cap.max:
            group[i] = "suppressed"
            reason.iat[i] = f"frequency cap {cap.max} per {cap.per} on {channel}"
            continue
        taken.add(int(u))  # a held-out user is this campaign's too: no other takes them
        if group[i] == "holdout":
            reason.iat[i] = f"held out ({spec.holdout:.0%} control group)"
            continue
        counts[int(u)] = counts.get(int(u), 0) + 1
        reason.iat[i] = f"{spec.trigger.kind} trigger"
    out = occ.copy()
    out["campaign"] = spec.name
    out["version"] = camp.version
    out["group_name"] = group
    out["reason"] = reason.to_numpy()
    out["user_id"] = ext.reindex(users).to_numpy()
    return out


def _not_decided(conn: Connection, name: str, occ: pd.DataFrame) -> pd.DataFrame:
    if occ.empty:
        return occ
    create_temp_like(conn, "_stage_occ", "user_key BIGINT, occurrence VARCHAR(120), pos BIGINT")
    write_frame(
        conn,
        "_stage_occ",
        {
            "user_key": occ["user_key"].astype("int64").reset_index(drop=True),
            "occurrence": occ["occurrence"].astype(str).reset_index(drop=True),
            "pos": pd.Series(np.arange(len(occ), dtype=np.int64)),
        },
    )
    seen = read_frame(
        conn,
        "SELECT s.pos FROM _stage_occ s JOIN campaign_decisions d ON d.campaign = :c "
        "AND d.user_key = s.user_key AND d.occurrence = s.occurrence",
        {"c": name},
    )
    keep = np.ones(len(occ), dtype=bool)
    if len(seen):
        keep[seen["pos"].astype("int64").to_numpy()] = False
    return occ[keep].drop_duplicates(["user_key", "occurrence"]).reset_index(drop=True)


def _write(
    conn: Connection,
    spec: CampaignSpec,
    decided: pd.DataFrame,
    now: pd.Timestamp,
    live: Live,
    feats: _Features,
    recommend: Recommend | None,
) -> int:
    """Insert decisions; queue deliveries, coupons and routing for the treated. Returns #queued."""
    if decided.empty:
        return 0
    cols = ["campaign", "version", "user_key", "occurrence", "segment_id", "group_name", "reason"]
    frame = decided.assign(segment_id=decided["to_segment"])
    write_frame(
        conn,
        "campaign_decisions",
        {
            **{c: frame[c].reset_index(drop=True) for c in cols},
            "triggered_at": pd.to_datetime(frame["triggered_at"], utc=True).reset_index(drop=True),
            "decided_at": pd.Series([now] * len(frame)),
        },
    )
    treated = frame[frame["group_name"] == "treatment"]
    if treated.empty:
        return 0
    ids = read_frame(
        conn,
        "SELECT d.id, d.user_key, d.occurrence FROM campaign_decisions d JOIN _stage_occ s "
        "ON d.user_key = s.user_key AND d.occurrence = s.occurrence "
        "WHERE d.campaign = :c AND d.group_name = 'treatment'",
        {"c": spec.name},
    )
    ids = ids.assign(
        user_key=ids["user_key"].astype("int64"), occurrence=ids["occurrence"].astype(str)
    )
    treated = treated.merge(ids, on=["user_key", "occurrence"], how="inner")
    items: dict[str, list[dict[str, Any]]] = {}
    n_items = spec.channel.recommendations if spec.channel.type in ("email", "coupon") else 0
    if n_items and recommend is not None:
        items = recommend(treated["user_id"].astype(str).tolist(), n_items)
    ft = feats() if spec.channel.type in ("email", "coupon", "routing") else None
    send_at = quiet_until(spec.limits.quiet_hours, now)
    rows: list[dict[str, Any]] = []
    coupons: list[dict[str, Any]] = []
    for r in treated.itertuples(index=False):
        coupon = _coupon(spec, r, now) if spec.channel.coupon is not None else None
        if coupon is not None:
            coupons.append(coupon)
        ctx = _context(spec, r, live, ft, items.get(str(r.user_id), []), coupon)
        payload = {"user_id": str(r.user_id), **render_message(spec, ctx)}
        if spec.channel.type in ("webhook", "export", "routing"):
            payload["event"] = ctx
        if spec.channel.type == "routing":
            _route(conn, spec, r, payload, now)
            if spec.channel.url is None:
                continue
        rows.append(
            {
                "key": f"{spec.name}:{r.user_key}:{r.occurrence}:{spec.channel.type}",
                "decision_id": int(r.id),  # type: ignore[arg-type]
                "campaign": spec.name,
                "channel": spec.channel.type,
                "user_key": int(r.user_key),  # type: ignore[arg-type]
                "payload": json.dumps(payload, default=str),
            }
        )
    if coupons:
        frame_c = pd.DataFrame(coupons)
        write_frame(conn, "coupons", {c: frame_c[c] for c in frame_c.columns})
    if rows:
        d = pd.DataFrame(rows)
        write_frame(
            conn,
            "deliveries",
            {
                **{c: d[c] for c in d.columns},
                "status": pd.Series(["pending"] * len(d)),
                "attempts": pd.Series(np.zeros(len(d), dtype=np.int64)),
                "next_attempt_at": pd.Series([send_at] * len(d)),
                "created_at": pd.Series([now] * len(d)),
            },
        )
    return len(rows)


def _coupon(spec: CampaignSpec, r: Any, now: pd.Timestamp) -> dict[str, Any]:
    c = spec.channel.coupon
    assert c is not None
    return {
        "code": f"{spec.name[:8].upper()}-{secrets.token_hex(6).upper()}",
        "campaign": spec.name,
        "user_key": int(r.user_key),
        "decision_id": int(r.id),
        "kind": c.kind,
        "value": float(c.value),
        "expires_at": now + duration(c.expires_in),
        "usage_limit": c.usage_limit,
        "used": 0,
    }


def _context(
    spec: CampaignSpec,
    r: Any,
    live: Live,
    ft: Any,
    items: list[dict[str, Any]],
    coupon: dict[str, Any] | None,
) -> dict[str, Any]:
    seg = None if r.to_segment is None or pd.isna(r.to_segment) else str(r.to_segment)
    feats: dict[str, float] = {}
    if ft is not None and int(r.user_key) in ft.frame.index:
        row = ft.frame.loc[int(r.user_key)]
        feats = {k: round(float(v), 4) for k, v in row.items()}
    return {
        "user": {"id": str(r.user_id), "features": feats},
        "segment": {"id": seg, "name": live.names.get(seg or "", seg)},
        "items": items,
        "coupon": None
        if coupon is None
        else {
            "code": coupon["code"],
            "kind": coupon["kind"],
            "value": coupon["value"],
            "expires_at": pd.Timestamp(coupon["expires_at"]).date().isoformat(),
        },
        "campaign": {"name": spec.name, "description": spec.description},
        "trigger": {
            "kind": spec.trigger.kind,
            "occurrence": str(r.occurrence),
            "at": pd.Timestamp(r.triggered_at).isoformat(),
            "from_segment": None
            if r.from_segment is None or pd.isna(r.from_segment)
            else str(r.from_segment),
            "to_segment": seg,
        },
    }


def _route(
    conn: Connection, spec: CampaignSpec, r: Any, payload: dict[str, Any], now: pd.Timestamp
) -> None:
    params = {
        "u": int(r.user_key),
        "c": spec.name,
        "s": None if r.to_segment is None or pd.isna(r.to_segment) else str(r.to_segment),
        "q": payload["queue"],
        "p": int(payload["priority"]),
        "sc": payload["script"],
        "t": ts_param(conn, now),
    }
    conn.execute(
        text(
            "INSERT INTO routing (user_key, campaign, segment_id, queue, priority, script, "
            "updated_at) VALUES (:u, :c, :s, :q, :p, :sc, :t) ON CONFLICT (user_key) DO UPDATE "
            "SET campaign = excluded.campaign, segment_id = excluded.segment_id, "
            "queue = excluded.queue, priority = excluded.priority, script = excluded.script, "
            "updated_at = excluded.updated_at"
        ),
        params,
    )


def _summary(camp: StoredCampaign, decided: pd.DataFrame | None, queued: int) -> dict[str, Any]:
    """A campaign's line in the run report (``decided`` None: it failed, nothing decided)."""
    groups = (
        decided["group_name"].value_counts().to_dict()
        if decided is not None and len(decided)
        else {}
    )
    return {
        "campaign": camp.name,
        "version": camp.version,
        "trigger": camp.spec.trigger.kind,
        "channel": camp.spec.channel.type,
        "occurrences": 0 if decided is None else len(decided),
        "treatment": int(groups.get("treatment", 0)),
        "holdout": int(groups.get("holdout", 0)),
        "suppressed": int(groups.get("suppressed", 0)),
        "queued": queued,
    }


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and value != value) else str(value)


def run_campaigns(
    engine: Engine,
    names: list[str] | None = None,
    dry_run: bool = False,
    now: pd.Timestamp | None = None,
    recommend: Recommend | None = None,
) -> RunReport:
    """Decide every active campaign's new occurrences; see the module docstring."""
    now = as_utc(now if now is not None else pd.Timestamp.now(tz="UTC"))
    report = RunReport(dry_run=dry_run)
    with engine.connect() as conn, conn.begin() as tx:
        acquire_lock(conn, "campaigns")
        every = latest_campaigns(conn, names)
        camps = [c for c in every if c.active]
        top = max_outbox_id(conn)
        if not dry_run:  # an inactive campaign skips what happens meanwhile: no backlog later
            for c in every:
                if not c.active:
                    set_cursor(conn, c.name, top, ts_param(conn, now))
        if not camps:
            return report
        live = live_segments(conn)
        ext = read_frame(conn, "SELECT id AS user_key, external_id FROM users")
        ext_ids = pd.Series(
            ext["external_id"].astype(str).to_numpy(), index=ext["user_key"].astype("int64")
        )
        feats = _Features(conn)
        claimed: dict[str, set[int]] = {}
        for camp in camps:
            # Each campaign in its own savepoint: one that fails (a bad template for one user,
            # a store error) is reported and skipped, and the others are still decided.
            before = {medium: set(users) for medium, users in claimed.items()}
            try:
                with conn.begin_nested():
                    cursor = cursor_of(conn, camp.name)
                    occ = occurrences(
                        conn, camp.spec, live, cursor, now, as_utc(camp.loaded_at), feats
                    )
                    occ = _not_decided(conn, camp.name, occ)
                    decided = _decide(conn, camp, occ, feats, ext_ids, claimed, now)
                    queued = (
                        0
                        if dry_run
                        else _write(conn, camp.spec, decided, now, live, feats, recommend)
                    )
                    if not dry_run:
                        set_cursor(conn, camp.name, top, ts_param(conn, now))
            except (ShoalError, TemplateError, LookupError, ValueError, SQLAlchemyError) as exc:
                log.error("campaign %s failed and was skipped: %s", camp.name, exc)
                claimed = before  # its claims on users go with its rolled-back decisions
                report.campaigns.append({**_summary(camp, None, 0), "error": str(exc)})
                continue
            report.campaigns.append(_summary(camp, decided, queued))
            for r in decided.head(1000).itertuples(index=False):
                report.decisions.append(
                    {
                        "campaign": camp.name,
                        "user_id": str(r.user_id),
                        "group": r.group_name,
                        "reason": r.reason,
                        "channel": camp.spec.channel.type,
                        "segment": _text(r.to_segment),
                        "occurrence": str(r.occurrence),
                    }
                )
        if dry_run:
            tx.rollback()
    return report
