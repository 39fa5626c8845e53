"""Item-item similarity matrices: co-occurrence (cosine or BM25), text (TF-IDF), top-k pruning.

Every function returns a sparse ``items x items`` matrix ``S`` with a zero diagonal whose row ``j``
holds the (at most ``k``) nearest neighbours of item ``j``, so that ``profile @ S`` scores every
item by its similarity to what a user has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction.text import TfidfVectorizer

from automation.errors import ValidationError

SIMILARITIES = ("cosine", "bm25")


def prune_topk(S: sp.spmatrix, k: int | None) -> sp.csr_matrix:
    """Keep the ``k`` largest positive entries of each row (ties: the lower column first)."""
    S = sp.csr_matrix(S, dtype=np.float64)
    S.setdiag(0.0)
    S.data[S.data < 0] = 0.0
    S.eliminate_zeros()
    if k is None or k <= 0:
        return S
    counts = np.diff(S.indptr)
    if counts.max(initial=0) <= k:
        return S
    keep = np.zeros(S.nnz, dtype=bool)
    for r in np.flatnonzero(counts):
        lo, hi = S.indptr[r], S.indptr[r + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
            continue
        vals = S.data[lo:hi]
        order = np.lexsort((S.indices[lo:hi], -vals))[:k]
        keep[lo + order] = True
    out = sp.csr_matrix((S.data[keep], S.indices[keep], _indptr(S.indptr, keep)), shape=S.shape)
    out.sort_indices()
    return out


def _indptr(indptr: NDArray[np.int32], keep: NDArray[np.bool_]) -> NDArray[np.int64]:
    csum = np.concatenate([[0], np.cumsum(keep)])
    return csum[indptr].astype(np.int64)


def bm25_weight(X: sp.spmatrix, k1: float = 1.2, b: float = 0.75) -> sp.csr_matrix:
    """BM25 weights of a users x items matrix, items as documents and users as terms.

    A user who bought a little of everything (a wholesaler) is a common term: low weight.
    """
    if k1 <= 0 or not 0 <= b <= 1:
        raise ValidationError(f"bm25 k1={k1} should be > 0 and b={b} in [0, 1]")
    X = sp.csr_matrix(X, dtype=np.float64)
    n_items = X.shape[1]
    df = np.diff(X.indptr).astype(np.float64)  # items per user
    idf = np.log(n_items + 1.0) - np.log1p(df)
    C = X.tocsc()
    length = np.diff(C.indptr).astype(np.float64)  # users per item
    avg = length.mean() if len(length) and length.mean() > 0 else 1.0
    norm = k1 * (1.0 - b + b * length / avg)
    cols = np.repeat(np.arange(n_items), np.diff(C.indptr))
    data = C.data * (k1 + 1.0) / (C.data + norm[cols])
    W = sp.csc_matrix((data, C.indices, C.indptr), shape=X.shape).tocsr()
    rows = np.repeat(np.arange(X.shape[0]), np.diff(W.indptr))
    W.data = W.data * np.maximum(idf[rows], 0.0)
    return W


def cooccurrence_similarity(
    X: sp.spmatrix,
    similarity: str = "cosine",
    k: int | None = 100,
    shrink: float = 0.0,
    bm25_k1: float = 1.2,
    bm25_b: float = 0.75,
) -> sp.csr_matrix:
    """Item-item neighbours from a (users or orders) x items matrix.

    ``cosine``: binary co-occurrence over ``sqrt(n_i * n_j) + shrink``; ``bm25``: dot products of
    BM25-weighted columns. Only the ``k`` nearest neighbours of each item are kept.
    """
    if similarity not in SIMILARITIES:
        raise ValidationError(f"similarity={similarity!r} should be one of {SIMILARITIES}")
    if shrink < 0:
        raise ValidationError(f"shrink={shrink} should be >= 0")
    B = sp.csr_matrix(X, dtype=np.float64)
    if similarity == "cosine":
        B.data = np.ones_like(B.data)
        G = (B.T @ B).tocsr()
        n = np.sqrt(np.asarray(B.sum(axis=0)).ravel())
        rows = np.repeat(np.arange(G.shape[0]), np.diff(G.indptr))
        G.data = G.data / (n[rows] * n[G.indices] + shrink + 1e-12)
    else:
        W = bm25_weight(B, bm25_k1, bm25_b)
        G = (W.T @ W).tocsr()
    return prune_topk(G, k)


def text_similarity(
    texts: Sequence[str], k: int | None = 50, ngram_max: int = 2, min_df: int = 2
) -> sp.csr_matrix:
    """TF-IDF (word 1..``ngram_max``-grams, sublinear tf) cosine between item texts, top-k."""
    docs = [t if t else "" for t in texts]
    n = len(docs)
    if n == 0:
        return sp.csr_matrix((0, 0))
    vec = TfidfVectorizer(
        analyzer="word",
        ngram_range=(1, ngram_max),
        min_df=min(min_df, n),
        sublinear_tf=True,
        token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9]+\b",
    )
    try:
        T = vec.fit_transform(docs)
    except ValueError:  # no vocabulary at all (empty or numeric-only names)
        return sp.csr_matrix((n, n))
    return prune_topk((T @ T.T).tocsr(), k)


def row_max_normalise(M: NDArray[np.float64]) -> NDArray[np.float64]:
    """Divide each row by its maximum (rows without a positive entry are left as they are)."""
    mx = M.max(axis=1, keepdims=True) if M.shape[1] else np.ones((M.shape[0], 1))
    mx = np.where(mx > 0, mx, 1.0)
    return M / mx
