"""Matrix factorisation with ``implicit``'s ALS, events weighted by type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from automation.errors import ValidationError
from automation.recommend.base import DECIMALS, Recommender
from automation.recommend.data import FloatArray, IntArray, Interactions
from automation.recommend.topk import FactorTopN, Mask, factor_top_n


class ALSRecommender(Recommender):
    """Implicit-feedback ALS (Hu, Koren, Volinsky) on the type-weighted interaction matrix.

    Parameters
    ----------
    factors, regularization, alpha, iterations : as in ``implicit``
        Confidence is ``alpha`` times the weighted count (views 1, carts 3, purchases 5, ...).
    num_threads : int
        ``implicit``'s threads (keep at 1-2 on small machines; BLAS runs single-threaded).
    """

    name = "als"
    defaults = {
        "factors": 64,
        "regularization": 0.1,
        "alpha": 0.5,
        "iterations": 15,
        "num_threads": 1,
    }

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        for key in ("factors", "iterations", "num_threads"):
            if int(p[key]) < 1:
                raise ValidationError(f"{key}={p[key]} should be >= 1")
        for key in ("regularization", "alpha"):
            if float(p[key]) <= 0:
                raise ValidationError(f"{key}={p[key]} should be > 0")

    def _solver(self) -> AlternatingLeastSquares:
        p = self.params
        return AlternatingLeastSquares(
            factors=int(p["factors"]),
            regularization=float(p["regularization"]),
            alpha=float(p["alpha"]),
            iterations=int(p["iterations"]),
            random_state=self.random_state,
            num_threads=int(p["num_threads"]),
            calculate_training_loss=False,
        )

    def _fit(self, interactions: Interactions) -> None:
        model = self._solver()
        with threadpool_limits(limits=1, user_api="blas"):
            model.fit(self.context.profile.astype(np.float32), show_progress=False)
        self.user_factors_ = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)

    def _scores(self, rows: IntArray, segments: IntArray) -> FloatArray:
        safe = np.where(rows >= 0, rows, 0)
        U = self.user_factors_[safe].astype(np.float64)
        U[rows < 0] = 0.0
        return U @ self.item_factors_.T.astype(np.float64)

    def _rank(
        self,
        rows: IntArray,
        n: int,
        filter_seen: bool,
        exclude: Sequence[str] | None,
        segments: IntArray | None,
    ) -> tuple[IntArray, FloatArray, NDArray[np.bool_]]:
        """The plain ranking's answer, fast (:mod:`automation.recommend.topk`): known users in
        float32 blocks with exact float64 rescoring of their candidates; unknown, cold or
        not provably exact rows (and lists with a category cap) go the plain way."""
        ctx = self.context
        rows = np.asarray(rows, dtype=np.int64)
        capped = self.rules.max_per_category is not None and bool(
            (ctx.catalogue.categories != "").any()
        )
        if n < 1 or capped or not len(rows):
            return super()._rank(rows, n, filter_seen, exclude, segments)
        known = np.flatnonzero(rows >= 0)
        masks = []
        if filter_seen:
            masks.append(Mask(ctx.seen.tocsr()))
        if self.rules.exclude_refunded:
            masks.append(Mask(ctx.refunded.tocsr()))
        if self.rules.recent_days > 0:
            masks.append(Mask(ctx.last_age.tocsr(), upto=self.rules.recent_days + 1.0))
        idx, sc, todo = factor_top_n(
            self._fast_model(), rows[known], n, self._global_ban(exclude), masks, DECIMALS
        )
        out_i = np.full((len(rows), n), -1, dtype=np.int64)
        out_s = np.zeros((len(rows), n), dtype=np.float64)
        cold = np.zeros(len(rows), dtype=bool)
        out_i[known], out_s[known] = idx, sc
        slow = np.ones(len(rows), dtype=bool)
        slow[known] = todo
        if slow.any():
            pick = np.flatnonzero(slow)
            segs = None if segments is None else np.asarray(segments, np.int64)[pick]
            i2, s2, c2 = super()._rank(rows[pick], n, filter_seen, exclude, segs)
            out_i[pick], out_s[pick], cold[pick] = i2, s2, c2
        return out_i, out_s, cold

    def _fast_model(self) -> FactorTopN:
        """The item side for :func:`factor_top_n`, rebuilt when the factors change."""
        pop = self.context.popularity
        key = (self.user_factors_, self.item_factors_, pop)
        cached = getattr(self, "_fast", None)
        if cached is None or any(a is not b for a, b in zip(cached[0], key, strict=True)):
            bias = 1e-6 * pop / max(float(pop.max(initial=0.0)), 1e-12)
            cached = (key, FactorTopN.build(self.user_factors_, self.item_factors_, bias))
            self._fast: tuple[tuple[Any, ...], FactorTopN] | None = cached
        return cached[1]

    def _reasons(self, rows: IntArray, segments: IntArray, items: IntArray) -> list[list[str]]:
        ctx = self.context
        V = self.item_factors_.astype(np.float64)
        V = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
        prof = ctx.profile_rows(rows)
        out: list[list[str]] = []
        for k in range(items.shape[0]):
            mine = prof[k].indices
            row: list[str] = []
            for i in items[k].tolist():
                if i < 0 or not len(mine):
                    row.append("matches your taste")
                    continue
                sims = V[mine] @ V[i]
                j = int(mine[int(np.argmax(sims))])
                row.append(f"matches your taste for {ctx.catalogue.names[j]}")
            out.append(row)
        return out

    def _item_similarity(self, item: int) -> FloatArray:
        V = self.item_factors_.astype(np.float64)
        norms = np.maximum(np.linalg.norm(V, axis=1), 1e-12)
        return (V @ V[item]) / (norms * norms[item])

    def _refresh_users(self, rows: IntArray) -> None:
        model = self._solver()
        model.item_factors = self.item_factors_
        n = self.context.n_users
        if len(self.user_factors_) < n:
            grow = np.zeros((n - len(self.user_factors_), self.user_factors_.shape[1]))
            self.user_factors_ = np.vstack([self.user_factors_, grow.astype(np.float32)])
        with threadpool_limits(limits=1, user_api="blas"):
            fresh = model.recalculate_user(rows, self.context.profile[rows].astype(np.float32))
        self.user_factors_[rows] = np.asarray(fresh, dtype=np.float32)
        self._fast = None

    def _state(self) -> dict[str, Any]:
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_}

    def _set_state(self, z: Mapping[str, Any]) -> None:
        self.user_factors_ = z["user_factors"].astype(np.float32)
        self.item_factors_ = z["item_factors"].astype(np.float32)
