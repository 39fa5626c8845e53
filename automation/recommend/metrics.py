"""Ranking metrics at K, per user and aggregated, with catalogue coverage and novelty.

For one user with top-K list ``rec`` and relevant set ``truth`` (binary relevance):

``recall``    hits / |truth|
``ndcg``      DCG / ideal DCG, ``DCG = sum(1 / log2(rank + 1))`` over hits, the ideal over
              ``min(K, |truth|)`` hits
``map``       sum of precision at each hit / ``min(K, |truth|)``
``hit_rate``  1 if any hit

and over a group of users: ``coverage`` (distinct recommended items / recommendable items) and
``novelty`` (mean self-information ``-log2(share of training users who bought the item)`` of the
recommended items).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from automation.recommend.data import FloatArray, IntArray

METRICS = ("ndcg", "recall", "map", "hit_rate")


@dataclass
class UserScores:
    """Per-user metrics (arrays aligned with the evaluated users)."""

    ndcg: FloatArray
    recall: FloatArray
    map: FloatArray
    hit_rate: FloatArray

    def mean(self, mask: NDArray[np.bool_]) -> dict[str, float]:
        """Each metric averaged over the users in ``mask`` (NaN for none)."""
        if not mask.any():
            return {m: float("nan") for m in METRICS}
        return {m: float(getattr(self, m)[mask].mean()) for m in METRICS}


def ranking_metrics(recs: IntArray, truth: sp.csr_matrix, k: int) -> UserScores:
    """Metrics of each row of ``recs`` (users x >= k item indices, -1 padding) against the
    matching row of ``truth`` (users x items, nonzero = relevant)."""
    top = recs[:, :k]
    T = sp.csr_matrix(truth)
    n_true = np.diff(T.indptr).astype(np.float64)
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    cols = top.ravel()
    valid = cols >= 0
    hits = np.zeros(top.size, dtype=np.float64)
    if valid.any():
        hits[valid] = np.asarray(T[rows[valid], cols[valid]]).ravel() > 0
    width = int(top.shape[1])
    H = hits.reshape(top.shape)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (H * discount[:width]).sum(axis=1)
    ideal_n = np.minimum(n_true, k).astype(np.int64)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[ideal_n]
    safe_ideal = np.where(ideal > 0, ideal, 1.0)
    safe_true = np.where(n_true > 0, n_true, 1.0)
    cum_hits = np.cumsum(H, axis=1)
    precision = cum_hits / np.arange(1, width + 1)
    ap = (precision * H).sum(axis=1) / np.where(ideal_n > 0, ideal_n, 1)
    return UserScores(
        ndcg=np.where(ideal > 0, dcg / safe_ideal, 0.0),
        recall=np.where(n_true > 0, H.sum(axis=1) / safe_true, 0.0),
        map=np.where(ideal_n > 0, ap, 0.0),
        hit_rate=(H.sum(axis=1) > 0).astype(np.float64),
    )


def coverage(recs: IntArray, k: int, n_recommendable: int) -> float:
    """Share of the recommendable catalogue that appears in at least one list."""
    items = recs[:, :k]
    distinct = np.unique(items[items >= 0])
    return float(len(distinct) / max(n_recommendable, 1))


def novelty(recs: IntArray, k: int, buyers: FloatArray, n_users: int) -> float:
    """Mean self-information of the recommended items (higher: less obvious items)."""
    items = recs[:, :k]
    items = items[items >= 0]
    if not len(items):
        return float("nan")
    share = np.maximum(buyers[items], 1.0) / max(n_users, 1)
    return float(np.mean(-np.log2(share)))
