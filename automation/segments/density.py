"""Density segmenter (HDBSCAN): the number of segments is found, noise is its own group."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.cluster import HDBSCAN

from automation.errors import ValidationError
from automation.segments.base import (
    BaseSegmenter,
    FloatArray,
    IntArray,
    _check_int,
    nearest_centroid,
)

NOISE = -1


class HDBSCANSegmenter(BaseSegmenter):
    """HDBSCAN (:class:`sklearn.cluster.HDBSCAN`) on a sample, extended with a noise radius.

    HDBSCAN runs on a seeded sample of at most ``sample_size`` inliers and decides the number of
    segments itself. Each cluster gets a centre (member mean) and a radius: the
    ``noise_quantile`` (95%) quantile of its sampled members' distances to that centre. Every row,
    sampled or not, is then labelled by its nearest centre, or ``-1`` (noise) when it lies beyond
    that centre's radius. This single rule keeps ``labels_ == predict(X_train)``; the price is that
    about 5% of each cluster's own outskirts are reported as noise, and that HDBSCAN noise points
    lying inside a radius join that cluster. Noise is reported as its own group, never dropped.

    Parameters
    ----------
    n_segments : None or int, default None
        Ignored (the density decides); accepted for a uniform constructor and validated if given.
    random_state, outlier_quantile
        As in :class:`~automation.segments.kmeans.KMeansSegmenter`; ``random_state`` only seeds
        the sample.
    sample_size : int or None, default 10_000
        Rows HDBSCAN is fitted on.
    min_cluster_size : int or None, default None
        ``None`` means ``max(10, n_sample // 100)``.
    min_samples : int or None, default None
        HDBSCAN's core-distance neighbourhood (``None``: ``min_cluster_size``).
    noise_quantile : float, default 0.95
        Quantile of member distances that defines each cluster's radius.

    Attributes
    ----------
    radius_ : ndarray of shape (n_segments_,)
        Distance beyond which a row is noise, per segment.
    min_cluster_size_ : int
        The ``min_cluster_size`` actually used.
    labels_, cluster_centers_, n_segments_, outliers_, n_features_in_
        As in :class:`~automation.segments.kmeans.KMeansSegmenter`; ``labels_`` may hold ``-1``
        and ``n_segments_`` (which may be 0) does not count the noise group.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(n_samples=600, centers=3, cluster_std=0.5, random_state=0)
    >>> seg = HDBSCANSegmenter(random_state=0).fit(X)
    >>> seg.n_segments_
    3
    >>> bool((seg.labels_ == -1).mean() < 0.15)
    True
    """

    _n_segments_optional = True
    radius_: FloatArray
    min_cluster_size_: int

    def __init__(
        self,
        n_segments: int | None = None,
        *,
        random_state: int | None = None,
        outlier_quantile: float = 0.995,
        sample_size: int | None = 10_000,
        min_cluster_size: int | None = None,
        min_samples: int | None = None,
        noise_quantile: float = 0.95,
    ) -> None:
        self.n_segments = n_segments
        self.random_state = random_state
        self.outlier_quantile = outlier_quantile
        self.sample_size = sample_size
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.noise_quantile = noise_quantile

    def _validate_extra(self, n_rows: int) -> None:
        if self.min_cluster_size is not None:
            _check_int("min_cluster_size", self.min_cluster_size, 2)
        if self.min_samples is not None:
            _check_int("min_samples", self.min_samples, 1)
        q = self.noise_quantile
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q <= 1.0:
            raise ValidationError(f"noise_quantile={q!r} should be a float in (0, 1]")

    def _fit_rows(self, X: FloatArray) -> IntArray:
        n = X.shape[0]
        mcs = self.min_cluster_size if self.min_cluster_size is not None else max(10, n // 100)
        self.min_cluster_size_ = int(min(mcs, n))
        min_samples = None if self.min_samples is None else min(int(self.min_samples), n)
        model = HDBSCAN(
            min_cluster_size=max(2, self.min_cluster_size_), min_samples=min_samples, copy=True
        ).fit(X)
        return np.asarray(model.labels_, dtype=np.int64)

    def _finish_fit(self, X_fit: FloatArray, raw_labels: IntArray, order: IntArray) -> None:
        radius = np.empty(len(order), dtype=np.float64)
        for c, r in enumerate(order):
            members = X_fit[raw_labels == r]
            dist = np.sqrt(((members - self.cluster_centers_[c]) ** 2).sum(axis=1))
            radius[c] = float(np.quantile(dist, self.noise_quantile))
        self.radius_ = radius

    def _assign(self, X: FloatArray) -> IntArray:
        labels, dist2 = nearest_centroid(X, self.cluster_centers_)
        if self.cluster_centers_.shape[0]:
            labels[dist2 > self.radius_[labels] ** 2] = NOISE
        return labels

    def _extra_state(self) -> dict[str, Any]:
        return {"radius_": self.radius_, "min_cluster_size_": np.array(self.min_cluster_size_)}

    def _set_extra_state(self, arrays: dict[str, Any]) -> None:
        self.radius_ = np.asarray(arrays["radius_"], dtype=np.float64)
        self.min_cluster_size_ = int(arrays["min_cluster_size_"])
