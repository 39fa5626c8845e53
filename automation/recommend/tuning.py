"""Tuning every model on a validation window (never on the test window).

Each model's parameter grid is fitted on the events before the validation split and scored on
the purchases in the validation window, under each protocol; the objective is the mean of NDCG@K
over all users and over cold users (the same objective for every model). The hybrid's blend
weights are tuned by coordinate ascent on one fit (its components computed once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from automation.recommend.base import Recommender, Rules
from automation.recommend.data import IntArray
from automation.recommend.hybrid import COMPONENTS, TREND_HALF_LIVES, HybridRecommender
from automation.recommend.metrics import ranking_metrics
from automation.recommend.registry import make_recommender
from automation.recommend.rerank import RANKERS
from automation.recommend.splits import PROTOCOLS, ProtocolData, SplitData

Progress = Callable[[str], None]

GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{"popularity_half_life": v} for v in (7.0, 14.0, 30.0, 90.0, None)],
    "segment-popularity": [
        {"popularity_half_life": hl, "global_weight": g}
        for hl in (14.0, 30.0, 90.0, None)
        for g in (0.0, 0.5)
    ],
    "item-knn": [
        {"similarity": "cosine", "k": k, "shrink": sh, "half_life": hl}
        for k in (50, 200, 500)
        for sh in (0.0, 10.0)
        for hl in (None, 90.0)
    ]
    + [
        {"similarity": "bm25", "k": k, "half_life": hl}
        for k in (50, 200, 500)
        for hl in (None, 90.0)
    ],
    "als": [
        {"factors": f, "regularization": r, "alpha": a}
        for f in (32, 64, 128)
        for r in (0.01, 0.1, 1.0)
        for a in (0.1, 0.25, 0.5, 1.0, 4.0)
    ],
    "content": [{"k": k, "half_life": hl} for k in (20, 50) for hl in (None, 90.0)],
    "ease": [
        {"lam": lam, "half_life": hl} for lam in (100.0, 300.0, 1000.0) for hl in (None, 90.0)
    ],
    "hybrid": [{"half_life": hl, "ranker_days": 30.0} for hl in (None, 90.0)],
}
HYBRID_STEPS: dict[str, tuple[float | str, ...]] = {
    "w_repeat": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    **{f"w_{c}": (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0) for c in COMPONENTS if c != "repeat"},
    "trend_half_life": TREND_HALF_LIVES,
    "history": ("items", "orders"),
    "rerank": ("none", "new", "all"),
    "shrink": (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0),
    "gamma": (0.0, 0.25, 0.5, 1.0),
}
HYBRID_PASSES = 2
# The coordinate ascent is greedy: from the defaults it tunes the blend first, and a re-ranker
# trained on other candidates may then lose to it; a second ascent (one pass) starts with it on.
RERANK_START = {"repeat": "all", "new-items": "new"}


@dataclass
class Tuned:
    """The chosen parameters of one model under one protocol, and their validation score."""

    model: str
    protocol: str
    params: dict[str, Any]
    objective: float
    tried: int
    table: list[dict[str, Any]] = field(default_factory=list)


def objective(model: Recommender, data: ProtocolData, protocol: str, k: int) -> float:
    """Mean of NDCG@k over all users and over cold users (all users' if none is cold)."""
    if not len(data.rows):
        return 0.0
    recs, _ = model.recommend_indices(data.rows, k, filter_seen=protocol == "new-items")
    scores = ranking_metrics(recs, data.truth, k)
    every = float(scores.ndcg.mean())
    cold = float(scores.ndcg[data.cold].mean()) if data.cold.any() else every
    return (every + cold) / 2.0


def tune(
    name: str,
    val: SplitData,
    k: int,
    rules: Rules,
    seed: int = 0,
    progress: Progress | None = None,
    als: dict[str, Tuned] | None = None,
) -> dict[str, Tuned]:
    """The best parameters of ``name`` under each protocol on the validation split.

    ``als``: the ALS baseline's tuned parameters, which the hybrid's ALS component tries.
    """
    say = progress or (lambda _m: None)
    if name == "hybrid":
        return _tune_hybrid(val, k, rules, seed, say, als)
    best: dict[str, Tuned] = {}
    for params in GRIDS.get(name, [{}]):
        model = make_recommender(name, rules, seed, **params).fit(val.train)
        for proto in PROTOCOLS:
            score = objective(model, val.protocol(proto), proto, k)
            say(f"tune {name} {proto} {params}: {score:.4f}")
            _keep(best, Tuned(name, proto, dict(params), score, 1))
    return best


def _keep(best: dict[str, Tuned], t: Tuned) -> bool:
    """Record ``t`` in ``best`` (per protocol); True when it is the new best."""
    row = {"params": t.params, "objective": round(t.objective, 6)}
    prev = best.get(t.protocol)
    if prev is None:
        best[t.protocol] = Tuned(t.model, t.protocol, t.params, t.objective, t.tried, [row])
        return True
    prev.table.append(row)
    prev.tried += t.tried
    if t.objective > prev.objective + 1e-12:
        prev.params, prev.objective = dict(t.params), t.objective
        return True
    return False


def _als_options(als: dict[str, Tuned] | None) -> list[dict[str, Any]]:
    if not als:
        return [{}]
    out: list[dict[str, Any]] = []
    for t in als.values():
        option = {f"als_{key}": t.params[key] for key in ("factors", "regularization", "alpha")}
        if option not in out:
            out.append(option)
    return out


def _tune_hybrid(
    val: SplitData, k: int, rules: Rules, seed: int, say: Progress, als: dict[str, Tuned] | None
) -> dict[str, Tuned]:
    """Weights by coordinate ascent on the first structure (profile decay, ALS settings), from
    the defaults and from the defaults with the re-ranker on (the better one is kept); the other
    structures are scored with those weights; one more ascent pass on the best one."""
    best: dict[str, Tuned] = {}
    leader: dict[str, HybridRecommender] = {}
    weights: dict[str, dict[str, Any]] = {}
    structures = [{**g, **a} for g in GRIDS["hybrid"] for a in _als_options(als)]
    for params in structures:
        fit_params = {
            **params,
            **{f"w_{c}": 0.1 for c in ("als", "ease", "early", "segtrend", "segrepeat")},
        }
        model = make_recommender("hybrid", rules, seed, **fit_params).fit(val.train)
        assert isinstance(model, HybridRecommender)
        for proto in PROTOCOLS:
            data = val.protocol(proto)
            if proto not in weights:
                chosen, score, tried = _ascend(model, data, proto, k, params, HYBRID_PASSES)
                mode = RERANK_START[proto]
                if f"{mode}_coef" in model.ranker_:  # a second start, with the re-ranker on
                    start = {key: model.params[key] for key in HYBRID_STEPS} | {"rerank": mode}
                    other = _ascend(model, data, proto, k, params, 1, start)
                    say(f"tune hybrid {proto} (start: rerank {mode}) {other[0]}: {other[1]:.4f}")
                    tried += other[2]
                    if other[1] > score + 1e-9:
                        chosen, score = other[0], other[1]
            else:
                chosen, score, tried = _ascend(model, data, proto, k, params, 0, weights[proto])
            say(f"tune hybrid {proto} {chosen}: {score:.4f}")
            weights.setdefault(proto, {key: chosen[key] for key in HYBRID_STEPS})
            if _keep(best, Tuned("hybrid", proto, chosen, score, tried)):
                leader[proto] = model
    for proto in PROTOCOLS:
        t = best[proto]
        structure = {key: v for key, v in t.params.items() if key not in HYBRID_STEPS}
        start = {key: t.params[key] for key in HYBRID_STEPS}
        chosen, score, tried = _ascend(
            leader[proto], val.protocol(proto), proto, k, structure, 1, start
        )
        say(f"tune hybrid {proto} {chosen}: {score:.4f}")
        _keep(best, Tuned("hybrid", proto, chosen, score, tried))
        t = best[proto]
        cold, tried = _ascend_cold(leader[proto], val.protocol(proto), proto, k, t.params)
        if cold is not None:
            with_cold = {**t.params, "cold": cold}
            score = _score_with(leader[proto], val.protocol(proto), proto, k, with_cold)
            say(f"tune hybrid {proto} cold {cold}: {score:.4f}")
            _keep(best, Tuned("hybrid", proto, with_cold, score, tried))
    return best


def _ascend_cold(
    model: HybridRecommender, data: ProtocolData, protocol: str, k: int, chosen: dict[str, Any]
) -> tuple[dict[str, Any] | None, int]:
    """The blend parameters that differ for cold customers: a coordinate ascent on the
    validation window's cold customers alone, from everyone's. Kept only when it generalises
    within the window: the ascent on either half of the cold customers must beat everyone's
    parameters on the other half (``None``: no change, none cold, or no gain held out)."""
    if not data.cold.any():
        return None, 0
    idx = np.flatnonzero(data.cold)
    start = {key: chosen[key] for key in HYBRID_STEPS}
    fixed = {key: v for key, v in chosen.items() if key not in HYBRID_STEPS}
    steps = {**HYBRID_STEPS, "rerank": ("none", *RANKERS)}
    mode = f"{RERANK_START[protocol]}-cold"
    tried = 0

    def users(rows: IntArray) -> ProtocolData:
        return ProtocolData(data.rows[rows], data.truth[rows], data.cold[rows], data.segments[rows])

    def search(sub: ProtocolData) -> dict[str, Any]:
        nonlocal tried
        found, score, n = _ascend(model, sub, protocol, k, fixed, HYBRID_PASSES, start, steps)
        tried += n
        if f"{mode}_coef" in model.ranker_:  # a second start, with the cold ranker on
            other = _ascend(model, sub, protocol, k, fixed, 1, start | {"rerank": mode}, steps)
            tried += other[2]
            if other[1] > score + 1e-9:
                found = other[0]
        return {key: found[key] for key in HYBRID_STEPS}

    def held_out_gain(fit: IntArray, check: IntArray) -> bool:
        found, sub = search(users(fit)), users(check)
        score = _score_with(model, sub, protocol, k, found)
        return score > _score_with(model, sub, protocol, k, start) + 1e-9

    with model.using({"cold": None}):
        found = search(users(idx))
        changed = {key: found[key] for key in HYBRID_STEPS if found[key] != start[key]}
        if changed and len(idx) >= 2:
            halves = np.array_split(np.random.default_rng(0).permutation(idx), 2)
            if not all(held_out_gain(a, b) for a, b in (halves, halves[::-1])):
                changed = {}
    return changed or None, tried


def _score_with(
    model: HybridRecommender, data: ProtocolData, protocol: str, k: int, params: dict[str, Any]
) -> float:
    """The validation objective of ``model`` with ``params`` set for the call."""
    with model.using(params), model.memoize():
        return objective(model, data, protocol, k)


def _ascend(
    model: HybridRecommender,
    data: ProtocolData,
    protocol: str,
    k: int,
    fixed: dict[str, Any],
    passes: int,
    start: dict[str, Any] | None = None,
    steps: dict[str, tuple[float | str, ...]] = HYBRID_STEPS,
) -> tuple[dict[str, Any], float, int]:
    """Coordinate ascent over the hybrid's blend weights, shrink and gamma (``steps``)."""
    current = dict(start) if start is not None else {key: model.params[key] for key in HYBRID_STEPS}
    tried = 1
    with model.using(current), model.memoize():
        best = objective(model, data, protocol, k)
        for _ in range(passes):
            improved = False
            for key, values in steps.items():
                for v in values:
                    if v == current[key]:
                        continue
                    model.params.update({**current, key: v})
                    score = objective(model, data, protocol, k)
                    tried += 1
                    if score > best + 1e-9:
                        best, current, improved = score, {**current, key: v}, True
                model.params.update(current)
            if not improved:
                break
    chosen = {**fixed, **{k: v if isinstance(v, str) else float(v) for k, v in current.items()}}
    return chosen, float(np.round(best, 12)), tried
