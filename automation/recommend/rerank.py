"""A learned re-ranker over the hybrid's candidates, trained on the model's own recent past.

The blend adds its components with one weight each, the same for a customer with one order as
for one with fifty. The re-ranker learns how much each component is worth *given the customer's
history*: a logistic regression over, per (user, candidate item), every component's score, the
same scores multiplied by the user's coldness ``1 / (1 + orders)``, the user's orders, distinct
items and days since the last purchase, and the item's popularity, trend and price.

It is trained inside :meth:`HybridRecommender.fit` without looking past the training data: the
last ``ranker_days`` of the training events are held out as labels, a copy of the hybrid is
fitted on the events before them, its top ``ranker_candidates`` items per customer (customers
with history before the held-out days who bought in them) are the examples, and an item is
positive when the customer bought it in the held-out days. With ``ranker_windows`` > 1 the
windows of ``ranker_days`` before those days add their examples the same way (each from a copy
fitted on the events before it), for more customers, above all cold ones, per coefficient set
(an option: the tuning keeps one window, see bench/README.md). Two coefficient sets are learned:
``new`` (candidates and labels leave out what the customer had bought before, as
``filter_seen`` does) and ``all`` (repeat purchases count), each also learned from the cold
customers' examples alone (``new-cold``, ``all-cold``: at most ``cold_orders`` orders before the
held-out days), for the blend of cold customers to choose. At scoring time the hybrid's
candidates are ordered by the predicted probability (``rerank``: ``none``, ``new`` or ``all``);
everything is stored as arrays (means, scales, coefficients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from automation.recommend.data import PURCHASE, FloatArray, IntArray, Interactions

if TYPE_CHECKING:
    from automation.recommend.hybrid import HybridRecommender

MODES = ("new", "all")
RANKERS = (*MODES, *(f"{m}-cold" for m in MODES))  # a mode, or a mode learned on cold customers
ITEM_FEATURES = ("popularity", "trend", "price")
USER_FEATURES = ("orders", "items", "days_since_last")
PAIR_FEATURES = (
    "repeat_rate",
    "bought",
    "bought_x_cold",
    "bought_x_repeat_rate",
    "bought_x_repeat_rate_x_cold",
    "bought_days",
)


def feature_names(components: tuple[str, ...]) -> list[str]:
    """The columns :func:`features` builds, in order."""
    return [
        *components,
        *(f"{c}_x_cold" for c in components),
        *USER_FEATURES,
        *ITEM_FEATURES,
        *PAIR_FEATURES,
    ]


def before(inter: Interactions, days: float) -> Interactions:
    """The interactions older than ``days``, as of ``days`` earlier (same users and items)."""
    keep = inter.age_days >= days
    return Interactions(
        user_ids=inter.user_ids,
        catalogue=inter.catalogue,
        user=inter.user[keep],
        item=inter.item[keep],
        kind=inter.kind[keep],
        age_days=inter.age_days[keep] - days,
        order=inter.order[keep],
        as_of=inter.as_of - pd.Timedelta(days=days),
        segments=inter.segments,
        segment_names=inter.segment_names,
    )


def candidates(total: FloatArray, allowed: np.ndarray, n: int) -> IntArray:
    """Per row, the ``n`` best allowed items by ``total`` (rows x n; ``allowed`` rows x items)."""
    S = np.where(allowed, total, -np.inf)
    n = min(n, S.shape[1])
    part = np.argpartition(-S, n - 1, axis=1)[:, :n]
    return np.asarray(part, dtype=np.int64)


def features(
    model: HybridRecommender,
    rows: IntArray,
    segments: IntArray,
    comps: dict[str, FloatArray],
    cand: IntArray,
    components: tuple[str, ...],
) -> FloatArray:
    """(rows x candidates) x features, in the order of :func:`feature_names`.

    The pair features say whether the customer bought the candidate before (and how many days
    ago), and how often the customer's segment buys it again (``repeat_rate``), alone and with
    the customer's coldness."""
    ctx = model.context
    safe = np.where(rows >= 0, rows, 0)
    n_rows, n_cand = cand.shape
    take = np.arange(n_rows)[:, None]
    cols = [comps[c][take, cand] if c in comps else np.zeros((n_rows, n_cand)) for c in components]
    orders = np.where(rows >= 0, ctx.n_orders[safe], 0).astype(np.float64)
    cold = (1.0 / (1.0 + orders))[:, None]
    cols += [c * cold for c in cols]
    items = np.diff(model._profile(rows).indptr).astype(np.float64)
    last = ctx.last_age[safe]
    newest = np.full(n_rows, 365.0)
    has = np.diff(last.indptr) > 0
    if has.any():
        newest[has] = np.minimum.reduceat(last.data, last.indptr[:-1][has])
    for v in (orders, items, newest):
        cols.append(np.repeat(np.log1p(v)[:, None], n_cand, axis=1))
    prices = np.clip(np.nan_to_num(ctx.catalogue.prices, nan=0.0), 0.0, None)
    for v in (ctx.popularity, model.trend_, prices):
        cols.append(np.log1p(np.clip(v, 0.0, None))[cand])
    age = last.toarray()[take, cand] if last.nnz else np.zeros((n_rows, n_cand))
    bought = (age > 0).astype(np.float64)
    rates = getattr(model, "rates_", np.zeros((1, ctx.n_items)))
    seg = np.clip(np.asarray(segments, dtype=np.int64) + 1, 0, len(rates) - 1)
    rate = rates[seg[:, None], cand]
    cols += [rate, bought, bought * cold, bought * rate, bought * rate * cold, np.log1p(age)]
    return np.stack([c.reshape(-1) for c in cols], axis=1)


def train(
    model: HybridRecommender, inter: Interactions, components: tuple[str, ...]
) -> dict[str, FloatArray]:
    """Learn, per mode, the logistic regression that tells which candidates the customers bought
    in the last ``ranker_days``, from a copy of ``model`` fitted on the events before them; with
    ``ranker_windows`` > 1, also from the windows of ``ranker_days`` before that one (each with
    its own copy fitted on the events before it), their examples pooled: more customers, above
    all more cold ones, for the same coefficients."""
    p = model.params
    days = float(p["ranker_days"])
    pooled: dict[str, list[tuple[FloatArray, np.ndarray, np.ndarray]]] = {m: [] for m in MODES}
    for w in range(int(p["ranker_windows"])):
        shifted = before(inter, w * days) if w else inter
        for mode, example in _examples(model, shifted, components).items():
            pooled[mode].append(example)
    out: dict[str, FloatArray] = {}
    for mode, parts in pooled.items():
        if not parts:
            continue
        X = np.vstack([x for x, _, _ in parts])
        y = np.concatenate([y for _, y, _ in parts])
        cold = np.concatenate([c for _, _, c in parts])
        for name, keep in ((mode, slice(None)), (f"{mode}-cold", cold)):
            out.update(_learn(name, X[keep], y[keep], float(p["ranker_c"])))
    return out


def _examples(
    model: HybridRecommender, inter: Interactions, components: tuple[str, ...]
) -> dict[str, tuple[FloatArray, np.ndarray, np.ndarray]]:
    """Per mode, the features, labels and coldness of the candidates of the customers who bought
    in the last ``ranker_days`` of ``inter`` (none when fewer than 10 did)."""
    p = model.params
    days = float(p["ranker_days"])
    n_cand = int(p["ranker_candidates"])
    past = before(inter, days)
    early = type(model)(model.rules, model.random_state, **{**p, "ranker_days": 0.0})
    early.fit(past)
    ctx = early.context
    recent = (inter.kind == PURCHASE) & (inter.age_days < days)
    recent &= ctx.catalogue.is_product[inter.item]
    has_past = np.diff(ctx.profile.indptr) > 0
    recent &= has_past[inter.user]
    bought = sp.csr_matrix(
        (np.ones(int(recent.sum())), (inter.user[recent], inter.item[recent])),
        shape=(inter.n_users, inter.n_items),
    )
    bought.sum_duplicates()
    rows = np.flatnonzero(np.diff(bought.indptr) > 0).astype(np.int64)
    out: dict[str, tuple[FloatArray, np.ndarray, np.ndarray]] = {}
    if len(rows) < 10:
        return out
    segments = ctx.segments_for(rows)
    comps = early.components(rows, segments)
    total, _ = early._blend(rows, segments, comps)
    product = ctx.catalogue.is_product[None, :]
    seen = ctx.seen[rows].toarray() > 0
    truth = bought[rows].toarray() > 0
    cold = ctx.n_orders[rows] <= int(p["cold_orders"])
    for mode in MODES:
        allowed = product & ~seen if mode == "new" else np.broadcast_to(product, seen.shape)
        cand = candidates(total, allowed, n_cand)
        y = truth[np.arange(len(rows))[:, None], cand].reshape(-1)
        if mode == "new":
            y &= ~seen[np.arange(len(rows))[:, None], cand].reshape(-1)
        X = features(early, rows, segments, comps, cand, components)
        out[mode] = (X, y, np.repeat(cold, cand.shape[1]))
    return out


def _learn(name: str, X: FloatArray, y: np.ndarray, c: float) -> dict[str, FloatArray]:
    """The standardised logistic regression of ``y`` on ``X`` as arrays prefixed ``name``
    (none when ``y`` has one class only)."""
    if not len(y) or y.all() or not y.any():
        return {}
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    lr = LogisticRegression(C=c, max_iter=2000)
    lr.fit((X - mean) / scale, y)
    return {
        f"{name}_mean": mean,
        f"{name}_scale": scale,
        f"{name}_coef": lr.coef_.ravel().astype(np.float64),
        f"{name}_intercept": np.asarray(lr.intercept_, dtype=np.float64),
    }


def rerank(
    model: HybridRecommender,
    rows: IntArray,
    segments: IntArray,
    comps: dict[str, FloatArray],
    total: FloatArray,
    ranker: dict[str, FloatArray],
    mode: str,
    components: tuple[str, ...],
) -> FloatArray:
    """``total`` with the top ``ranker_candidates`` items moved above the rest and ordered by the
    re-ranker's probability (in [2, 3]; the others keep their blend order, scaled into [0, 1))."""
    ctx = model.context
    if len(ranker[f"{mode}_coef"]) != len(feature_names(components)):
        return total  # a ranker stored with other features: the blend alone
    allowed = np.broadcast_to(ctx.catalogue.is_product[None, :], total.shape)
    if mode.startswith("new"):
        safe = np.where(rows >= 0, rows, 0)
        allowed = allowed & ~(ctx.seen[safe].toarray() > 0)
    cand = candidates(total, allowed, int(model.params["ranker_candidates"]))
    X = features(model, rows, segments, comps, cand, components)
    z = ((X - ranker[f"{mode}_mean"]) / ranker[f"{mode}_scale"]) @ ranker[f"{mode}_coef"]
    prob = 1.0 / (1.0 + np.exp(-(z + ranker[f"{mode}_intercept"][0])))
    top = np.maximum(total.max(axis=1, keepdims=True), 1e-12)
    out = np.clip(total, 0.0, None) / (top * 1.0001)
    out[np.arange(len(rows))[:, None], cand] = 2.0 + prob.reshape(cand.shape)
    return out


def state(ranker: dict[str, FloatArray]) -> dict[str, Any]:
    """The ranker's arrays for ``np.savez`` (prefixed ``ranker_``)."""
    return {f"ranker_{k}": v for k, v in ranker.items()}


def from_state(z: Any) -> dict[str, FloatArray]:
    """The ranker saved by :func:`state` (empty when the file has none)."""
    return {
        k[len("ranker_") :]: np.asarray(z[k], dtype=np.float64)
        for k in z
        if str(k).startswith("ranker_") and not str(k).startswith("ranker_days")
    }
