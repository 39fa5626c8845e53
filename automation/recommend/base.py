"""The one recommender contract, shared by every backend.

``fit(interactions)`` learns; ``recommend(user_ids, n, filter_seen, exclude)`` answers one user
(a list of :class:`Recommendation`) or a batch (a list of lists); ``similar_items(item_id, n)``
gives neighbours; ``save``/``load`` round-trip through a pickle-free ``.npz`` file;
``update_users`` folds a few users' new events in without refitting.

Every answer goes through the same steps: the backend's scores, a cold-start fallback (users the
model has never seen, or with no signal, get their segment's popularity, else the time-decayed
global popularity), the business rules (:class:`Rules`), and a deterministic top-n (ties go to
the lower item index) with an optional cap of items per category.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from typing import Any, ClassVar, Self, overload

import numpy as np
from numpy.typing import NDArray

from automation.errors import NotFoundError, ValidationError
from automation.recommend.context import NO_SEGMENT, Context
from automation.recommend.data import FloatArray, IntArray, Interactions
from automation.recommend.rules import (
    Recommendation,
    Rules,
    apply_rules,
    global_ban,
    recommendations,
    top_n,
)

FORMAT = "shoal-recommender/1"
BATCH_ROWS = 1024
DECIMALS = 10  # scores are compared (and reported) at this precision
_CLASSES: dict[str, type[Recommender]] = {}


class Recommender(ABC):
    """Base class: parameters, context, cold start, rules, top-n, reasons, persistence.

    Subclasses set ``name`` and ``defaults`` (their parameters and default values) and implement
    ``_fit``, ``_scores`` and, when they keep arrays, ``_state``/``_set_state``.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    context_defaults: ClassVar[dict[str, Any]] = {
        "weights": None,
        "half_life": None,
        "popularity_half_life": 30.0,
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _CLASSES[cls.name] = cls

    def __init__(self, rules: Rules | None = None, random_state: int = 0, **params: Any) -> None:
        accepted = {**self.context_defaults, **self.defaults}
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValidationError(
                f"{unknown[0]}={params[unknown[0]]!r} is not a parameter of {self.name!r} "
                f"(accepted: {sorted(accepted)})"
            )
        self.params: dict[str, Any] = {**accepted, **params}
        self.rules = rules or Rules()
        self.random_state = int(random_state)
        self._check_params()
        self.context_: Context | None = None

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.items() if self._default(k) != v}
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items()))
        return f"{type(self).__name__}({args})"

    def _default(self, key: str) -> Any:
        return {**self.context_defaults, **self.defaults}.get(key)

    def _check_params(self) -> None:
        """Validate ``self.params`` (subclasses extend); raise ValidationError naming the value."""
        for key in ("half_life", "popularity_half_life"):
            value = self.params[key]
            if value is not None and value <= 0:
                raise ValidationError(f"{key}={value} should be > 0 (or None: no decay)")

    # ------------------------------------------------------------------ fitting
    def fit(self, interactions: Interactions) -> Self:
        """Learn from ``interactions`` (a fresh fit; any previous state is replaced)."""
        if interactions.n_items == 0 or interactions.n_users == 0:
            raise ValidationError("interactions are empty: nothing to learn from")
        p = self.params
        self.context_ = Context.from_interactions(
            interactions, p["weights"], p["half_life"], p["popularity_half_life"]
        )
        self._fit(interactions)
        return self

    @abstractmethod
    def _fit(self, interactions: Interactions) -> None: ...

    @abstractmethod
    def _scores(self, rows: IntArray, segments: IntArray) -> FloatArray:
        """Dense scores (rows x items); rows may be -1 (unknown user: its scores are ignored)."""

    def _reasons(self, rows: IntArray, segments: IntArray, items: IntArray) -> list[list[str]]:
        """A readable reason per recommended item (rows x n; -1 entries are padding)."""
        return [["recommended for you" for _ in r] for r in items]

    def _state(self) -> dict[str, Any]:
        return {}

    def _set_state(self, z: Mapping[str, Any]) -> None:
        return None

    def _answer_scope(self, n_rows: int) -> AbstractContextManager[None]:
        """Held around ranking and explaining one call of ``n_rows`` users: a backend may keep
        work done for the ranking to explain it (the hybrid, for one batch's worth of rows)."""
        return nullcontext()

    def _refresh_users(self, rows: IntArray) -> None:
        """Recompute per-user model state after :meth:`update_users` (e.g. ALS factors)."""
        return None

    @property
    def context(self) -> Context:
        """The fitted context (raises when the model is not fitted)."""
        if self.context_ is None:
            raise ValidationError(f"{self.name} recommender is not fitted: call fit() first")
        return self.context_

    # ------------------------------------------------------------------ answering
    @overload
    def recommend(
        self,
        user_ids: str,
        n: int = 10,
        filter_seen: bool = True,
        exclude: Sequence[str] | None = None,
        segment: str | Sequence[str | None] | None = None,
    ) -> list[Recommendation]: ...

    @overload
    def recommend(
        self,
        user_ids: list[str] | tuple[str, ...] | NDArray[np.str_],
        n: int = 10,
        filter_seen: bool = True,
        exclude: Sequence[str] | None = None,
        segment: str | Sequence[str | None] | None = None,
    ) -> list[list[Recommendation]]: ...

    def recommend(
        self,
        user_ids: str | Sequence[str] | NDArray[np.str_],
        n: int = 10,
        filter_seen: bool = True,
        exclude: Sequence[str] | None = None,
        segment: str | Sequence[str | None] | None = None,
    ) -> list[Recommendation] | list[list[Recommendation]]:
        """Top-``n`` items for one user id (a list) or a batch of ids (a list of lists).

        Parameters
        ----------
        user_ids : str or sequence of str
            External user ids; unknown ids take the cold-start path (their segment's popularity).
        n : int
            Items per user.
        filter_seen : bool
            Leave out items the user has bought.
        exclude : sequence of str, optional
            Item ids to leave out for everyone.
        segment : str or sequence, optional
            The users' segment when the caller knows it (a provisional segment for a new user).
        """
        single = isinstance(user_ids, str)
        ids = [user_ids] if isinstance(user_ids, str) else [str(u) for u in user_ids]
        hints: list[str | None] | None
        if segment is None or isinstance(segment, str):
            hints = [segment] * len(ids) if segment is not None else None
        else:
            hints = list(segment)
        rows = self.context.rows_of(ids)
        segs = self.context.segments_for(rows, hints)
        with self._answer_scope(len(rows)):
            idx, scores, cold = self._rank(rows, n, filter_seen, exclude, segs)
            reasons = self._reasons_with_fallback(rows, segs, idx, cold)
        out = [self._items(i, s, r) for i, s, r in zip(idx, scores, reasons, strict=True)]
        return out[0] if single else out

    def recommend_segment(
        self, segment_id: str, n: int = 10, exclude: Sequence[str] | None = None
    ) -> list[Recommendation]:
        """What a newcomer of ``segment_id`` is shown (the cold-start list of that segment)."""
        code = self.context.segment_code(segment_id)
        if code == NO_SEGMENT:
            raise NotFoundError(f"no segment {segment_id!r} in the {self.name} model")
        rows = np.array([-1], dtype=np.int64)
        segs = np.array([code], dtype=np.int64)
        idx, scores, cold = self._rank(rows, n, True, exclude, segs)
        reasons = self._reasons_with_fallback(rows, segs, idx, cold)
        return self._items(idx[0], scores[0], reasons[0])

    def recommend_indices(
        self,
        rows: IntArray,
        n: int = 10,
        filter_seen: bool = True,
        exclude: Sequence[str] | None = None,
        segments: IntArray | None = None,
    ) -> tuple[IntArray, FloatArray]:
        """Item indices (rows x n, ``-1`` padding when fewer items qualify) and their scores.

        ``rows`` are positions in the model (``-1``: unknown user); ``segments`` are segment
        codes (default: each row's fitted or provisional segment).
        """
        idx, scores, _ = self._rank(rows, n, filter_seen, exclude, segments)
        return idx, scores

    def _rank(
        self,
        rows: IntArray,
        n: int,
        filter_seen: bool,
        exclude: Sequence[str] | None,
        segments: IntArray | None,
    ) -> tuple[IntArray, FloatArray, NDArray[np.bool_]]:
        if n < 1:
            raise ValidationError(f"n={n} should be >= 1")
        ctx = self.context
        rows = np.asarray(rows, dtype=np.int64)
        segs = ctx.segments_for(rows) if segments is None else np.asarray(segments, np.int64)
        banned = self._global_ban(exclude)
        out_i = np.full((len(rows), n), -1, dtype=np.int64)
        out_s = np.zeros((len(rows), n), dtype=np.float64)
        cold = np.zeros(len(rows), dtype=bool)
        for lo in range(0, len(rows), BATCH_ROWS):
            r, s = rows[lo : lo + BATCH_ROWS], segs[lo : lo + BATCH_ROWS]
            S, c = self._blended_scores(r, s)
            self._apply_rules(S, r, filter_seen, banned)
            idx, sc = self._top(S, n, decimals=DECIMALS)
            hi = lo + len(r)
            out_i[lo:hi], out_s[lo:hi], cold[lo:hi] = idx, sc, c
        return out_i, out_s, cold

    def final_scores(
        self, rows: IntArray, segments: IntArray
    ) -> tuple[FloatArray, NDArray[np.bool_]]:
        """The backend's scores with the cold-start fallback (before the rules), and which rows
        took the fallback (unknown users, or no signal from the backend); rounded to
        :data:`DECIMALS` so that near-equal scores tie (and ties go to the lower index)."""
        S, cold = self._blended_scores(rows, segments)
        return np.round(S, DECIMALS, out=S), cold

    def _blended_scores(
        self, rows: IntArray, segments: IntArray
    ) -> tuple[FloatArray, NDArray[np.bool_]]:
        """:meth:`final_scores` before rounding (the top-n rounds only its candidates)."""
        S = np.asarray(self._scores(rows, segments), dtype=np.float64)
        cold = (rows < 0) | ~(S > 0).any(axis=1)
        if cold.any():
            S[cold] = self.prior_scores(segments[cold])
        pop = self.context.popularity
        S += 1e-6 * pop / max(float(pop.max(initial=0.0)), 1e-12)  # ties: the popular first
        return S, cold

    def prior_scores(self, segments: IntArray) -> FloatArray:
        """Cold-start scores: the segment's decayed popularity (else the global one), in [0, 1]."""
        ctx = self.context
        glob = ctx.popularity / max(float(ctx.popularity.max(initial=0.0)), 1e-12)
        out = np.tile(glob, (len(segments), 1))
        for k, s in enumerate(segments.tolist()):
            if s != NO_SEGMENT and ctx.segment_popularity[s].max() > 0:
                seg = ctx.segment_popularity[s]
                out[k] = seg / seg.max() + 1e-3 * glob
        return out

    def _reasons_with_fallback(
        self, rows: IntArray, segs: IntArray, idx: IntArray, cold: NDArray[np.bool_]
    ) -> list[list[str]]:
        reasons = self._reasons(rows, segs, idx) if (~cold).any() else [[] for _ in rows]
        for k in np.flatnonzero(cold):
            label = self._cold_reason(int(segs[k]))
            reasons[k] = [label for _ in idx[k]]
        return reasons

    def _cold_reason(self, segment: int) -> str:
        if segment == NO_SEGMENT:
            return "popular right now"
        return f"popular in segment {self.context.segment_names[segment]}"

    def _global_ban(self, exclude: Sequence[str] | None) -> NDArray[np.bool_]:
        return global_ban(self.context, self.rules, exclude)

    def _apply_rules(
        self, S: FloatArray, rows: IntArray, filter_seen: bool, banned: NDArray[np.bool_]
    ) -> None:
        apply_rules(S, self.context, self.rules, rows, filter_seen, banned)

    def _top(
        self, S: FloatArray, n: int, decimals: int | None = None
    ) -> tuple[IntArray, FloatArray]:
        cats = self.context.catalogue.categories
        return top_n(S, n, cats, self.rules.max_per_category, decimals)

    def _items(self, idx: IntArray, scores: FloatArray, reasons: list[str]) -> list[Recommendation]:
        return recommendations(self.context.catalogue, idx, scores, reasons)

    def item_row(self, item_id: str) -> int:
        """Position of ``item_id`` in the model's catalogue (NotFoundError if unknown)."""
        pos = self.context.catalogue.index().get(str(item_id))
        if pos is None:
            raise NotFoundError(f"no item {item_id!r} in the {self.name} model")
        return pos

    def similar_items(self, item_id: str, n: int = 10) -> list[Recommendation]:
        """The ``n`` items most similar to ``item_id`` under this model (rules on products)."""
        if n < 1:
            raise ValidationError(f"n={n} should be >= 1")
        i = self.item_row(item_id)
        sims = np.asarray(self._item_similarity(i), dtype=np.float64).copy()
        sims[i] = -np.inf
        sims[self._global_ban(None)] = -np.inf
        idx, sc = self._top(sims[None, :], n)
        name = str(self.context.catalogue.names[i])
        return self._items(idx[0], sc[0], [f"similar to {name}"] * n)

    def _item_similarity(self, item: int) -> FloatArray:
        """Similarity of every item to ``item`` (default: co-purchase cosine from the context)."""
        seen = self.context.seen.tocsc()
        col = seen[:, item]
        co = np.asarray((seen.T @ col).todense()).ravel()
        n = np.asarray(seen.sum(axis=0)).ravel()
        return co / np.sqrt(np.maximum(n * max(n[item], 1.0), 1.0))

    def audience(
        self, item_id: str, n: int = 1000, filter_seen: bool = True
    ) -> list[tuple[str, float]]:
        """The ``n`` users most likely to buy ``item_id``: ``(user_id, score)``, best first.

        Users who bought it already (with ``filter_seen``), refunded it, or bought it within
        ``rules.recent_days`` are left out; a non-product has no audience.
        """
        if n < 1:
            raise ValidationError(f"n={n} should be >= 1")
        ctx = self.context
        i = self.item_row(item_id)
        if self.rules.exclude_non_products and not ctx.catalogue.is_product[i]:
            raise ValidationError(f"item {item_id!r} is not a product (fee, postage, adjustment)")
        rows = np.arange(ctx.n_users, dtype=np.int64)
        col = np.empty(ctx.n_users, dtype=np.float64)
        segs = ctx.segments_for(rows)
        banned = np.zeros(ctx.n_items, dtype=bool)
        for lo in range(0, len(rows), BATCH_ROWS):
            r = rows[lo : lo + BATCH_ROWS]
            S, _ = self.final_scores(r, segs[lo : lo + BATCH_ROWS])
            self._apply_rules(S, r, filter_seen, banned)
            col[lo : lo + len(r)] = S[:, i]
        order = np.lexsort((rows, -col))
        order = order[np.isfinite(col[order])][:n]
        return [(str(ctx.user_ids[u]), float(col[u])) for u in order.tolist()]

    # ------------------------------------------------------------------ updates
    def update_users(self, interactions: Interactions) -> Self:
        """Fold in the full event histories of the users in ``interactions`` without a refit.

        Their purchases, refunds, profiles and segments are recomputed (new users are added);
        backends with per-user state recompute it (ALS solves the users' factors again).
        """
        p = self.params
        rows = self.context.update_users(interactions, p["weights"], p["half_life"])
        self._refresh_users(rows)
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted model as arrays to an ``.npz`` file (no pickles)."""
        meta = {
            "format": FORMAT,
            "name": self.name,
            "params": self.params,
            "rules": asdict(self.rules),
            "random_state": self.random_state,
        }
        arrays = {**self.context.to_arrays(), **self._state()}
        np.savez_compressed(path, __meta__=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recommender:
        """A model saved with :meth:`save` (of whichever backend it was)."""
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop("__meta__")))
        if meta.get("format") != FORMAT:
            raise ValidationError(f"{path}: not a Shoal recommender file")
        klass = _CLASSES.get(meta["name"])
        if klass is None:
            raise ValidationError(f"{path}: unknown recommender {meta['name']!r}")
        if cls is not Recommender and klass is not cls:
            raise ValidationError(f"{path}: holds a {meta['name']!r} model, not {cls.name!r}")
        model = klass(Rules(**meta["rules"]), meta["random_state"], **meta["params"])
        model.context_ = Context.from_arrays(data)
        model._set_state(data)
        return model
