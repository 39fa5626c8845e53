"""Item-item neighbours on co-purchase / co-view, cosine or BM25 weighted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from automation.errors import ValidationError
from automation.recommend.base import Recommender
from automation.recommend.context import csr_arrays, csr_from
from automation.recommend.data import FloatArray, IntArray, Interactions
from automation.recommend.similarity import SIMILARITIES, cooccurrence_similarity


def anchor_reasons(
    profile: sp.csr_matrix, S: sp.csr_matrix, items: IntArray, names: Any, template: str
) -> list[list[str]]:
    """For each recommended item, the user's item that contributes most to its score
    (``profile[j] * S[j, i]``, the largest non-zero one; ties go to the lower item index).

    Only the user's rows of ``S`` and the listed columns are touched, read straight from the CSR
    arrays: one small block per user, no sparse matrix built (this runs on every single request).
    """
    out: list[list[str]] = []
    where = np.full(S.shape[1], -1, dtype=np.int64)
    for k in range(items.shape[0]):
        lo, hi = profile.indptr[k], profile.indptr[k + 1]
        mine, weight = profile.indices[lo:hi], profile.data[lo:hi]
        listed = items[k]
        block = np.zeros((len(mine), len(listed)))
        if len(mine) and S.nnz and (listed >= 0).any():
            ok = np.flatnonzero(listed >= 0)
            uniq, inv = np.unique(listed[ok], return_inverse=True)
            where[uniq] = np.arange(len(uniq))
            starts, lens = S.indptr[mine], S.indptr[mine + 1] - S.indptr[mine]
            at = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
            col = where[S.indices[at]]
            hit = col >= 0
            sub = np.zeros((len(mine), len(uniq)))
            np.add.at(sub, (np.repeat(np.arange(len(mine)), lens)[hit], col[hit]), S.data[at][hit])
            block[:, ok] = sub[:, inv] * weight[:, None]
            where[uniq] = -1
        row: list[str] = []
        for pos, i in enumerate(listed.tolist()):
            if i < 0:
                row.append("")
                continue
            contrib = block[:, pos]
            hit = contrib != 0
            if not hit.any():
                row.append("recommended for you")
                continue
            best = contrib[hit].max()
            j = int(mine[hit][contrib[hit] == best].min())
            row.append(template.format(anchor=str(names[j])))
        out.append(row)
    return out


class NeighbourRecommender(Recommender):
    """Scores an item by its similarity (``sim_``, items x items) to the user's items; the
    subclass's ``_fit`` builds ``sim_`` and ``reason`` names the anchor item."""

    reason = "similar to {anchor}"

    def _scores(self, rows: IntArray, segments: IntArray) -> FloatArray:
        return np.asarray((self.context.profile_rows(rows) @ self.sim_).todense())

    def _reasons(self, rows: IntArray, segments: IntArray, items: IntArray) -> list[list[str]]:
        return anchor_reasons(
            self.context.profile_rows(rows),
            self.sim_,
            items,
            self.context.catalogue.names,
            self.reason,
        )

    def _item_similarity(self, item: int) -> FloatArray:
        return np.asarray(self.sim_[item].todense()).ravel()

    def _state(self) -> dict[str, Any]:
        return csr_arrays("sim", self.sim_)

    def _set_state(self, z: Mapping[str, Any]) -> None:
        self.sim_ = csr_from(z, "sim")


class ItemKNNRecommender(NeighbourRecommender):
    """Scores an item by the similarity of its neighbours to what the user bought or viewed.

    Parameters
    ----------
    similarity : {"cosine", "bm25"}
        Cosine on binary co-occurrence (with ``shrink``), or BM25-weighted dot products.
    k : int
        Neighbours kept per item.
    shrink : float
        Added to the cosine denominator (damps pairs seen by few users).
    bm25_k1, bm25_b : float
        BM25 saturation and length normalisation.
    """

    name = "item-knn"
    reason = "customers who bought {anchor} also bought this"
    defaults = {"similarity": "cosine", "k": 100, "shrink": 0.0, "bm25_k1": 1.2, "bm25_b": 0.75}

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        if p["similarity"] not in SIMILARITIES:
            raise ValidationError(f"similarity={p['similarity']!r} should be one of {SIMILARITIES}")
        if int(p["k"]) < 1:
            raise ValidationError(f"k={p['k']} should be >= 1")

    def _fit(self, interactions: Interactions) -> None:
        p = self.params
        basis = interactions.weighted(p["weights"])
        self.sim_ = cooccurrence_similarity(
            basis, p["similarity"], int(p["k"]), float(p["shrink"]), p["bm25_k1"], p["bm25_b"]
        )
