"""``shoal segment``: features as of a time -> scaled matrix -> K -> segments -> named, stored.

The estimators know nothing of the store; this module is the one place that joins them: it reads
features, fits, scores, names, matches ids to the previous version and saves the version with
every membership in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from automation.errors import ValidationError
from automation.features.build import FeatureTable, build_features
from automation.features.scaling import FeatureScaler
from automation.segments.identity import match_segments
from automation.segments.naming import name_segments, segment_profiles
from automation.segments.quality import quality_report, stability_ari
from automation.segments.registry import METHODS, make_segmenter
from automation.segments.select_k import select_k
from automation.store.segmentations import (
    SegmentRecord,
    all_segment_ids,
    previous_members,
    save_segmentation,
)
from models import Segmentation

Progress = Callable[[str], None]
K_RANGE = range(2, 11)


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
    dropped_features: list[str]
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
            "dropped_features": self.dropped_features,
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


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def run_segmentation(
    engine: Engine,
    method: str = "kmeans",
    k: str | int = "auto",
    as_of: datetime | pd.Timestamp | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> SegmentationResult:
    """Segment every user as of ``as_of`` and store the result as a new version."""
    if method not in METHODS:
        raise ValidationError(f"method={method!r} should be one of {', '.join(METHODS)}")
    n_fixed = parse_k(k)
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with engine.connect() as conn:
        table: FeatureTable = build_features(conn, as_of, random_state=seed)
    timings["features"] = time.perf_counter() - t0
    raw = table.frame
    n_users = len(raw)
    if n_fixed is not None and n_users < n_fixed:
        raise ValidationError(f"n_users={n_users} should be >= n_segments={n_fixed}")
    if n_users < 3:
        raise ValidationError(f"n_users={n_users} should be >= 3 to form segments")
    scaler = FeatureScaler().fit(raw)
    X = scaler.transform(raw)
    say(f"features: {n_users} users x {X.shape[1]} features")

    t1 = time.perf_counter()
    selection = None
    if n_fixed is None and method != "hdbscan":
        say("choosing K")
        sel = select_k(X, method=method, k_range=K_RANGE, random_state=seed)
        chosen = sel.best_k
        selection = {
            "best_k": sel.best_k,
            "reason": sel.reason,
            "table": _clean(sel.table.to_dict("records")),
        }
    else:
        chosen = n_fixed if n_fixed is not None else 0
    timings["select_k"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    model = make_segmenter(method, chosen or None, random_state=seed).fit(X)
    labels = model.labels_
    timings["fit"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    if selection is not None:
        row = next(r for r in selection["table"] if r["k"] == chosen)
        stab = row.get("stability_ari")
    else:
        stab = stability_ari(
            lambda: make_segmenter(method, chosen or None, random_state=seed),
            X,
            n_bootstrap=5,
            random_state=seed,
        )
    report = quality_report(
        X,
        labels,
        model.cluster_centers_,
        scaler.features_,
        raw,
        random_state=seed,
        stability_ari=stab,
    )
    profiles = segment_profiles(raw, labels)
    outlier_share = pd.Series(model.outliers_).groupby(labels).mean().to_dict()
    names = name_segments(profiles, raw, outlier_share=outlier_share)
    label_series = pd.Series(labels, index=raw.index)
    with engine.connect() as conn:
        ids = match_segments(label_series, previous_members(conn), all_segment_ids(conn))
    timings["quality"] = time.perf_counter() - t3

    segs: list[SegmentRecord] = []
    for label in sorted(report["segments"]):
        q = report["segments"][label]
        mask = labels == label
        segs.append(
            SegmentRecord(
                segment_id=ids[label],
                label=int(label),
                name=names[label],
                size=int(mask.sum()),
                share=float(mask.mean()),
                n_outliers=int(model.outliers_[mask].sum()),
                centroid=([float(v) for v in model.cluster_centers_[label]] if label >= 0 else []),
                profile=_clean(q.get("profile", {})),
                quality=_clean({k2: v for k2, v in q.items() if k2 != "profile"}),
            )
        )
    members = pd.DataFrame(
        {
            "user_key": raw.index.to_numpy(),
            "segment_id": [ids[int(v)] for v in labels],
            "is_outlier": model.outliers_,
        }
    )
    overall = _clean(report["overall"])
    t4 = time.perf_counter()
    version = Segmentation(
        as_of=table.as_of.to_pydatetime(),
        method=method,
        k=len([s for s in segs if s.label >= 0]),
        seed=seed,
        n_users=n_users,
        is_current=False,
        quality=overall,
        k_selection=selection,
        features=scaler.features_,
        scaler=scaler.to_dict(),
        model={"class": type(model).__name__, "params": _clean(model.get_params())},
    )
    with engine.begin() as conn:
        version_id = save_segmentation(conn, version, segs, members)
    timings["store"] = time.perf_counter() - t4
    return SegmentationResult(
        version=version_id,
        method=method,
        k=version.k,
        as_of=table.as_of,
        n_users=n_users,
        quality=overall,
        segments=segs,
        k_selection=selection,
        features=scaler.features_,
        dropped_features=scaler.dropped_,
        timings=timings,
        members=raw.assign(segment_id=members["segment_id"].to_numpy()),
    )
