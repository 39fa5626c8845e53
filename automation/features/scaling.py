"""Scaling raw features for clustering: heavy tails compressed, robust standardisation, floors.

Per column, in order:

1. **Transform.** Counts, money and durations are heavy-tailed: ``log1p`` (signed for money, which
   can be negative after refunds). Rates, shares, trends and SVD coordinates are kept as they are.
2. **Robust standardisation.** ``(x - median) / scale`` with ``scale = IQR / 1.349`` (the standard
   deviation for normal data), falling back to the standard deviation when the IQR is 0 (sparse
   shares), and never below a floor (0.05 for bounded features, 0.1 otherwise). The floor keeps a
   column that hardly varies today from exploding distances when it starts to vary tomorrow (a new
   category appearing).
3. **Clipping** at +-``clip`` scaled units, so one wholesale account cannot stretch an axis.
4. **Weights.** Affinity columns (``aff_*``, ``taste_*``) share one unit of weight among them, so
   that many categories do not outvote recency, frequency and value.

Columns with no spread at all when fitted (every user has no views, or nobody has bought from a
category yet) are kept at the floor scale and listed in ``constant_``: they add nothing to
distances today, and a change in them (a new category appearing) shows up tomorrow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from automation.errors import ValidationError

LOG_COLUMNS = {
    "recency_days",
    "inactive_days",
    "frequency",
    "avg_order_value",
    "tenure_days",
    "interpurchase_days",
    "distinct_items",
    "n_views",
    "n_carts",
}
SIGNED_LOG_COLUMNS = {"monetary"}
BOUNDED_PREFIXES = ("aff_", "refund_rate", "view_to_cart", "cart_to_purchase", "activity_trend")


def transform_column(name: str, values: np.ndarray) -> np.ndarray:
    if name in LOG_COLUMNS:
        return np.log1p(np.clip(values, 0, None))
    if name in SIGNED_LOG_COLUMNS:
        return np.sign(values) * np.log1p(np.abs(values))
    return values


def _is_affinity(name: str) -> bool:
    return name.startswith(("aff_", "taste_"))


class FeatureScaler:
    """Fit on a raw feature frame; transform frames with the same columns into a float matrix.

    Parameters
    ----------
    clip : float
        Scaled values are clipped to ``[-clip, clip]``.

    Examples
    --------
    >>> import pandas as pd
    >>> raw = pd.DataFrame({"frequency": [1, 2, 3, 50], "refund_rate": [0, 0, 0.1, 0.5]})
    >>> scaler = FeatureScaler().fit(raw)
    >>> scaler.transform(raw).shape
    (4, 2)
    """

    def __init__(self, clip: float = 6.0) -> None:
        self.clip = clip

    def fit(self, raw: pd.DataFrame) -> FeatureScaler:
        if self.clip <= 0:
            raise ValidationError(f"clip={self.clip} should be > 0")
        if raw.empty:
            raise ValidationError("cannot fit the scaler on an empty feature table")
        centers: dict[str, float] = {}
        scales: dict[str, float] = {}
        constant: list[str] = []
        for name in raw.columns:
            x = transform_column(name, raw[name].to_numpy(dtype="float64"))
            if np.nanstd(x) == 0:
                constant.append(name)
            q1, med, q3 = np.nanpercentile(x, [25, 50, 75])
            scale = (q3 - q1) / 1.349
            if scale <= 0:
                scale = float(np.nanstd(x))
            floor = 0.05 if name.startswith(BOUNDED_PREFIXES) or _is_affinity(name) else 0.1
            centers[name] = float(med)
            scales[name] = float(max(scale, floor))
        kept = list(raw.columns)
        if len(constant) == len(kept):
            raise ValidationError("every feature is constant: nothing to segment on")
        n_aff = sum(_is_affinity(c) for c in kept)
        self.feature_names_in_ = list(raw.columns)
        self.features_ = kept
        self.constant_ = constant
        self.center_ = centers
        self.scale_ = scales
        self.weight_ = {c: (1 / np.sqrt(n_aff) if _is_affinity(c) else 1.0) for c in kept}
        return self

    def transform(self, raw: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.features_ if c not in raw.columns]
        if missing:
            raise ValidationError(f"features missing from the table: {', '.join(missing)}")
        # Column by column into a feature-major buffer (contiguous writes), then one transpose:
        # the same values as stacking the columns, without a strided write per column.
        out = np.empty((len(self.features_), len(raw)), dtype=np.float64)
        for j, name in enumerate(self.features_):
            x = transform_column(name, raw[name].to_numpy(dtype="float64"))
            z = (np.nan_to_num(x, nan=self.center_[name]) - self.center_[name]) / self.scale_[name]
            np.multiply(np.clip(z, -self.clip, self.clip), self.weight_[name], out=out[j])
        return np.ascontiguousarray(out.T)

    def fit_transform(self, raw: pd.DataFrame) -> np.ndarray:
        return self.fit(raw).transform(raw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "features": self.features_,
            "constant": self.constant_,
            "center": self.center_,
            "scale": self.scale_,
            "weight": self.weight_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureScaler:
        s = cls(clip=float(d["clip"]))
        s.features_ = list(d["features"])
        s.constant_ = list(d.get("constant", []))
        s.feature_names_in_ = list(s.features_)
        s.center_ = {k: float(v) for k, v in d["center"].items()}
        s.scale_ = {k: float(v) for k, v in d["scale"].items()}
        s.weight_ = {k: float(v) for k, v in d["weight"].items()}
        return s
