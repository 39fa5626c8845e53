"""Gaussian-mixture segmenter."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.mixture import GaussianMixture

from automation.errors import ValidationError
from automation.segments.base import BaseSegmenter, FloatArray, IntArray, _check_int

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


class GaussianMixtureSegmenter(BaseSegmenter):
    """Gaussian mixture (:class:`sklearn.mixture.GaussianMixture`) with canonical segment ids.

    The mixture is fitted on the inliers (a seeded sample of at most ``sample_size`` of them).
    Each component's centre is the mean of the fitted rows it claims (its ``means_`` if it claims
    none); components are ordered canonically by that centre. Rows are labelled by the mixture's own
    ``predict`` (highest posterior), mapped through ``mapping_`` to canonical ids, so segments may
    be elongated or nested rather than nearest-centre cells.

    Parameters
    ----------
    n_segments, random_state, outlier_quantile
        As in :class:`~automation.segments.kmeans.KMeansSegmenter`.
    sample_size : int or None, default 50_000
        Fit on at most this many inliers.
    covariance_type : {"full", "tied", "diag", "spherical"}, default "full"
    reg_covar : float, default 1e-6
        Added to the covariance diagonals.
    n_init : int, default 1
    max_iter : int, default 100

    Attributes
    ----------
    mixture_ : GaussianMixture
        The fitted mixture (raw component order).
    mapping_ : ndarray of shape (n_components,)
        Canonical id of each raw component.
    labels_, cluster_centers_, n_segments_, outliers_, n_features_in_
        As in :class:`~automation.segments.kmeans.KMeansSegmenter`.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(n_samples=300, centers=3, random_state=0)
    >>> seg = GaussianMixtureSegmenter(n_segments=3, random_state=0).fit(X)
    >>> sorted(set(seg.labels_.tolist()))
    [0, 1, 2]
    """

    mixture_: Any
    mapping_: IntArray

    def __init__(
        self,
        n_segments: int | None = 5,
        *,
        random_state: int | None = None,
        outlier_quantile: float = 0.995,
        sample_size: int | None = 50_000,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        n_init: int = 1,
        max_iter: int = 100,
    ) -> None:
        self.n_segments = n_segments
        self.random_state = random_state
        self.outlier_quantile = outlier_quantile
        self.sample_size = sample_size
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.n_init = n_init
        self.max_iter = max_iter

    def _validate_extra(self, n_rows: int) -> None:
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValidationError(
                f"covariance_type={self.covariance_type!r} should be one of {list(COVARIANCE_TYPES)}"
            )
        r = self.reg_covar
        if isinstance(r, bool) or not isinstance(r, int | float) or not r >= 0:
            raise ValidationError(f"reg_covar={r!r} should be a float >= 0")
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 1)

    def _fit_rows(self, X: FloatArray) -> IntArray:
        self.mixture_ = GaussianMixture(
            n_components=self.n_segments,
            covariance_type=self.covariance_type,
            reg_covar=self.reg_covar,
            n_init=self.n_init,
            max_iter=self.max_iter,
            random_state=self.random_state,
        ).fit(X)
        return np.asarray(self.mixture_.predict(X), dtype=np.int64)

    def _fallback_centers(self) -> FloatArray | None:
        return np.asarray(self.mixture_.means_, dtype=np.float64)

    def _finish_fit(self, X_fit: FloatArray, raw_labels: IntArray, order: IntArray) -> None:
        mapping = np.empty(len(order), dtype=np.int64)
        mapping[order] = np.arange(len(order))
        self.mapping_ = mapping

    def _assign(self, X: FloatArray) -> IntArray:
        return self.mapping_[np.asarray(self.mixture_.predict(X), dtype=np.int64)]

    def _extra_state(self) -> dict[str, Any]:
        m = self.mixture_
        return {
            "mapping_": self.mapping_,
            "weights_": m.weights_,
            "means_": m.means_,
            "covariances_": m.covariances_,
            "precisions_cholesky_": m.precisions_cholesky_,
        }

    def _set_extra_state(self, arrays: dict[str, Any]) -> None:
        self.mapping_ = np.asarray(arrays["mapping_"], dtype=np.int64)
        m = GaussianMixture(
            n_components=len(arrays["weights_"]),
            covariance_type=self.covariance_type,
            reg_covar=self.reg_covar,
        )
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            setattr(m, name, arrays[name])
        if self.covariance_type == "full":
            m.precisions_ = np.array([p @ p.T for p in m.precisions_cholesky_])
        elif self.covariance_type == "tied":
            m.precisions_ = m.precisions_cholesky_ @ m.precisions_cholesky_.T
        else:
            m.precisions_ = m.precisions_cholesky_**2
        m.converged_ = True
        m.n_iter_ = 0
        m.lower_bound_ = float("nan")
        m.n_features_in_ = arrays["means_"].shape[1]
        self.mixture_ = m
