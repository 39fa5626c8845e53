"""Robust outlier flagging for already-scaled feature matrices.

A row is an outlier when its robust distance from the coordinate-wise median is both above the
``quantile`` of all rows' distances (so at most about ``1 - quantile`` of the rows are flagged) and
above an absolute floor (so a clean, roughly Gaussian dataset gets few or no outliers at all).

The robust distance is the sum over features of squared robust z-scores
``((x - median) / scale) ** 2``. ``scale`` is ``1.4826 * MAD`` with two floors: the 1%-99% range
divided by its Gaussian width (so zero-inflated features whose MAD is 0 do not blow every non-zero
value up into an "outlier"), then the standard deviation, then 1. The absolute floor is the
Wilson-Hilferty approximation of the chi-square quantile at about 6 sigma for ``d`` features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from automation.errors import ValidationError

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Gaussian z used for the absolute floor: about one clean row in a billion exceeds it.
_FLOOR_Z = 6.0
#: Width of the 1%-99% range of a standard normal (2 * 2.3263).
_RANGE98_WIDTH = 4.6527


@dataclass(frozen=True)
class OutlierModel:
    """Fitted robust location/scale and the distance threshold above which a row is an outlier."""

    center: FloatArray
    scale: FloatArray
    threshold: float

    def score(self, X: FloatArray) -> FloatArray:
        """Sum of squared robust z-scores of each row (chunked to bound memory)."""
        out = np.empty(X.shape[0], dtype=np.float64)
        for start in range(0, X.shape[0], 10_000):
            z = (X[start : start + 10_000] - self.center) / self.scale
            out[start : start + 10_000] = np.einsum("ij,ij->i", z, z)
        return out

    def mask(self, X: FloatArray) -> BoolArray:
        """Boolean mask of the rows of ``X`` whose score exceeds the fitted threshold."""
        return self.score(X) > self.threshold


ROBUST_SAMPLE = 100_000


def absolute_floor(n_features: int) -> float:
    """Chi-square(``n_features``) quantile at about ``_FLOOR_Z`` sigma (Wilson-Hilferty)."""
    d = float(n_features)
    c = 2.0 / (9.0 * d)
    return d * (1.0 - c + _FLOOR_Z * np.sqrt(c)) ** 3


def _robust_scale(X: FloatArray, center: FloatArray) -> FloatArray:
    mad = np.median(np.abs(X - center), axis=0) * 1.4826
    lo, hi = np.quantile(X, [0.01, 0.99], axis=0)
    scale = np.maximum(mad, (hi - lo) / _RANGE98_WIDTH)
    tiny = 1e-12 * np.maximum(1.0, np.abs(center))
    std = X.std(axis=0)
    scale = np.where(scale > tiny, scale, std)
    return np.where(scale > tiny, scale, 1.0)


def fit_outlier_model(X: FloatArray, quantile: float) -> OutlierModel:
    """Fit the robust location/scale of ``X`` and the outlier threshold for ``quantile``.

    ``quantile=1.0`` disables flagging (the threshold is the largest score itself).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValidationError(f"outlier_quantile={quantile!r} should be in (0, 1]")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValidationError(f"X.shape={X.shape} should be a non-empty 2-D array")
    # Location and scale from an evenly spaced subset on large data (medians and quantiles are
    # the cost); the threshold is still taken over every row's score.
    step = max(1, X.shape[0] // ROBUST_SAMPLE)
    fit_rows = X[::step] if step > 1 else X
    center = np.median(fit_rows, axis=0)
    scale = _robust_scale(fit_rows, center)
    model = OutlierModel(center=center, scale=scale, threshold=np.inf)
    scores = model.score(X)
    threshold = max(float(np.quantile(scores, quantile)), absolute_floor(X.shape[1]))
    return OutlierModel(center=center, scale=scale, threshold=threshold)


def detect_outliers(X: FloatArray, quantile: float = 0.995) -> BoolArray:
    """Flag rows far from the bulk of ``X`` (see the module docstring for the rule).

    Parameters
    ----------
    X : ndarray of shape (n_users, n_features)
        Scaled features; not modified.
    quantile : float, default 0.995
        Only rows whose robust distance is above this quantile of all distances can be flagged.

    Returns
    -------
    ndarray of bool, shape (n_users,)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(1000, 3))
    >>> X[:4] *= 100
    >>> np.flatnonzero(detect_outliers(X)).tolist()
    [0, 1, 2, 3]
    """
    X = np.asarray(X, dtype=np.float64)
    return fit_outlier_model(X, quantile).mask(X)
