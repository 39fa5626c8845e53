"""Segment-conditioned item priors for customers with little history.

A customer with one or two orders says little about their taste; what they buy next is better
predicted by what *similar customers at the same stage* bought. Two priors, each a row per
segment (users without a segment read the all-customer row), smoothed towards the all-customer
row with ``smooth`` pseudo-buyers, so a small segment does not rank on a handful of buyers:

:func:`early_orders`
    items bought in customers' early repeat orders (their 2nd to ``max_rank``-th order), each
    buyer weighted by the decay of that order's age: what customers buy when they come back.
:func:`segment_trend`
    items bought recently (decayed with a short half-life) by the segment's customers: the
    segment's share of what is selling now.
:func:`repeat_rates`
    the share of an item's buyers who bought it in two or more orders, per segment (smoothed
    towards the item's all-customer rate): how likely the segment is to buy the item again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from automation.recommend.context import distinct_user_popularity
from automation.recommend.data import PURCHASE, FloatArray, IntArray, Interactions, decay


def order_rank(inter: Interactions) -> IntArray:
    """Per event: the rank of its order among the user's orders (1 = first); 0 if no order."""
    mask = (inter.kind == PURCHASE) & (inter.order >= 0)
    out = np.zeros(inter.n_events, dtype=np.int64)
    if not mask.any():
        return out
    frame = pd.DataFrame({"u": inter.user[mask], "o": inter.order[mask], "a": inter.age_days[mask]})
    orders = frame.groupby(["u", "o"], sort=False)["a"].max().reset_index()
    orders = orders.sort_values(["u", "a", "o"], ascending=[True, False, True], kind="stable")
    orders["r"] = orders.groupby("u", sort=False).cumcount() + 1
    rank = np.zeros(int(inter.order.max()) + 1, dtype=np.int64)
    rank[orders["o"].to_numpy(dtype=np.int64)] = orders["r"].to_numpy(dtype=np.int64)
    out[mask] = rank[inter.order[mask]]
    return out


def _per_segment(
    inter: Interactions, weights: FloatArray, user_segment: IntArray, n_segments: int
) -> tuple[FloatArray, FloatArray]:
    """Distinct buyers per item (each counted with their largest weight; zero weights dropped),
    for all users and per segment."""
    keep = weights > 0
    frame = pd.DataFrame({"u": inter.user[keep], "i": inter.item[keep], "w": weights[keep]})
    best = frame.groupby(["u", "i"], sort=False)["w"].max().reset_index()
    items = best["i"].to_numpy(dtype=np.int64)
    w = best["w"].to_numpy(dtype=np.float64)
    total = np.bincount(items, weights=w, minlength=inter.n_items).astype(np.float64)
    seg = np.zeros((n_segments, inter.n_items))
    codes = user_segment[best["u"].to_numpy(dtype=np.int64)] if len(user_segment) else items * 0 - 1
    for s in range(n_segments):
        m = codes == s
        seg[s] = np.bincount(items[m], weights=w[m], minlength=inter.n_items)
    return total, seg


def _smoothed(total: FloatArray, seg: FloatArray, smooth: float) -> FloatArray:
    """Rows: all customers first, then each segment shrunk towards it (``smooth`` pseudo-buyers
    spread as the all-customer shares)."""
    share = total / max(float(total.sum()), 1e-12)
    mass = seg.sum(axis=1, keepdims=True)
    rows = (seg + smooth * share[None, :]) / np.maximum(mass + smooth, 1e-12)
    return np.vstack([share[None, :], rows])


def early_orders(
    inter: Interactions,
    user_segment: IntArray,
    n_segments: int,
    half_life: float | None,
    max_rank: int = 3,
    smooth: float = 50.0,
) -> FloatArray:
    """(1 + segments) x items: what customers bought in their 2nd .. ``max_rank``-th orders."""
    rank = order_rank(inter)
    early = (rank >= 2) & (rank <= max_rank)
    weights = np.where(early, decay(inter.age_days, half_life), 0.0)
    total, seg = _per_segment(inter, weights, user_segment, n_segments)
    return _smoothed(total, seg, smooth)


def segment_trend(
    inter: Interactions, user_segment: IntArray, n_segments: int, half_life: float, smooth: float
) -> FloatArray:
    """(1 + segments) x items: recent buyers (decayed with ``half_life``) per segment."""
    mask = inter.kind == PURCHASE
    weights = np.where(mask, decay(inter.age_days, half_life), 0.0)
    if not mask.any():
        total = distinct_user_popularity(inter, half_life)
        return _smoothed(total, np.zeros((n_segments, inter.n_items)), smooth)
    total, seg = _per_segment(inter, weights, user_segment, n_segments)
    return _smoothed(total, seg, smooth)


def repeat_rates(
    inter: Interactions, user_segment: IntArray, n_segments: int, smooth: float
) -> FloatArray:
    """(1 + segments) x items: the share of each item's buyers who bought it in two or more
    orders; the all-customer row is smoothed towards the overall share with ``smooth``
    pseudo-buyers, each segment's row towards the item's all-customer share."""
    mask = (inter.kind == PURCHASE) & (inter.order >= 0)
    out = np.zeros((1 + n_segments, inter.n_items))
    if not mask.any():
        return out
    frame = pd.DataFrame({"u": inter.user[mask], "i": inter.item[mask], "o": inter.order[mask]})
    per = frame.groupby(["u", "i"], sort=False)["o"].nunique().reset_index()
    items = per["i"].to_numpy(dtype=np.int64)
    again = (per["o"].to_numpy() >= 2).astype(np.float64)
    codes = user_segment[per["u"].to_numpy(dtype=np.int64)] if len(user_segment) else items * 0 - 1
    buyers = np.bincount(items, minlength=inter.n_items).astype(np.float64)
    repeats = np.bincount(items, weights=again, minlength=inter.n_items)
    base = float(repeats.sum()) / max(float(buyers.sum()), 1.0)
    out[0] = (repeats + smooth * base) / (buyers + smooth)
    for s in range(n_segments):
        m = codes == s
        b = np.bincount(items[m], minlength=inter.n_items).astype(np.float64)
        r = np.bincount(items[m], weights=again[m], minlength=inter.n_items)
        out[1 + s] = (r + smooth * out[0]) / (b + smooth)
    return out


def rows_for(prior: FloatArray, segments: IntArray) -> FloatArray:
    """Each user's row of a prior (the all-customer row without a segment), max-scaled to 1."""
    out = prior[np.asarray(segments, dtype=np.int64) + 1]
    top = out.max(axis=1, keepdims=True)
    return np.asarray(out / np.maximum(top, 1e-12))
