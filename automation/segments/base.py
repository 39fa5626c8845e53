"""Common contract of every segmenter: validation, outliers, canonical ids, assignment, persistence.

Canonical order
    After a method has clustered the (inlier, possibly sampled) rows, each cluster's centre is the
    mean of its members. Clusters are then sorted lexicographically by their centre rounded to
    ``CANONICAL_DECIMALS`` decimals (first feature first, ties broken by the next feature, ...).
    Segment id ``0`` is therefore the cluster with the smallest first scaled feature. Identical data
    and seed always give identical ids, and the ids do not depend on the row order whenever the
    method finds the same partition.

Assignment
    Every row, outliers included, gets the label of its nearest centre (the GMM and HDBSCAN classes
    refine this rule, see their docs), so ``labels_ == predict(X_train)`` always holds.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator

from automation.errors import ValidationError
from automation.segments.outliers import OutlierModel, fit_outlier_model

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

CANONICAL_DECIMALS = 6
CHUNK_ROWS = 10_000
_FORMAT = "shoal-segmenter/1"
_CLASSES: dict[str, type[BaseSegmenter]] = {}


def nearest_centroid(
    X: FloatArray, centers: FloatArray, chunk_rows: int = CHUNK_ROWS
) -> tuple[IntArray, FloatArray]:
    """Index of the nearest centre of each row and the squared distance to it (chunked BLAS)."""
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int64)
    dist2 = np.empty(n, dtype=np.float64)
    if centers.shape[0] == 0:
        labels.fill(-1)
        dist2.fill(np.inf)
        return labels, dist2
    c_sq = np.einsum("ij,ij->i", centers, centers)
    for start in range(0, n, chunk_rows):
        block = X[start : start + chunk_rows]
        d2 = c_sq[None, :] - 2.0 * (block @ centers.T)
        idx = np.argmin(d2, axis=1)
        x_sq = np.einsum("ij,ij->i", block, block)
        labels[start : start + chunk_rows] = idx
        dist2[start : start + chunk_rows] = np.maximum(d2[np.arange(len(idx)), idx] + x_sq, 0.0)
    return labels, dist2


def canonical_order(centers: FloatArray, decimals: int = CANONICAL_DECIMALS) -> IntArray:
    """Permutation sorting ``centers`` lexicographically on their rounded values (stable)."""
    if centers.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    rounded = np.round(centers, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    keys = [np.arange(centers.shape[0])] + [
        rounded[:, j] for j in range(centers.shape[1] - 1, -1, -1)
    ]
    return np.lexsort(keys).astype(np.int64)


def as_matrix(X: Any, name: str = "X") -> FloatArray:
    """``X`` as a 2-D finite float64 array (no copy when it already is one)."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise ValidationError(f"{name}.ndim={arr.ndim} should be 2 (n_users, n_features)")
    if arr.shape[1] == 0:
        raise ValidationError(f"{name}.shape={arr.shape} should have at least one feature")
    if not np.isfinite(arr).all():
        raise ValidationError(f"{name} should contain only finite values (found NaN or inf)")
    return arr


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValidationError(f"{name}={value!r} should be an integer")
    if value < minimum:
        raise ValidationError(f"{name}={value!r} should be >= {minimum}")
    return int(value)


class BaseSegmenter(BaseEstimator):
    """Shared behaviour of the segmenters; subclasses implement ``_fit_rows``.

    Parameters
    ----------
    n_segments : int
        Number of segments (>= 2).
    random_state : int or None
        Seed of the method and of every sample drawn.
    outlier_quantile : float
        See :func:`automation.segments.outliers.detect_outliers`; ``1.0`` disables it.
    sample_size : int or None
        Fit on a seeded sample of at most this many inlier rows (``None``: all of them).
    """

    #: Whether ``n_segments`` may be ``None`` (the method decides the number itself).
    _n_segments_optional: ClassVar[bool] = False

    # Learned attributes, declared for the type checker.
    labels_: IntArray
    cluster_centers_: FloatArray
    n_segments_: int
    outliers_: BoolArray
    n_features_in_: int
    outlier_center_: FloatArray
    outlier_scale_: FloatArray
    outlier_threshold_: float

    def __init__(
        self,
        n_segments: int | None = 5,
        *,
        random_state: int | None = None,
        outlier_quantile: float = 0.995,
        sample_size: int | None = None,
    ) -> None:
        self.n_segments = n_segments
        self.random_state = random_state
        self.outlier_quantile = outlier_quantile
        self.sample_size = sample_size

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls

    # ------------------------------------------------------------------ hooks for subclasses
    def _validate_extra(self, n_rows: int) -> None:
        """Check method-specific parameters (called once at the start of ``fit``)."""

    def _fit_rows(self, X: FloatArray) -> IntArray:
        """Cluster ``X`` (inlier, maybe sampled rows); return raw labels in ``0..m-1`` or ``-1``."""
        raise NotImplementedError

    def _fallback_centers(self) -> FloatArray | None:
        """Centre of each raw cluster to use when it has no member (``None``: drop it)."""
        return None

    def _finish_fit(self, X_fit: FloatArray, raw_labels: IntArray, order: IntArray) -> None:
        """Called after the canonical ``order`` (canonical id -> raw id) is known."""

    def _assign(self, X: FloatArray) -> IntArray:
        """Canonical label of each row; default: nearest centre."""
        return nearest_centroid(X, self.cluster_centers_)[0]

    def _extra_state(self) -> dict[str, FloatArray | IntArray]:
        return {}

    def _set_extra_state(self, arrays: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved."""

    # ------------------------------------------------------------------ validation helpers
    def _validate(self, X: FloatArray) -> None:
        n = X.shape[0]
        if self.n_segments is None:
            if not self._n_segments_optional:
                raise ValidationError(
                    f"n_segments=None is only allowed for density methods, "
                    f"not {type(self).__name__}"
                )
        else:
            k = _check_int("n_segments", self.n_segments, 2)
            if n < k:
                raise ValidationError(f"n_users={n} should be >= n_segments={k}")
        if n < 2:
            raise ValidationError(f"n_users={n} should be >= 2")
        if self.random_state is not None:
            _check_int("random_state", self.random_state, 0)
        q = self.outlier_quantile
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q <= 1.0:
            raise ValidationError(f"outlier_quantile={q!r} should be a float in (0, 1]")
        if self.sample_size is not None:
            size = _check_int("sample_size", self.sample_size, 2)
            if self.n_segments is not None and size < self.n_segments:
                raise ValidationError(
                    f"sample_size={size} should be >= n_segments={self.n_segments}"
                )
        self._validate_extra(n)

    def _sample(self, X: FloatArray) -> FloatArray:
        size = self.sample_size
        if size is None or X.shape[0] <= size:
            return X
        rng = np.random.default_rng(self.random_state)
        idx = np.sort(rng.choice(X.shape[0], size=size, replace=False))
        return X[idx]

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise ValidationError(f"this {type(self).__name__} is not fitted yet: call fit(X)")

    # ------------------------------------------------------------------ public API
    def fit(self, X: Any, y: object = None) -> Self:
        """Detect outliers, cluster the inliers, order clusters canonically, label every row."""
        X = as_matrix(X)
        self._validate(X)
        self._fit_outliers(X)
        X_fit = X[~self.outliers_] if (~self.outliers_).sum() >= (self.n_segments or 2) else X
        X_fit = self._sample(X_fit)
        raw = np.asarray(self._fit_rows(X_fit), dtype=np.int64)
        self._set_centers(X_fit, raw, self._fallback_centers())
        self.labels_ = self._assign(X)
        return self

    def _fit_outliers(self, X: FloatArray) -> None:
        model = fit_outlier_model(X, float(self.outlier_quantile))
        self.outlier_center_ = model.center
        self.outlier_scale_ = model.scale
        self.outlier_threshold_ = model.threshold
        self.n_features_in_ = X.shape[1]
        self.outliers_ = model.mask(X)

    def _set_centers(
        self, X_fit: FloatArray, raw: IntArray, fallback: FloatArray | None = None
    ) -> None:
        """Centres as member means per raw cluster, then canonical order; empty clusters use
        ``fallback[raw_id]`` when given and are dropped otherwise."""
        n_raw = int(raw.max()) + 1 if raw.size and raw.max() >= 0 else 0
        if fallback is not None:
            n_raw = max(n_raw, fallback.shape[0])
        kept, centers = [], []
        for r in range(n_raw):
            members = raw == r
            if members.any():
                centers.append(X_fit[members].mean(axis=0))
            elif fallback is not None:
                centers.append(np.asarray(fallback[r], dtype=np.float64))
            else:
                continue
            kept.append(r)
        d = X_fit.shape[1]
        c = np.asarray(centers, dtype=np.float64).reshape(len(kept), d)
        order = canonical_order(c)
        kept_arr = np.asarray(kept, dtype=np.int64)[order]
        self.cluster_centers_ = c[order]
        self.n_segments_ = int(len(kept_arr))
        self._finish_fit(X_fit, raw, kept_arr)

    def predict(self, X: Any) -> IntArray:
        """Canonical segment of each row of ``X`` (same rule as ``labels_``)."""
        self._check_fitted()
        X = as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValidationError(
                f"X has {X.shape[1]} features but this segmenter was fitted on {self.n_features_in_}"
            )
        return self._assign(X)

    def fit_predict(self, X: Any, y: object = None) -> IntArray:
        """``fit(X).labels_``."""
        return self.fit(X).labels_

    def outlier_mask(self, X: Any) -> BoolArray:
        """Flag rows of new data with the outlier rule learned in ``fit``."""
        self._check_fitted()
        model = OutlierModel(self.outlier_center_, self.outlier_scale_, self.outlier_threshold_)
        return model.mask(as_matrix(X))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write parameters and learned arrays to ``path`` as an ``.npz`` file (no pickle)."""
        self._check_fitted()
        meta = {
            "format": _FORMAT,
            "class": type(self).__name__,
            "params": self.get_params(),
            "n_segments_": self.n_segments_,
            "n_features_in_": self.n_features_in_,
            "outlier_threshold_": self.outlier_threshold_,
        }
        arrays: dict[str, Any] = {
            "cluster_centers_": self.cluster_centers_,
            "labels_": self.labels_,
            "outliers_": self.outliers_,
            "outlier_center_": self.outlier_center_,
            "outlier_scale_": self.outlier_scale_,
        }
        arrays.update({f"extra__{k}": v for k, v in self._extra_state().items()})
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BaseSegmenter:
        """Rebuild a fitted segmenter written by :meth:`save` (of ``cls`` or a subclass)."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("__meta__")))
        if meta.get("format") != _FORMAT:
            raise ValidationError(f"{os.fspath(path)!r} is not a saved Shoal segmenter")
        klass = _CLASSES.get(meta["class"])
        if klass is None or not issubclass(klass, cls):
            raise ValidationError(
                f"{os.fspath(path)!r} holds a {meta['class']}, not a {cls.__name__}"
            )
        obj = klass(**meta["params"])
        obj.n_segments_ = int(meta["n_segments_"])
        obj.n_features_in_ = int(meta["n_features_in_"])
        obj.outlier_threshold_ = float(meta["outlier_threshold_"])
        obj.cluster_centers_ = arrays["cluster_centers_"]
        obj.labels_ = arrays["labels_"]
        obj.outliers_ = arrays["outliers_"]
        obj.outlier_center_ = arrays["outlier_center_"]
        obj.outlier_scale_ = arrays["outlier_scale_"]
        obj._set_extra_state({k[7:]: v for k, v in arrays.items() if k.startswith("extra__")})
        return obj
