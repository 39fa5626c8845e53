"""What every fitted recommender knows about users and items, as arrays (saved with the model).

The context holds the catalogue, each user's purchases (for ``filter_seen``), refunds and the age
of their last purchase of each item (business rules), their weighted and time-decayed interaction
profile, their order count and segment, and the popularity priors (global and per segment) that
serve cold start. :meth:`Context.update_users` recomputes the rows of some users from their
events, so new events change recommendations without refitting a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from automation.recommend.data import (
    PURCHASE,
    Catalogue,
    FloatArray,
    IntArray,
    Interactions,
    decay,
)

StrArray = NDArray[np.str_]
NO_SEGMENT = -1


def distinct_user_popularity(
    inter: Interactions, half_life: float | None, users_mask: NDArray[np.bool_] | None = None
) -> FloatArray:
    """Per item: the number of distinct buyers (or interacting users), each weighted by the decay
    of their newest interaction with it."""
    w = decay(inter.age_days, half_life)
    mask = inter.kind == PURCHASE
    if not mask.any():
        mask = np.ones(inter.n_events, dtype=bool)
    if users_mask is not None:
        mask &= users_mask[inter.user]
    frame = pd.DataFrame({"u": inter.user[mask], "i": inter.item[mask], "w": w[mask]})
    best = frame.groupby(["u", "i"], sort=False)["w"].max()
    items = best.index.get_level_values(1).to_numpy()
    return np.bincount(items, weights=best.to_numpy(), minlength=inter.n_items).astype(np.float64)


@dataclass
class Context:
    """Fitted per-user and per-item state shared by every backend."""

    user_ids: StrArray
    catalogue: Catalogue
    seen: sp.csr_matrix
    refunded: sp.csr_matrix
    last_age: sp.csr_matrix
    profile: sp.csr_matrix
    n_orders: IntArray
    user_segment: IntArray
    segment_ids: StrArray
    segment_names: StrArray
    popularity: FloatArray
    segment_popularity: FloatArray
    segment_counts: FloatArray
    newcomer_segment: int
    as_of: pd.Timestamp
    _index: dict[str, int] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_interactions(
        cls,
        inter: Interactions,
        weights: Mapping[str, float] | None,
        half_life: float | None,
        popularity_half_life: float | None,
    ) -> Context:
        """The context of a fresh fit (profiles weighted by type, decayed with ``half_life``)."""
        seg_ids = np.array(sorted({s for s in inter.segments.tolist() if s}), dtype=str)
        if inter.has_segments():
            pos = {s: i for i, s in enumerate(seg_ids.tolist())}
            user_seg = np.array([pos.get(s, NO_SEGMENT) for s in inter.segments.tolist()])
        else:
            user_seg = np.full(inter.n_users, NO_SEGMENT)
        user_seg = user_seg.astype(np.int64)
        n_seg = len(seg_ids)
        seg_pop = np.zeros((n_seg, inter.n_items))
        seg_counts = np.zeros((n_seg, inter.n_items))
        for s in range(n_seg):
            members = user_seg == s
            seg_pop[s] = distinct_user_popularity(inter, popularity_half_life, members)
            seg_counts[s] = distinct_user_popularity(inter, None, members)
        orders = inter.orders_per_user()
        newcomer = NO_SEGMENT
        if n_seg:
            few = (orders <= 1) & (user_seg >= 0)
            pool = user_seg[few] if few.any() else user_seg[user_seg >= 0]
            newcomer = int(np.bincount(pool, minlength=n_seg).argmax())
        names = np.array([inter.segment_names.get(s, s) for s in seg_ids.tolist()], dtype=str)
        seen = inter.purchases()
        seen.data = np.ones_like(seen.data)
        refunded = inter.refunds()
        refunded.data = np.ones_like(refunded.data)
        return cls(
            user_ids=inter.user_ids.astype(str),
            catalogue=inter.catalogue,
            seen=seen,
            refunded=refunded,
            last_age=inter.last_purchase_age(),
            profile=inter.weighted(weights, half_life),
            n_orders=orders,
            user_segment=user_seg,
            segment_ids=seg_ids,
            segment_names=names,
            popularity=distinct_user_popularity(inter, popularity_half_life),
            segment_popularity=seg_pop,
            segment_counts=seg_counts,
            newcomer_segment=newcomer,
            as_of=inter.as_of,
        )

    # ------------------------------------------------------------------ lookups
    @property
    def n_users(self) -> int:
        """Users known to the model."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Items in the catalogue."""
        return len(self.catalogue)

    def user_index(self) -> dict[str, int]:
        """External user id -> row (built once, on first use)."""
        if self._index is None:
            self._index = {u: i for i, u in enumerate(self.user_ids.tolist())}
        return self._index

    def rows_of(self, user_ids: Sequence[str]) -> IntArray:
        """Row of each user id; ``-1`` for a user the model has never seen."""
        idx = self.user_index()
        return np.array([idx.get(str(u), -1) for u in user_ids], dtype=np.int64)

    def segment_code(self, segment_id: str | None) -> int:
        """Position of a segment id (``NO_SEGMENT`` when unknown or None)."""
        if segment_id is None:
            return NO_SEGMENT
        hits = np.flatnonzero(self.segment_ids == str(segment_id))
        return int(hits[0]) if len(hits) else NO_SEGMENT

    def profile_rows(self, rows: IntArray) -> sp.csr_matrix:
        """Profile rows (an empty row for an unknown user)."""
        safe = np.where(rows >= 0, rows, 0)
        sub = self.profile[safe]
        if (rows < 0).any():
            sub = sp.diags((rows >= 0).astype(np.float64)) @ sub
            sub = sp.csr_matrix(sub)
            sub.eliminate_zeros()
        return sub

    def segments_for(self, rows: IntArray, hints: Sequence[str | None] | None = None) -> IntArray:
        """Each row's segment: the given hint, else the fitted one, else a provisional one.

        The provisional segment of a user with interactions but no segment is the most likely
        under a multinomial model of each segment's items (naive Bayes with add-one smoothing);
        a user with nothing yet gets the segment most newcomers are in.
        """
        out = np.full(len(rows), NO_SEGMENT, dtype=np.int64)
        if not len(self.segment_ids):
            return out
        for k, r in enumerate(rows.tolist()):
            hint = hints[k] if hints is not None else None
            code = self.segment_code(hint)
            if code == NO_SEGMENT and r >= 0:
                code = int(self.user_segment[r])
            out[k] = code
        todo = np.flatnonzero(out == NO_SEGMENT)
        if len(todo):
            out[todo] = self._provisional(rows[todo])
        return out

    def _provisional(self, rows: IntArray) -> IntArray:
        counts = self.segment_counts
        log_p = np.log((counts + 1.0) / (counts.sum(axis=1, keepdims=True) + counts.shape[1]))
        sizes = np.bincount(self.user_segment[self.user_segment >= 0], minlength=len(counts))
        log_prior = np.log((sizes + 1.0) / (sizes.sum() + len(sizes)))
        prof = self.profile_rows(rows)
        prof.data = np.ones_like(prof.data)
        ll = np.asarray(prof @ log_p.T) + log_prior[None, :]
        has = np.diff(prof.indptr) > 0
        return np.where(has, ll.argmax(axis=1), self.newcomer_segment).astype(np.int64)

    # ------------------------------------------------------------------ updates
    def update_users(
        self,
        inter: Interactions,
        weights: Mapping[str, float] | None,
        half_life: float | None,
    ) -> IntArray:
        """Replace the rows of the users in ``inter`` (their full histories) and add new users.

        Items unknown to the model are ignored; ages are measured from the model's ``as_of``.
        Returns the rows of the updated users.
        """
        item_pos = self.catalogue.index()
        mapped = np.array(
            [item_pos.get(str(i), -1) for i in inter.catalogue.item_ids.tolist()], dtype=np.int64
        )
        new_users = [u for u in inter.user_ids.tolist() if u not in self.user_index()]
        if new_users:
            self.user_ids = np.concatenate([self.user_ids, np.array(new_users, dtype=str)])
            self._index = None
            grow = len(new_users)
            self.n_orders = np.concatenate([self.n_orders, np.zeros(grow, dtype=np.int64)])
            self.user_segment = np.concatenate(
                [self.user_segment, np.full(grow, NO_SEGMENT, dtype=np.int64)]
            )
            for name in ("seen", "refunded", "last_age", "profile"):
                m = getattr(self, name)
                setattr(
                    self, name, sp.csr_matrix(sp.vstack([m, sp.csr_matrix((grow, m.shape[1]))]))
                )
        rows = self.rows_of(inter.user_ids.tolist())
        shift = (self.as_of - inter.as_of).total_seconds() / 86_400.0
        keep = mapped[inter.item] >= 0
        local = Interactions(
            user_ids=inter.user_ids,
            catalogue=self.catalogue,
            user=inter.user[keep],
            item=mapped[inter.item[keep]].astype(np.int32),
            kind=inter.kind[keep],
            age_days=inter.age_days[keep] + shift,
            order=inter.order[keep],
            as_of=self.as_of,
            segments=inter.segments,
            segment_names=inter.segment_names,
        )
        seen = local.purchases()
        seen.data = np.ones_like(seen.data)
        refunded = local.refunds()
        refunded.data = np.ones_like(refunded.data)
        self.seen = _set_rows(self.seen, rows, seen)
        self.refunded = _set_rows(self.refunded, rows, refunded)
        self.last_age = _set_rows(self.last_age, rows, local.last_purchase_age())
        self.profile = _set_rows(self.profile, rows, local.weighted(weights, half_life))
        self.n_orders[rows] = local.orders_per_user()
        if local.has_segments():
            for r, s in zip(rows.tolist(), local.segments.tolist(), strict=True):
                code = self.segment_code(s)
                if code != NO_SEGMENT:
                    self.user_segment[r] = code
        return rows

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> dict[str, Any]:
        """Every array of the context, for ``np.savez``."""
        out: dict[str, Any] = {
            "user_ids": self.user_ids.astype(str),
            "item_ids": self.catalogue.item_ids.astype(str),
            "item_names": self.catalogue.names.astype(str),
            "item_categories": self.catalogue.categories.astype(str),
            "item_prices": self.catalogue.prices,
            "item_is_product": self.catalogue.is_product,
            "n_orders": self.n_orders,
            "user_segment": self.user_segment,
            "segment_ids": self.segment_ids.astype(str),
            "segment_names": self.segment_names.astype(str),
            "popularity": self.popularity,
            "segment_popularity": self.segment_popularity,
            "segment_counts": self.segment_counts,
            "newcomer_segment": np.array(self.newcomer_segment),
            "as_of": np.array(self.as_of.isoformat()),
        }
        for name in ("seen", "refunded", "last_age", "profile"):
            out.update(csr_arrays(name, getattr(self, name)))
        return out

    @classmethod
    def from_arrays(cls, z: Mapping[str, Any]) -> Context:
        """The context saved by :meth:`to_arrays`."""
        cat = Catalogue(
            item_ids=z["item_ids"].astype(str),
            names=z["item_names"].astype(str),
            categories=z["item_categories"].astype(str),
            prices=z["item_prices"].astype(np.float64),
            is_product=z["item_is_product"].astype(bool),
        )
        return cls(
            user_ids=z["user_ids"].astype(str),
            catalogue=cat,
            seen=csr_from(z, "seen"),
            refunded=csr_from(z, "refunded"),
            last_age=csr_from(z, "last_age"),
            profile=csr_from(z, "profile"),
            n_orders=z["n_orders"].astype(np.int64),
            user_segment=z["user_segment"].astype(np.int64),
            segment_ids=z["segment_ids"].astype(str),
            segment_names=z["segment_names"].astype(str),
            popularity=z["popularity"].astype(np.float64),
            segment_popularity=z["segment_popularity"].astype(np.float64),
            segment_counts=z["segment_counts"].astype(np.float64),
            newcomer_segment=int(z["newcomer_segment"]),
            as_of=pd.Timestamp(str(z["as_of"])),
        )


def csr_arrays(name: str, m: sp.spmatrix) -> dict[str, Any]:
    """A sparse matrix as named arrays for ``np.savez``."""
    c = sp.csr_matrix(m)
    return {
        f"{name}__data": c.data,
        f"{name}__indices": c.indices,
        f"{name}__indptr": c.indptr,
        f"{name}__shape": np.array(c.shape, dtype=np.int64),
    }


def csr_from(z: Mapping[str, Any], name: str) -> sp.csr_matrix:
    """The sparse matrix saved by :func:`csr_arrays` under ``name``."""
    shape = tuple(int(v) for v in z[f"{name}__shape"])
    return sp.csr_matrix(
        (z[f"{name}__data"], z[f"{name}__indices"], z[f"{name}__indptr"]), shape=shape
    )


def _set_rows(M: sp.csr_matrix, rows: IntArray, sub: sp.spmatrix) -> sp.csr_matrix:
    """``M`` with ``rows`` replaced by the rows of ``sub`` (same order), without densifying."""
    n = M.shape[0]
    keep = np.ones(n)
    keep[rows] = 0.0
    place = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n, len(rows)))
    out = sp.csr_matrix(sp.diags(keep) @ M + place @ sp.csr_matrix(sub))
    out.eliminate_zeros()
    out.sort_indices()
    return out
