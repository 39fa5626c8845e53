"""Centroid segmenters: k-means and its mini-batch (incremental) variant."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

from automation.errors import ValidationError
from automation.segments.base import (
    BaseSegmenter,
    FloatArray,
    IntArray,
    _check_int,
    as_matrix,
    nearest_centroid,
)


class KMeansSegmenter(BaseSegmenter):
    """k-means (:class:`sklearn.cluster.KMeans`) on the inliers, with canonical segment ids.

    Parameters
    ----------
    n_segments : int, default 5
        Number of segments (>= 2).
    random_state : int or None, default None
        Seed of k-means++ and of the optional sample.
    outlier_quantile : float, default 0.995
        Rows above this quantile of robust distance (and above an absolute floor) are outliers:
        excluded from fitting, still labelled.
    sample_size : int or None, default None
        Fit on a seeded sample of at most this many inliers (``None``: all of them).
    n_init : int, default 4
        Number of k-means++ restarts.
    max_iter : int, default 300
        Lloyd iterations per restart.

    Attributes
    ----------
    labels_ : ndarray of shape (n_users,)
        Canonical segment of every training row (outliers included).
    cluster_centers_ : ndarray of shape (n_segments_, n_features)
        Inlier mean of each segment, in canonical order.
    n_segments_ : int
        Number of segments found.
    outliers_ : ndarray of bool, shape (n_users,)
        Rows flagged as outliers.
    n_features_in_ : int
        Number of features seen in ``fit``.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(n_samples=300, centers=3, random_state=0)
    >>> seg = KMeansSegmenter(n_segments=3, random_state=0).fit(X)
    >>> seg.n_segments_, seg.cluster_centers_.shape
    (3, (3, 2))
    >>> bool((seg.predict(X) == seg.labels_).all())
    True
    """

    def __init__(
        self,
        n_segments: int | None = 5,
        *,
        random_state: int | None = None,
        outlier_quantile: float = 0.995,
        sample_size: int | None = None,
        n_init: int = 4,
        max_iter: int = 300,
    ) -> None:
        self.n_segments = n_segments
        self.random_state = random_state
        self.outlier_quantile = outlier_quantile
        self.sample_size = sample_size
        self.n_init = n_init
        self.max_iter = max_iter

    def _validate_extra(self, n_rows: int) -> None:
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 1)

    def _fit_rows(self, X: FloatArray) -> IntArray:
        model = KMeans(
            n_clusters=self.n_segments,
            n_init=self.n_init,
            max_iter=self.max_iter,
            random_state=self.random_state,
        ).fit(X)
        return np.asarray(model.labels_, dtype=np.int64)


class MiniBatchKMeansSegmenter(BaseSegmenter):
    """Mini-batch k-means (:class:`sklearn.cluster.MiniBatchKMeans`) with stable incremental ids.

    ``fit`` runs :class:`~sklearn.cluster.MiniBatchKMeans` on the inliers and orders the segments
    canonically. :meth:`partial_fit` then folds new rows in with exact running means (each centre
    moves by ``(batch sum - n * centre) / total count``, the per-centre learning rate of
    mini-batch k-means) and never re-orders, re-seeds or drops a segment, so ids stay stable.

    Parameters
    ----------
    n_segments, random_state, outlier_quantile, sample_size
        As in :class:`~automation.segments.kmeans.KMeansSegmenter`.
    batch_size : int, default 1024
        Rows per mini-batch in ``fit``.
    n_init : int, default 3
        Initialisations tried by ``fit``.
    max_iter : int, default 100
        Passes over the data in ``fit``.

    Attributes
    ----------
    counts_ : ndarray of shape (n_segments_,)
        Inlier rows absorbed by each segment so far (the running-mean weights).
    labels_, cluster_centers_, n_segments_, outliers_, n_features_in_
        As in :class:`~automation.segments.kmeans.KMeansSegmenter`; after ``partial_fit``,
        ``labels_`` and ``outliers_`` describe the last batch.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(n_samples=600, centers=3, random_state=0)
    >>> seg = MiniBatchKMeansSegmenter(n_segments=3, random_state=0).fit(X[:300])
    >>> before = seg.predict(X[:300])
    >>> _ = seg.partial_fit(X[300:])
    >>> float((seg.predict(X[:300]) == before).mean()) > 0.95
    True
    """

    counts_: IntArray

    def __init__(
        self,
        n_segments: int | None = 5,
        *,
        random_state: int | None = None,
        outlier_quantile: float = 0.995,
        sample_size: int | None = None,
        batch_size: int = 1024,
        n_init: int = 3,
        max_iter: int = 100,
    ) -> None:
        self.n_segments = n_segments
        self.random_state = random_state
        self.outlier_quantile = outlier_quantile
        self.sample_size = sample_size
        self.batch_size = batch_size
        self.n_init = n_init
        self.max_iter = max_iter

    def _validate_extra(self, n_rows: int) -> None:
        _check_int("batch_size", self.batch_size, 1)
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 1)

    def _fit_rows(self, X: FloatArray) -> IntArray:
        model = MiniBatchKMeans(
            n_clusters=self.n_segments,
            batch_size=self.batch_size,
            n_init=self.n_init,
            max_iter=self.max_iter,
            random_state=self.random_state,
        ).fit(X)
        return np.asarray(model.labels_, dtype=np.int64)

    def _finish_fit(self, X_fit: FloatArray, raw_labels: IntArray, order: IntArray) -> None:
        counts = np.bincount(raw_labels[raw_labels >= 0], minlength=int(order.max()) + 1)
        self.counts_ = counts[order].astype(np.int64)

    def partial_fit(self, X: Any, y: object = None) -> Self:
        """Update the centres with the inliers of ``X`` without changing segment ids.

        The first call on an unfitted segmenter is a plain :meth:`fit`. Later calls flag outliers
        with the rule learned by that first fit and leave them out of the update.
        """
        if not hasattr(self, "cluster_centers_"):
            return self.fit(X)
        X = as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValidationError(
                f"X has {X.shape[1]} features but this segmenter was fitted on {self.n_features_in_}"
            )
        outliers = self.outlier_mask(X)
        inliers = X[~outliers]
        k, d = self.cluster_centers_.shape
        labels, _ = nearest_centroid(inliers, self.cluster_centers_)
        n_new = np.bincount(labels, minlength=k)
        sums = np.empty((k, d), dtype=np.float64)
        for j in range(d):
            sums[:, j] = np.bincount(labels, weights=inliers[:, j], minlength=k)
        counts = self.counts_ + n_new
        centers = self.cluster_centers_.copy()
        moved = n_new > 0
        centers[moved] += (sums[moved] - n_new[moved, None] * centers[moved]) / counts[moved, None]
        self.cluster_centers_ = centers
        self.counts_ = counts.astype(np.int64)
        self.outliers_ = outliers
        self.labels_ = self._assign(X)
        return self

    def _extra_state(self) -> dict[str, Any]:
        return {"counts_": self.counts_}

    def _set_extra_state(self, arrays: dict[str, Any]) -> None:
        self.counts_ = np.asarray(arrays["counts_"], dtype=np.int64)
