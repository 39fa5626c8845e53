"""Matrix factorisation with ``implicit``'s ALS, events weighted by type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from automation.errors import ValidationError
from automation.recommend.base import Recommender
from automation.recommend.data import FloatArray, IntArray, Interactions


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

    def _state(self) -> dict[str, Any]:
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_}

    def _set_state(self, z: Mapping[str, Any]) -> None:
        self.user_factors_ = z["user_factors"].astype(np.float32)
        self.item_factors_ = z["item_factors"].astype(np.float32)
