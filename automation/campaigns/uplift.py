"""``shoal uplift CAMPAIGN``: treated against held out, after each trigger, with 95% intervals.

For every decision in the treatment or holdout group, the outcome window is ``(triggered_at,
triggered_at + window]``. A user converted if they placed an order in it; revenue is their order
revenue in it. The same definition holds for both groups (a coupon redemption arrives as an
order carrying the code, so it counts as that order, never as a treated-only extra). Per group: users, conversion rate,
revenue per user. Uplift: the difference treated - held out, with a normal-approximation 95%
interval (unpooled standard errors: Wald for rates, Welch for revenue), and the relative uplift
(difference / held-out rate) with a delta-method interval. Overall and per segment (the
user's segment when the campaign fired). Windows still open at the newest event are reported
as ``incomplete``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from automation.campaigns.spec import duration
from automation.campaigns.store import campaign_named
from automation.features.build import latest_event_time
from automation.store.bulk import create_temp_like, read_frame, write_frame

Z = 1.959963984540054


def _interval(diff: float, se: float) -> list[float | None]:
    if not math.isfinite(se):
        return [None, None]
    return [round(diff - Z * se, 6), round(diff + Z * se, 6)]


def compare(treated: pd.DataFrame, held: pd.DataFrame) -> dict[str, Any]:
    """Conversion and revenue per user, treated against held out (frames: converted, revenue)."""
    nt, nc = len(treated), len(held)
    out: dict[str, Any] = {"treated": nt, "held_out": nc}
    if nt == 0 or nc == 0:
        return {**out, "conversion": None, "revenue_per_user": None}
    pt = float(treated["converted"].mean())
    pc = float(held["converted"].mean())
    diff = pt - pc
    se = math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
    rel = diff / pc if pc > 0 else None
    rel_ci: list[float | None] = [None, None]
    if pc > 0:
        # delta method for pt / pc - 1
        se_rel = math.sqrt((pt * (1 - pt) / nt) / pc**2 + (pt**2 * pc * (1 - pc) / nc) / pc**4)
        rel_ci = _interval(diff / pc, se_rel)
    rt = treated["revenue"].to_numpy(dtype=float)
    rc = held["revenue"].to_numpy(dtype=float)
    rdiff = float(rt.mean() - rc.mean())
    var_t = float(rt.var(ddof=1)) if nt > 1 else float("nan")
    var_c = float(rc.var(ddof=1)) if nc > 1 else float("nan")
    rse = math.sqrt(var_t / nt + var_c / nc)
    return {
        **out,
        "conversion": {
            "treated": round(pt, 6),
            "held_out": round(pc, 6),
            "uplift": round(diff, 6),
            "ci95": _interval(diff, se),
            "relative": None if rel is None else round(rel, 6),
            "relative_ci95": rel_ci,
        },
        "revenue_per_user": {
            "treated": round(float(rt.mean()), 4),
            "held_out": round(float(rc.mean()), 4),
            "uplift": round(rdiff, 4),
            "ci95": _interval(rdiff, rse),
        },
    }


def outcomes(engine: Engine, campaign: str, window: str = "30d") -> pd.DataFrame:
    """One row per treated or held-out decision: group, segment, converted, revenue."""
    span = duration(window)
    with engine.begin() as conn:
        campaign_named(conn, campaign)  # a clear error for an unknown campaign
        dec = read_frame(
            conn,
            "SELECT d.id, d.user_key, d.group_name, d.segment_id, d.triggered_at "
            "FROM campaign_decisions d "
            "WHERE d.campaign = :c AND d.group_name IN ('treatment', 'holdout')",
            {"c": campaign},
        )
        if dec.empty:
            return pd.DataFrame(
                columns=["group_name", "segment_id", "converted", "revenue", "complete"]
            )
        create_temp_like(conn, "_uplift_users", "user_key BIGINT")
        write_frame(
            conn,
            "_uplift_users",
            {"user_key": pd.Series(dec["user_key"].drop_duplicates().to_numpy(dtype="int64"))},
        )
        orders = read_frame(
            conn,
            "SELECT o.user_key, o.ts, o.revenue FROM user_orders o "
            "JOIN _uplift_users u ON u.user_key = o.user_key",
        )
        latest = latest_event_time(conn)
    dec["triggered_at"] = pd.to_datetime(dec["triggered_at"], utc=True)
    dec["end"] = dec["triggered_at"] + span
    if len(orders):
        orders["ts"] = pd.to_datetime(orders["ts"], utc=True)
        m = dec[["id", "user_key", "triggered_at", "end"]].merge(orders, on="user_key")
        m = m[(m["ts"] > m["triggered_at"]) & (m["ts"] <= m["end"])]
        per = m.groupby("id").agg(n=("ts", "size"), revenue=("revenue", "sum"))
    else:
        per = pd.DataFrame({"n": [], "revenue": []})
    dec = dec.join(per, on="id")
    dec["n"] = dec["n"].fillna(0)
    dec["revenue"] = dec["revenue"].fillna(0.0).astype(float)
    dec["converted"] = (dec["n"] > 0).astype(float)
    dec["complete"] = dec["end"] <= latest
    return dec[["group_name", "segment_id", "converted", "revenue", "complete"]]


def uplift(engine: Engine, campaign: str, window: str = "30d") -> dict[str, Any]:
    """The campaign's uplift overall and per segment; see the module docstring."""
    data = outcomes(engine, campaign, window)
    treated = data[data["group_name"] == "treatment"]
    held = data[data["group_name"] == "holdout"]
    segments = []
    for seg in sorted(data["segment_id"].dropna().astype(str).unique()):
        t = treated[treated["segment_id"].astype(str) == seg]
        h = held[held["segment_id"].astype(str) == seg]
        segments.append({"segment_id": seg, **compare(t, h)})
    return {
        "campaign": campaign,
        "window": window,
        "incomplete": int((~data["complete"].astype(bool)).sum()) if len(data) else 0,
        "overall": compare(treated, held),
        "segments": segments,
    }
