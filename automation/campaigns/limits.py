"""Who of the triggered users a campaign may contact: conditions, holdout, cooldown, caps, quiet hours."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import Connection

from automation.campaigns.spec import CampaignSpec, Condition, QuietHours, duration
from automation.campaigns.triggers import OPS
from automation.features.build import ts_param
from automation.store.bulk import read_frame

_KEY = "shoal-holdout-v1"  # 16 bytes: SipHash key for the holdout draw


def holdout_draw(campaign: str, user_ids: pd.Series) -> np.ndarray:
    """A uniform number in [0, 1) per user, fixed for (campaign, user): the holdout lottery.

    A user held out of a campaign stays held out of it (a persistent holdout), so repeated
    triggers never leak treatment into the control group.
    """
    keys = (campaign + "\x1f" + user_ids.astype(str)).to_numpy(dtype=object)
    h = pd.util.hash_array(keys, hash_key=_KEY)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def failed_condition(features: pd.DataFrame, conditions: list[Condition]) -> pd.Series:
    """Per user (features' index), the first condition they fail, as text ("" if none)."""
    out = pd.Series("", index=features.index, dtype=object)
    for c in conditions:
        if c.feature not in features.columns:
            col = pd.Series(np.nan, index=features.index)
        else:
            col = features[c.feature]
        ok = OPS[c.op](col, c.value).fillna(False).to_numpy(dtype=bool)
        miss = (~ok) & (out == "").to_numpy()
        out[miss] = f"condition {c.feature} {c.op} {c.value:g} not met"
    return out


def in_cooldown(
    conn: Connection, spec: CampaignSpec, user_keys: np.ndarray, triggered_at: pd.Series
) -> np.ndarray:
    """Occurrences less than the cooldown after the user's previous decision in this campaign.

    Compared in event time (the triggers' times), so a replay of past events keeps the same
    spacing as the live system did.
    """
    if spec.limits.cooldown is None or len(user_keys) == 0:
        return np.zeros(len(user_keys), dtype=bool)
    gap = duration(spec.limits.cooldown)
    last = read_frame(
        conn,
        "SELECT user_key, MAX(triggered_at) AS last FROM campaign_decisions "
        "WHERE campaign = :c AND group_name IN ('treatment', 'holdout') GROUP BY user_key",
        {"c": spec.name},
    )
    seen: dict[int, pd.Timestamp] = {}
    if len(last):
        at = pd.to_datetime(last["last"], utc=True)
        for k, v in zip(last["user_key"].astype("int64").tolist(), at.tolist(), strict=True):
            if not pd.isna(v):
                seen[int(k)] = pd.Timestamp(v)
    when: list[pd.Timestamp] = [pd.Timestamp(t) for t in pd.to_datetime(triggered_at, utc=True)]
    out = np.zeros(len(user_keys), dtype=bool)
    order = np.argsort(np.array([t.value for t in when]), kind="stable")
    for i in order:  # earlier occurrences of this run count for later ones
        u = int(user_keys[i])
        t = when[i]
        if u in seen and t - seen[u] < gap:
            out[i] = True
            continue
        seen[u] = t
    return out


MEDIA = {"email": ("email", "coupon")}


def medium(channel: str) -> str:
    """What reaches the user: coupons are e-mails too (one cap, one message per run)."""
    return "email" if channel in MEDIA["email"] else channel


def sent_counts(conn: Connection, channel: str, since: pd.Timestamp) -> dict[int, int]:
    """Deliveries per user on ``channel``'s medium created after ``since`` (frequency caps)."""
    kinds = MEDIA.get(medium(channel), (channel,))
    marks = ", ".join(f":k{i}" for i in range(len(kinds)))
    frame = read_frame(
        conn,
        f"SELECT user_key, COUNT(*) AS n FROM deliveries WHERE channel IN ({marks}) AND "
        "created_at > :since GROUP BY user_key",
        {**{f"k{i}": k for i, k in enumerate(kinds)}, "since": ts_param(conn, since)},
    )
    return dict(zip(frame["user_key"].astype("int64"), frame["n"].astype("int64"), strict=True))


def quiet_until(quiet: QuietHours | None, now: pd.Timestamp) -> pd.Timestamp:
    """``now``, or the end of the quiet hours when ``now`` falls inside them."""
    if quiet is None:
        return now
    local = now.tz_convert(quiet.timezone)
    sh, sm = (int(x) for x in quiet.start.split(":"))
    eh, em = (int(x) for x in quiet.end.split(":"))
    minutes = local.hour * 60 + local.minute
    start, end = sh * 60 + sm, eh * 60 + em
    inside = start <= minutes < end if start < end else minutes >= start or minutes < end
    if not inside:
        return now
    day = local.date()
    for offset in (0, 1):  # the end time on the wall clock, today or tomorrow (DST-safe)
        wall = pd.Timestamp(day) + pd.Timedelta(days=offset, hours=eh, minutes=em)
        resume = wall.tz_localize(quiet.timezone, ambiguous=True, nonexistent="shift_forward")
        if resume > local:
            return resume.tz_convert("UTC")
    return now
