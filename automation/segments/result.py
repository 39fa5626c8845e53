"""What a segmentation returns, and small helpers shared by the refit and the update."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from automation.errors import ValidationError
from automation.store.segmentations import SegmentRecord


@dataclass
class SegmentationResult:
    version: int
    method: str
    k: int
    as_of: pd.Timestamp
    n_users: int
    quality: dict[str, Any]
    segments: list[SegmentRecord]
    k_selection: dict[str, Any] | None
    features: list[str]
    constant_features: list[str]  # constant when fitted; kept at the floor scale
    timings: dict[str, float] = field(default_factory=dict)
    #: Raw features of every user with a ``segment_id`` column (for reports; not serialised).
    members: pd.DataFrame | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "method": self.method,
            "k": self.k,
            "as_of": self.as_of.isoformat(),
            "n_users": self.n_users,
            "quality": {
                key: self.quality.get(key)
                for key in ("silhouette", "davies_bouldin", "calinski_harabasz", "stability_ari")
            },
            "k_selection": self.k_selection,
            "features": self.features,
            "constant_features": self.constant_features,
            "segments": [
                {
                    "id": s.segment_id,
                    "name": s.name,
                    "size": s.size,
                    "share": round(s.share, 6),
                    "outliers": s.n_outliers,
                    "profile": s.profile,
                    "quality": s.quality,
                }
                for s in self.segments
            ],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def parse_k(k: str | int) -> int | None:
    """``"auto"`` -> ``None``; an integer >= 2 otherwise."""
    if isinstance(k, str) and k.strip().lower() == "auto":
        return None
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise ValidationError(f"k={k!r} should be 'auto' or an integer >= 2") from None
    if value < 2:
        raise ValidationError(f"k={value} should be >= 2")
    return value


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
