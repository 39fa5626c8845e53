"""Ward hierarchical segmenter (fitted on a sample, extended by nearest centre).

The merge tree is the one :class:`sklearn.cluster.AgglomerativeClustering` (``linkage="ward"``,
no connectivity) builds, computed with the same SciPy routine it calls, and cut at
``n_segments`` exactly as sklearn cuts it. The last few trees are cached by a digest of the data,
so :func:`~automation.segments.select_k.select_k` cuts every K from one tree per (re)sample
instead of rebuilding an O(n^2) tree per K.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
from scipy.cluster.hierarchy import ward

from automation.segments.base import BaseSegmenter, FloatArray, IntArray

_CACHE_SIZE = 8
_TREES: OrderedDict[tuple[tuple[int, ...], str], FloatArray] = OrderedDict()
_LOCK = threading.Lock()


def ward_linkage(X: FloatArray) -> FloatArray:
    """SciPy Ward linkage matrix of ``X`` (cached on a digest of the data)."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    key = (X.shape, hashlib.blake2b(X.tobytes(), digest_size=16).hexdigest())
    with _LOCK:
        if key in _TREES:
            _TREES.move_to_end(key)
            return _TREES[key]
    tree = np.asarray(ward(X), dtype=np.float64)
    with _LOCK:
        _TREES[key] = tree
        while len(_TREES) > _CACHE_SIZE:
            _TREES.popitem(last=False)
    return tree


def cut_linkage(tree: FloatArray, n_clusters: int) -> IntArray:
    """Flat labels ``0..n_clusters-1`` after undoing the last ``n_clusters - 1`` merges."""
    n = tree.shape[0] + 1
    n_merges = n - n_clusters
    root = np.arange(2 * n - 1)
    children = tree[:n_merges, :2].astype(np.int64)
    for j in range(n_merges - 1, -1, -1):
        root[children[j]] = root[n + j]
    return np.unique(root[:n], return_inverse=True)[1].astype(np.int64)


class WardSegmenter(BaseSegmenter):
    """Ward agglomerative clustering on a seeded sample, extended to all rows by nearest centre.

    Ward needs memory quadratic in the rows it clusters, so it is fitted on a seeded random
    sample of at most ``sample_size`` inliers; the centres (member means of that sample) then label
    every row, outliers included.

    Parameters
    ----------
    n_segments, random_state, outlier_quantile
        As in :class:`~automation.segments.kmeans.KMeansSegmenter`; ``random_state`` only seeds
        the sample (Ward itself is deterministic).
    sample_size : int or None, default 5_000
        Rows Ward is fitted on (``None``: all inliers; beware of the quadratic cost).

    Attributes
    ----------
    labels_, cluster_centers_, n_segments_, outliers_, n_features_in_
        As in :class:`~automation.segments.kmeans.KMeansSegmenter`.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(n_samples=300, centers=3, random_state=0)
    >>> seg = WardSegmenter(n_segments=3, random_state=0, sample_size=100).fit(X)
    >>> seg.labels_.shape, seg.n_segments_
    ((300,), 3)
    """

    def __init__(
        self,
        n_segments: int | None = 5,
        *,
        random_state: int | None = None,
        outlier_quantile: float = 0.995,
        sample_size: int | None = 5_000,
    ) -> None:
        self.n_segments = n_segments
        self.random_state = random_state
        self.outlier_quantile = outlier_quantile
        self.sample_size = sample_size

    def _fit_rows(self, X: FloatArray) -> IntArray:
        return cut_linkage(ward_linkage(X), int(self.n_segments or 2))
