"""What customers buy *next*: order-to-order transitions and recency-weighted anchors.

Co-purchase neighbours say which items go together; for a customer with one or two orders the
better question is what people who bought those items went on to buy in their following
orders. :func:`transition_similarity` counts, over every customer's consecutive orders, how often
an item of one order is followed by an item in one of the next ``gap`` orders (cosine-normalised,
top-k per item). :func:`recent_profile` weights a user's items by how recent they are relative to
the user's own newest purchase, so that the last basket speaks loudest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from automation.recommend.data import PURCHASE, IntArray, Interactions
from automation.recommend.similarity import prune_topk


def transition_similarity(
    inter: Interactions, k: int | None = 100, gap: int = 2, shrink: float = 5.0
) -> sp.csr_matrix:
    """Items x items: ``S[i, j]`` how strongly buying ``i`` is followed by buying ``j`` in one of
    the customer's next ``gap`` orders (a later order at distance ``d`` counts ``1 / d``)."""
    n = inter.n_items
    mask = (inter.kind == PURCHASE) & (inter.order >= 0)
    if not mask.any():
        return sp.csr_matrix((n, n))
    frame = pd.DataFrame({"u": inter.user[mask], "o": inter.order[mask], "a": inter.age_days[mask]})
    orders = frame.groupby(["u", "o"], sort=False)["a"].min().reset_index()
    orders = orders.sort_values(["u", "a", "o"], ascending=[True, False, True], kind="stable")
    order_ids = orders["o"].to_numpy(dtype=np.int64)
    position = np.full(int(order_ids.max()) + 1, -1, dtype=np.int64)
    position[order_ids] = np.arange(len(order_ids))
    users = orders["u"].to_numpy()
    basket = sp.csr_matrix(
        (np.ones(int(mask.sum())), (position[inter.order[mask]], inter.item[mask])),
        shape=(len(orders), n),
    )
    basket.sum_duplicates()
    basket.data = np.ones_like(basket.data)
    src: list[IntArray] = []
    dst: list[IntArray] = []
    wts: list[np.ndarray] = []
    pos = np.arange(len(orders))
    for d in range(1, max(int(gap), 1) + 1):
        same = users[:-d] == users[d:]
        src.append(pos[:-d][same])
        dst.append(pos[d:][same])
        wts.append(np.full(int(same.sum()), 1.0 / d))
    a, b, w = np.concatenate(src), np.concatenate(dst), np.concatenate(wts)
    if not len(a):
        return sp.csr_matrix((n, n))
    F = sp.diags(w) @ basket[a]
    T = basket[b]
    M = (F.T @ T).tocsr()
    n_from = np.asarray(F.sum(axis=0)).ravel()
    n_to = np.asarray(T.sum(axis=0)).ravel()
    rows = np.repeat(np.arange(n), np.diff(M.indptr))
    M.data = M.data / (np.sqrt(n_from[rows] * n_to[M.indices]) + shrink)
    return prune_topk(M, k)


def recent_profile(last_age: sp.csr_matrix, half_life: float | None) -> sp.csr_matrix:
    """Rows of ``last_age`` (days since the newest purchase of each item, plus one) as weights
    ``0.5 ** ((age - the user's newest age) / half_life)``: 1 for the last basket (``None``:
    every bought item weighs 1)."""
    out = sp.csr_matrix(last_age, dtype=np.float64, copy=True)
    if not out.nnz:
        return out
    if half_life is None:
        out.data = np.ones_like(out.data)
        return out
    counts = np.diff(out.indptr)
    has = counts > 0
    newest = np.zeros(out.shape[0])
    newest[has] = np.minimum.reduceat(out.data, out.indptr[:-1][has])
    rows = np.repeat(np.arange(out.shape[0]), counts)
    out.data = 0.5 ** ((out.data - newest[rows]) / float(half_life))
    return out
