"""Exact top-n over factor models, fast: float32 blocks, in-place masks, candidates rescored.

The plain path (:meth:`Recommender._rank`) scores a block of users in float64, sets what the
rules forbid to ``-inf``, rounds the candidates to :data:`DECIMALS` and ranks them (ties to the
lower item index). This module gives the same answer for a dot-product model with less work:

1. one float32 product per cache-sized block of users, into a reused buffer;
2. the global ban, and each user's seen/refunded/recent items (read straight from the CSR rows
   of the block), set to ``-inf`` in place;
3. ``argpartition`` picks ``n + slack`` candidates per row; only they are rescored in float64
   (the same products the plain path takes), rounded and sorted;
4. a row is answered here only when the float32 error bound proves that no item outside its
   candidates can reach (or tie, once rounded) its n-th item; every other row (and every cold
   row: unknown users, or users whose scores are all at or below 0) is handed back, to be ranked
   by the plain path.

The float32 error of a dot product of ``k`` terms is at most ``gamma(k) * sum |u_j v_j|`` with
``gamma(k) = k * 2**-24 / (1 - k * 2**-24)`` whatever the summation order (BLAS blocking, FMA);
by Cauchy-Schwarz that is at most ``gamma * |u| * max |v|``. The bound used here doubles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from automation.recommend.data import FloatArray, IntArray

BLOCK_ROWS = 128  # rows x 5,000 items x 4 bytes: 2.5 MB, about one core's L2
GROUP = 32  # items per group whose maximum bounds the candidates' threshold
EPS32 = 2.0**-24


@dataclass
class Mask:
    """Items to hide per user: a CSR matrix (users x items) and the stored values that hide."""

    matrix: sp.csr_matrix
    upto: float | None = None  # hide stored values <= upto (ages); None: values > 0


@dataclass
class FactorTopN:
    """Precomputed item side of a dot-product model for :func:`factor_top_n`."""

    user_factors: NDArray[np.float32]
    width: int  # items
    # (factors + 1) x items: the factors, then the bias row (-inf on the padding columns that
    # make the width a multiple of GROUP); users get a last factor of 1, so one product adds it
    item_t: NDArray[np.float32]
    item_64: NDArray[np.float64]  # items x factors
    bias_64: FloatArray  # added to every score (the popularity tie-break)
    err_scale: float  # gamma(k + 2) * 2 (safety)
    item_norm_max: float
    bias_max: float

    @classmethod
    def build(
        cls, user_factors: NDArray[np.float32], item_factors: NDArray[np.float32], bias: FloatArray
    ) -> FactorTopN:
        k = item_factors.shape[1]
        terms = (k + 2) * EPS32
        bias = np.asarray(bias, dtype=np.float64)
        width = item_factors.shape[0]
        padded = -(-width // GROUP) * GROUP
        item_t = np.zeros((k + 1, padded), dtype=np.float32)
        item_t[:k, :width] = item_factors.T
        item_t[k] = -np.inf
        item_t[k, :width] = bias
        return cls(
            user_factors=np.ascontiguousarray(user_factors, dtype=np.float32),
            width=width,
            item_t=item_t,
            item_64=np.asarray(item_factors, dtype=np.float64),
            bias_64=bias,
            err_scale=2.0 * terms / (1.0 - terms),
            item_norm_max=float(np.linalg.norm(item_factors, axis=1).max(initial=0.0)),
            bias_max=float(np.abs(bias).max(initial=0.0)),
        )


def _mask_block(S: NDArray[np.float32], masks: Sequence[Mask], rows: IntArray) -> None:
    """Set the masked items of each row of ``S`` (the users ``rows``) to -inf, in place."""
    flat = S.reshape(-1)
    width = S.shape[1]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    contiguous = hi - lo == len(rows) and bool((np.diff(rows) == 1).all())
    for m in masks:
        M = m.matrix
        if contiguous:
            start, stop = int(M.indptr[lo]), int(M.indptr[hi])
            counts = np.diff(M.indptr[lo : hi + 1])
            cols = M.indices[start:stop]
            data = M.data[start:stop]
        else:
            sub = M[rows]
            counts = np.diff(sub.indptr)
            cols, data = sub.indices, sub.data
        hit = data > 0 if m.upto is None else data <= m.upto
        pos = np.repeat(np.arange(len(rows), dtype=np.int64) * width, counts)
        flat[(pos + cols)[hit]] = -np.inf


def factor_top_n(
    model: FactorTopN,
    rows: IntArray,
    n: int,
    banned: NDArray[np.bool_],
    masks: Sequence[Mask],
    decimals: int,
    block: int = BLOCK_ROWS,
) -> tuple[IntArray, FloatArray, NDArray[np.bool_]]:
    """Top ``n`` of ``u . v + bias`` for known users ``rows`` (all >= 0), rules applied.

    Returns item indices and rounded scores (rows x n, ``-1``/0 padding) and which rows were
    *not* answered (cold, or not provably exact): the caller ranks those on the plain path.
    """
    width = model.width
    out_i = np.full((len(rows), n), -1, dtype=np.int64)
    out_s = np.zeros((len(rows), n), dtype=np.float64)
    todo = np.zeros(len(rows), dtype=bool)
    if not len(rows) or width == 0:
        todo[:] = True
        return out_i, out_s, todo
    groups = model.item_t.shape[1] // GROUP
    m = min(groups, n + max(4, n // 2))
    ban_idx = np.flatnonzero(banned)
    slack = 10.0**-decimals
    k = model.item_t.shape[0] - 1
    buf = np.empty((min(block, len(rows)), model.item_t.shape[1]), dtype=np.float32)
    ubuf = np.ones((min(block, len(rows)), k + 1), dtype=np.float32)
    for lo in range(0, len(rows), block):
        r = rows[lo : lo + block]
        b = len(r)
        S, U = buf[:b], ubuf[:b]
        U[:, :k] = model.user_factors[r]
        np.matmul(U, model.item_t, out=S)  # scores plus the bias; -inf on the padding
        err = model.err_scale * (
            np.linalg.norm(U[:, :k].astype(np.float64), axis=1) * model.item_norm_max
            + model.bias_max
        )
        if len(ban_idx):
            S[:, ban_idx] = -np.inf
        _mask_block(S, masks, r)
        # a threshold with at least m items at or above it: the m-th best of the group maxima
        # (the groups are strided, item j in group j % groups: a reduction numpy vectorises)
        gmax = S.reshape(b, GROUP, groups).max(axis=1)
        # surely some score > 0 in float64 too (not cold); else the plain path decides
        warm = gmax.max(axis=1) > err + model.bias_max
        if m < groups:
            t = -np.partition(-gmax, m - 1, axis=1)[:, m - 1]
        else:  # a small catalogue: every finite item is a candidate
            t = np.full(b, -np.inf, dtype=np.float32)
        ok_rows = _answer_block(model, S, U[:, :k], t, n, decimals, err, slack, out_i, out_s, lo)
        todo[lo : lo + b] = ~(warm & ok_rows)
    return out_i, out_s, todo


def _answer_block(
    model: FactorTopN,
    S: NDArray[np.float32],
    U: NDArray[np.float32],
    t: NDArray[np.float32],
    n: int,
    decimals: int,
    err: FloatArray,
    slack: float,
    out_i: IntArray,
    out_s: FloatArray,
    lo: int,
) -> NDArray[np.bool_]:
    """Rank each row's items at or above its threshold ``t`` (rescored in float64) into
    ``out_*[lo:]``; True for the rows where nothing below ``t`` can reach the n-th item."""
    b, width = S.shape
    lowest = np.finfo(np.float32).min  # -inf (masked) items are never candidates
    flat = np.flatnonzero(np.maximum(t, lowest)[:, None] <= S)  # row-major: rows ascending
    row = flat // width
    v32 = S.reshape(-1)[flat].astype(np.float64)
    starts = np.searchsorted(row, np.arange(b))
    # the n-th best float32 score of each row (-inf when fewer than n candidates)
    o32 = np.lexsort((-v32, row))
    rank32 = np.arange(len(o32)) - starts[row[o32]]
    hit = rank32 == n - 1
    nth = np.full(b, -np.inf)
    nth[row[o32][hit]] = v32[o32][hit]
    # only items within the error bound of the n-th can be in the exact top n: rescore those
    reach = nth - 2.0 * err - slack
    near = v32 >= reach[row]
    flat, row = flat[near], row[near]
    col = flat % width
    exact = np.einsum("ck,ck->c", U[row].astype(np.float64), model.item_64[col])
    vals = np.round(exact + model.bias_64[col], decimals)
    order = np.lexsort((col, -vals, row))
    row, col, vals = row[order], col[order], vals[order]
    rank = np.arange(len(row)) - np.searchsorted(row, np.arange(b))[row]
    top = rank < n
    out_i[lo + row[top], rank[top]] = col[top]
    out_s[lo + row[top], rank[top]] = vals[top]
    below = t.astype(np.float64)
    return ~np.isfinite(below) | (below < reach)
