"""Ward hierarchical segmenter (fitted on a sample, extended by nearest centre)."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from automation.segments.base import BaseSegmenter, FloatArray, IntArray


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
        model = AgglomerativeClustering(n_clusters=self.n_segments, linkage="ward").fit(X)
        return np.asarray(model.labels_, dtype=np.int64)
