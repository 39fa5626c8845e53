"""The segment-aware hybrid: the user's own signal, blended with their segment's prior.

For user ``u`` with ``n_u`` distinct items in their (recency-decayed) history and segment ``s``:

``own(u, i)``
    ``w_repeat * repeat + w_cf * cf + w_basket * basket + w_content * content + w_next * next +
    w_ease * ease + w_als * als``, each component scaled so that the user's best item scores 1:
    the user's own items (``repeat``), co-purchase neighbours over users (``cf``), co-occurrence
    within orders (``basket``), TF-IDF neighbours of the item texts (``content``), what customers
    bought in their next orders after the user's items (``next``) and EASE weights (``ease``),
    both read from the user's items weighted by recency (``anchor_half_life``: the last basket
    counts 1), and ALS; and ``w_segrepeat * segrepeat``: the user's own items, each weighted by
    how often the user's segment buys it again (:func:`~automation.recommend.priors.repeat_rates`,
    smoothed with ``repeat_smooth`` pseudo-buyers) and by the square root of its trend (what is
    selling now gets bought again now). A component is fitted only when its weight is positive.
``prior(s, i)``
    ``w_segment * segment + w_trend * trend``: the segment's time-decayed popularity and the
    global popularity over the last days (``trend_half_life``, one of ``TREND_HALF_LIVES``, all
    fitted, so tuning chooses among them), each scaled to a maximum of 1.
``score``
    ``own + shrink / (n_u + shrink) * prior``: the less history, the more the segment decides
    (``shrink = 0`` adds the prior at full weight for everyone). Then segment-conditioned
    re-ranking multiplies by ``lift ** gamma``, where ``lift`` is how much more the segment buys the
    item than everyone does (smoothed, clipped to [1/4, 4]).

``cold``
    ``None``, or the blend parameters (weights, ``shrink``, ``gamma``, ``history``, ``rerank``,
    ``trend_half_life``) that replace the others for a customer with at most ``cold_orders``
    orders: tuned on the validation window's cold customers alone, after everyone's.

Users the model has never seen, or with no history, get the prior alone: their (provisional)
segment's popularity and the trend. Every weight is tuned on a validation window before the
evaluation split (:mod:`automation.recommend.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from automation.errors import ValidationError
from automation.recommend import rerank as rerank_module
from automation.recommend.als import ALSRecommender
from automation.recommend.base import BATCH_ROWS, Recommender
from automation.recommend.content import item_texts
from automation.recommend.context import NO_SEGMENT, csr_arrays, csr_from, distinct_user_popularity
from automation.recommend.data import FloatArray, IntArray, Interactions
from automation.recommend.ease import ease_weights
from automation.recommend.hybrid_reasons import reasons
from automation.recommend.priors import early_orders, repeat_rates, rows_for, segment_trend
from automation.recommend.sequence import recent_profile, transition_similarity
from automation.recommend.similarity import (
    cooccurrence_similarity,
    row_max_normalise,
    text_similarity,
)

COMPONENTS = (
    "repeat",
    "cf",
    "basket",
    "content",
    "next",
    "ease",
    "als",
    "segment",
    "trend",
    "early",
    "segtrend",
    "segrepeat",
)
PRIOR = ("segment", "trend", "early", "segtrend")
LIFT_CLIP = 4.0
TREND_HALF_LIVES = (2.0, 7.0, 14.0)  # fitted side by side, so tuning can choose among them
COLD_KEYS = (  # what ``cold`` may set for cold customers
    *(f"w_{c}" for c in COMPONENTS),
    "shrink",
    "gamma",
    "history",
    "rerank",
    "trend_half_life",
)


class HybridRecommender(Recommender):
    """Segment-aware hybrid (see the module docstring for the formula and every parameter)."""

    name = "hybrid"
    defaults = {
        "w_repeat": 0.5,
        "w_cf": 1.0,
        "w_basket": 0.1,
        "w_content": 0.5,
        "w_next": 0.25,
        "w_ease": 0.0,
        "w_als": 1.0,
        "w_segment": 0.25,
        "w_trend": 0.25,
        "w_early": 0.0,
        "w_segtrend": 0.0,
        "w_segrepeat": 0.0,
        "shrink": 10.0,
        "history": "items",
        "early_half_life": 90.0,
        "early_rank": 3,
        "prior_smooth": 50.0,
        "repeat_smooth": 10.0,
        "rerank": "none",
        "ranker_days": 0.0,
        "ranker_candidates": 100,
        "ranker_c": 1.0,
        "ranker_windows": 1,
        "gamma": 0.0,
        "cf_k": 200,
        "basket_k": 100,
        "content_k": 50,
        "next_k": 100,
        "next_gap": 2,
        "ease_lambda": 300.0,
        "ease_k": 200,
        "anchor_half_life": 90.0,
        "trend_half_life": 14.0,
        "segtrend_half_life": 14.0,
        "als_factors": 64,
        "als_regularization": 0.1,
        "als_alpha": 0.25,
        "num_threads": 1,
        "cold": None,
        "cold_orders": 2,
    }

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        for c in COMPONENTS:
            if float(p[f"w_{c}"]) < 0:
                raise ValidationError(f"w_{c}={p[f'w_{c}']} should be >= 0")

        for key in ("shrink", "gamma"):
            if float(p[key]) < 0:
                raise ValidationError(f"{key}={p[key]} should be >= 0")
        for key in ("cf_k", "basket_k", "content_k", "next_k", "next_gap", "ease_k", "als_factors"):
            if int(p[key]) < 1:
                raise ValidationError(f"{key}={p[key]} should be >= 1")
        if float(p["ease_lambda"]) <= 0:
            raise ValidationError(f"ease_lambda={p['ease_lambda']} should be > 0")
        if int(p["num_threads"]) < 1:
            raise ValidationError(f"num_threads={p['num_threads']} should be >= 1")
        for key in ("anchor_half_life", "early_half_life"):
            if p[key] is not None and float(p[key]) <= 0:
                raise ValidationError(f"{key}={p[key]} should be > 0 (or None)")
        if p["history"] not in ("items", "orders"):
            raise ValidationError(f"history={p['history']!r} should be 'items' or 'orders'")
        if p["rerank"] not in ("none", *rerank_module.RANKERS):
            raise ValidationError(f"rerank={p['rerank']!r} should be one of 'none', 'new', 'all'")
        if float(p["ranker_days"]) < 0:
            raise ValidationError(f"ranker_days={p['ranker_days']} should be >= 0 (0: no ranker)")
        if int(p["ranker_windows"]) < 1:
            raise ValidationError(f"ranker_windows={p['ranker_windows']} should be >= 1")
        if int(p["ranker_candidates"]) < 1:
            raise ValidationError(f"ranker_candidates={p['ranker_candidates']} should be >= 1")
        if float(p["ranker_c"]) <= 0:
            raise ValidationError(f"ranker_c={p['ranker_c']} should be > 0")
        if int(p["early_rank"]) < 2:
            raise ValidationError(f"early_rank={p['early_rank']} should be >= 2")
        for key in ("prior_smooth", "repeat_smooth"):
            if float(p[key]) < 0:
                raise ValidationError(f"{key}={p[key]} should be >= 0")
        for key in ("trend_half_life", "segtrend_half_life"):
            if float(p[key]) <= 0:
                raise ValidationError(f"{key}={p[key]} should be > 0")
        if int(p["cold_orders"]) < 0:
            raise ValidationError(f"cold_orders={p['cold_orders']} should be >= 0")
        cold = p["cold"]
        if cold is not None:
            if not isinstance(cold, Mapping) or set(cold) - set(COLD_KEYS):
                raise ValidationError(f"cold={cold!r} should be None or a dict of {COLD_KEYS}")
            type(self)(self.rules, self.random_state, **{**p, **cold, "cold": None})

    # ------------------------------------------------------------------ fitting
    def _fit(self, interactions: Interactions) -> None:
        p = self.params
        ctx = self.context
        empty = sp.csr_matrix((ctx.n_items, ctx.n_items))
        self.cf_ = (
            cooccurrence_similarity(interactions.weighted(p["weights"]), "cosine", int(p["cf_k"]))
            if self._wanted("cf")
            else empty
        )
        self.basket_ = (
            cooccurrence_similarity(interactions.baskets(), "cosine", int(p["basket_k"]))
            if self._wanted("basket") and (interactions.order >= 0).any()
            else empty
        )
        self.content_ = (
            text_similarity(item_texts(ctx.catalogue), int(p["content_k"]))
            if self._wanted("content")
            else empty
        )
        self.next_ = (
            transition_similarity(interactions, int(p["next_k"]), int(p["next_gap"]))
            if self._wanted("next")
            else empty
        )
        self.ease_ = (
            ease_weights(interactions.purchases(), float(p["ease_lambda"]), int(p["ease_k"]))
            if self._wanted("ease")
            else empty
        )
        self.trends_ = {
            hl: distinct_user_popularity(interactions, hl)
            for hl in sorted({*TREND_HALF_LIVES, float(p["trend_half_life"])})
        }
        self.lift_ = self._lift()
        n_seg = len(ctx.segment_ids)
        none = np.zeros((1 + n_seg, ctx.n_items))
        self.early_ = (
            early_orders(
                interactions,
                ctx.user_segment,
                n_seg,
                p["early_half_life"],
                int(p["early_rank"]),
                float(p["prior_smooth"]),
            )
            if self._wanted("early")
            else none
        )
        self.segtrend_ = (
            segment_trend(
                interactions,
                ctx.user_segment,
                n_seg,
                float(p["segtrend_half_life"]),
                float(p["prior_smooth"]),
            )
            if self._wanted("segtrend")
            else none
        )
        self.rates_ = (
            repeat_rates(interactions, ctx.user_segment, n_seg, float(p["repeat_smooth"]))
            if self._wanted("segrepeat") or float(p["ranker_days"]) > 0
            else none
        )
        self.als_: ALSRecommender | None = None
        self._memo: dict[bytes, Any] | None = None
        if self._wanted("als"):
            self.als_ = self._als_model()
            self.als_.context_ = ctx
            self.als_._fit(interactions)
        self.ranker_: dict[str, FloatArray] = {}
        if float(p["ranker_days"]) > 0:
            self.ranker_ = rerank_module.train(self, interactions, COMPONENTS)

    @property
    def trend_(self) -> FloatArray:
        """Distinct buyers per item, decayed with ``trend_half_life`` (among the fitted ones, the
        nearest)."""
        hl = float(self.params["trend_half_life"])
        return self.trends_[min(self.trends_, key=lambda h: (abs(h - hl), h))]

    def _wanted(self, component: str) -> bool:
        """Whether a component has weight, for everyone or for cold customers (so is fitted)."""
        key = f"w_{component}"
        cold = self.params["cold"] or {}
        return float(self.params[key]) > 0 or float(cold.get(key, 0.0)) > 0

    def _cold_rows(self, rows: IntArray) -> NDArray[np.bool_]:
        """The rows that get the ``cold`` parameters (none when there are none)."""
        if not self.params["cold"]:
            return np.zeros(len(rows), dtype=bool)
        safe = np.where(rows >= 0, rows, 0)
        orders = np.where(rows >= 0, self.context.n_orders[safe], 0)
        return (rows >= 0) & (orders <= int(self.params["cold_orders"]))

    @contextmanager
    def using(self, overrides: Mapping[str, Any] | None = None) -> Iterator[None]:
        """Within the block, ``params`` updated by ``overrides``; afterwards they are what they
        were before it, whatever the block set (tuning tries values in it)."""
        saved = dict(self.params)
        self.params.update(overrides or {})
        try:
            yield
        finally:
            self.params.clear()
            self.params.update(saved)

    def _cold_params(self) -> AbstractContextManager[None]:
        """Within the block, ``params`` are the cold customers' (``cold`` over the others)."""
        return self.using(self.params["cold"])

    def _als_model(self) -> ALSRecommender:
        p = self.params
        return ALSRecommender(
            self.rules,
            self.random_state,
            weights=p["weights"],
            half_life=p["half_life"],
            factors=int(p["als_factors"]),
            regularization=float(p["als_regularization"]),
            alpha=float(p["als_alpha"]),
            num_threads=int(p["num_threads"]),
        )

    def _lift(self) -> FloatArray:
        ctx = self.context
        counts = ctx.segment_counts
        if not len(counts):
            return np.ones((0, ctx.n_items))
        prior = 1.0
        seg_share = (counts + prior) / (counts.sum(axis=1, keepdims=True) + prior * ctx.n_items)
        total = counts.sum(axis=0)
        all_share = (total + prior) / (total.sum() + prior * ctx.n_items)
        return np.clip(seg_share / all_share[None, :], 1.0 / LIFT_CLIP, LIFT_CLIP)

    # ------------------------------------------------------------------ scoring
    @contextmanager
    def memoize(self) -> Iterator[None]:
        """Within the block, components are computed once per batch of users (for tuning the
        weights on the same users many times; the weights may change in between)."""
        self._memo = {}
        try:
            yield
        finally:
            self._memo = None

    def _answer_scope(self, n_rows: int) -> AbstractContextManager[None]:
        """One request's components serve both the ranking and the reasons (for at most one
        batch of rows, so a large batch keeps nothing; inside :meth:`memoize`, that one)."""
        if n_rows <= BATCH_ROWS and getattr(self, "_memo", None) is None:
            return self.memoize()
        return nullcontext()

    def _per_rows(
        self, name: str, rows: IntArray, make: Callable[[], sp.csr_matrix]
    ) -> sp.csr_matrix:
        """``make()``, kept for the rows while :meth:`memoize` is on (a request reads the same
        profile rows for its components, history, re-ranker and reasons)."""
        memo = getattr(self, "_memo", None)
        if memo is None:
            return make()
        key = name.encode() + b"|" + rows.tobytes()
        if key not in memo:
            memo[key] = make()
        return memo[key]

    def _profile(self, rows: IntArray) -> sp.csr_matrix:
        return self._per_rows("profile", rows, lambda: self.context.profile_rows(rows))

    def components(self, rows: IntArray, segments: IntArray) -> dict[str, FloatArray]:
        """Each fitted component's scores (rows x items), each row scaled to a maximum of 1."""
        memo = getattr(self, "_memo", None)
        key = (
            rows.tobytes()
            + b"|"
            + segments.tobytes()
            + repr(self.params["trend_half_life"]).encode()
        )
        if memo is not None and key in memo:
            return memo[key]
        ctx = self.context
        prof = self._profile(rows)
        out: dict[str, FloatArray] = {"repeat": row_max_normalise(prof.toarray())}
        for c, S in (("cf", self.cf_), ("basket", self.basket_), ("content", self.content_)):
            if S.nnz:
                out[c] = row_max_normalise(np.asarray((prof @ S).todense()))
        if self.next_.nnz or self.ease_.nnz:
            last = self._recent_rows(rows)
        if self.next_.nnz:
            out["next"] = row_max_normalise(np.asarray((last @ self.next_).todense()))
        if self.ease_.nnz:
            ease = np.maximum(np.asarray((last @ self.ease_).todense()), 0.0)
            out["ease"] = row_max_normalise(ease)
        if self.als_ is not None:
            out["als"] = row_max_normalise(np.maximum(self.als_._scores(rows, segments), 0.0))
        if len(ctx.segment_ids):
            seg = np.zeros((len(rows), ctx.n_items))
            for k, s in enumerate(segments.tolist()):
                if s != NO_SEGMENT:
                    v = ctx.segment_popularity[s]
                    seg[k] = v / max(float(v.max(initial=0.0)), 1e-12)
            out["segment"] = seg
        t = self.trend_ / max(float(self.trend_.max(initial=0.0)), 1e-12)
        out["trend"] = np.tile(t, (len(rows), 1))
        for name in ("early", "segtrend"):
            prior = getattr(self, f"{name}_")
            if prior.any():
                out[name] = rows_for(prior, segments)
        if self.rates_.any():
            rates = self.rates_[np.asarray(segments, dtype=np.int64) + 1] * np.sqrt(t)[None, :]
            out["segrepeat"] = row_max_normalise(prof.multiply(rates).toarray())
        if memo is not None:
            memo[key] = out
        return out

    def _recent_rows(self, rows: IntArray) -> sp.csr_matrix:
        """The users' bought items weighted by recency (1 for the last basket; unknown: none)."""
        return self._per_rows("recent", rows, lambda: self._make_recent_rows(rows))

    def _make_recent_rows(self, rows: IntArray) -> sp.csr_matrix:
        ctx = self.context
        safe = np.where(rows >= 0, rows, 0)
        sub = ctx.last_age[safe]
        if (rows < 0).any():
            sub = sp.csr_matrix(sp.diags((rows >= 0).astype(np.float64)) @ sub)
            sub.eliminate_zeros()
        return recent_profile(sub, self.params["anchor_half_life"])

    def _history(self, rows: IntArray) -> FloatArray:
        """How much the user has: distinct items, or orders (``history``); 0 when unknown."""
        prof = self._profile(rows)
        items = np.diff(prof.indptr).astype(np.float64)
        if self.params["history"] != "orders":
            return items
        safe = np.where(rows >= 0, rows, 0)
        orders = np.where(rows >= 0, self.context.n_orders[safe], 0).astype(np.float64)
        return np.where(items > 0, np.maximum(orders, 1.0), 0.0)

    def _blend(
        self,
        rows: IntArray,
        segments: IntArray,
        comps: dict[str, FloatArray],
        keep_parts: bool = False,
    ) -> tuple[FloatArray, dict[str, FloatArray]]:
        """The weighted sum (re-ranked by segment lift) and, if asked, each weighted part."""
        p = self.params
        shrink = float(p["shrink"])
        n_u = self._history(rows)
        h = shrink / (n_u + shrink) if shrink > 0 else np.ones(len(rows))
        h = np.where(n_u > 0, h, 1.0)[:, None]
        parts: dict[str, FloatArray] = {}
        total = np.zeros((len(rows), self.context.n_items))
        for c, M in comps.items():
            w = float(p[f"w_{c}"])
            if w <= 0:
                continue
            part = M * (w * h) if c in PRIOR else M * w
            total += part
            if keep_parts:
                parts[c] = part
        gamma = float(p["gamma"])
        if gamma > 0 and len(self.lift_):
            for s in np.unique(segments[segments != NO_SEGMENT]).tolist():
                mask = segments == s
                total[mask] *= self.lift_[s] ** gamma
        return total, parts

    def _scores(self, rows: IntArray, segments: IntArray) -> FloatArray:
        cold = self._cold_rows(rows)
        if not cold.any():
            return self._scores_with(rows, segments)
        total = np.zeros((len(rows), self.context.n_items))
        if (~cold).any():
            total[~cold] = self._scores_with(rows[~cold], segments[~cold])
        with self._cold_params():
            total[cold] = self._scores_with(rows[cold], segments[cold])
        return total

    def _scores_with(self, rows: IntArray, segments: IntArray) -> FloatArray:
        """:meth:`_scores` with the parameters in force for every row."""
        comps = self.components(rows, segments)
        total, _ = self._blend(rows, segments, comps)
        known = (rows >= 0) & (self._history(rows) > 0)
        mode = str(self.params["rerank"])
        ranker = getattr(self, "ranker_", {})
        if mode != "none" and f"{mode}_coef" in ranker and known.any():
            k = np.flatnonzero(known)
            sub = {c: M[k] for c, M in comps.items()}
            total[k] = rerank_module.rerank(
                self, rows[k], segments[k], sub, total[k], ranker, mode, COMPONENTS
            )
        total[~known] = 0.0  # no history: the base class's prior (segment, else global)
        return total

    def prior_scores(self, segments: IntArray) -> FloatArray:
        """Cold start: the segment's popularity and the trend, weighted as tuned."""
        rows = np.full(len(segments), -1, dtype=np.int64)
        comps = {c: M for c, M in self.components(rows, segments).items() if c in PRIOR}
        if not comps:
            return super().prior_scores(segments)
        total, _ = self._blend(rows, segments, comps)
        empty = ~(total > 0).any(axis=1)
        if empty.any():
            total[empty] = super().prior_scores(segments[empty])
        return total

    # ------------------------------------------------------------------ explaining
    def _reasons(self, rows: IntArray, segments: IntArray, items: IntArray) -> list[list[str]]:
        cold = self._cold_rows(rows)
        if not cold.any():
            return reasons(self, rows, segments, items)
        out: list[list[str]] = [[] for _ in range(len(rows))]
        for mask in (~cold, cold):
            if not mask.any():
                continue
            with self._cold_params() if mask is cold else nullcontext():
                part = reasons(self, rows[mask], segments[mask], items[mask])
            for k, row in zip(np.flatnonzero(mask).tolist(), part, strict=True):
                out[k] = row
        return out

    def _item_similarity(self, item: int) -> FloatArray:
        p = self.params
        out = np.zeros(self.context.n_items)
        for w, S in ((p["w_cf"], self.cf_), (p["w_basket"], self.basket_)):
            if w > 0:
                out += float(w) * np.asarray(S[item].todense()).ravel()
        if self._wanted("content"):
            out += float(p["w_content"]) * np.asarray(self.content_[item].todense()).ravel()
        return out

    # ------------------------------------------------------------------ updates, persistence
    def _refresh_users(self, rows: IntArray) -> None:
        self._memo = None if self._memo is None else {}
        if self.als_ is not None:
            self.als_.context_ = self.context
            self.als_._refresh_users(rows)

    def _state(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trend_half_lives": np.array(sorted(self.trends_), dtype=np.float64),
            "trends": np.vstack([self.trends_[hl] for hl in sorted(self.trends_)]),
            "lift": self.lift_,
            "early": self.early_,
            "segtrend": self.segtrend_,
            "rates": self.rates_,
            **rerank_module.state(self.ranker_),
        }
        for name in ("cf", "basket", "content", "next", "ease"):
            out.update(csr_arrays(name, getattr(self, f"{name}_")))
        if self.als_ is not None:
            out["als_user_factors"] = self.als_.user_factors_
            out["als_item_factors"] = self.als_.item_factors_
        return out

    def _set_state(self, z: Mapping[str, Any]) -> None:
        if "trends" in z:
            hls = z["trend_half_lives"].astype(np.float64).tolist()
            self.trends_ = dict(zip(hls, z["trends"].astype(np.float64), strict=True))
        else:
            self.trends_ = {float(self.params["trend_half_life"]): z["trend"].astype(np.float64)}
        self.lift_ = z["lift"].astype(np.float64)
        none = np.zeros((1 + len(self.context.segment_ids), self.context.n_items))
        self.early_ = z["early"].astype(np.float64) if "early" in z else none
        self.segtrend_ = z["segtrend"].astype(np.float64) if "segtrend" in z else none
        self.rates_ = z["rates"].astype(np.float64) if "rates" in z else none
        self.ranker_ = rerank_module.from_state(z)
        self.cf_ = csr_from(z, "cf")
        self.basket_ = csr_from(z, "basket")
        self.content_ = csr_from(z, "content")
        n = self.context.n_items
        self.next_ = csr_from(z, "next") if "next__shape" in z else sp.csr_matrix((n, n))
        self.ease_ = csr_from(z, "ease") if "ease__shape" in z else sp.csr_matrix((n, n))
        self.als_ = None
        self._memo = None
        if "als_user_factors" in z:
            self.als_ = self._als_model()
            self.als_.context_ = self.context
            self.als_._set_state(
                {"user_factors": z["als_user_factors"], "item_factors": z["als_item_factors"]}
            )
