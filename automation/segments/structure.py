"""Structure changes of live segments, each with its evidence.

- **born**: users fitting no segment (farther from their centre than its radius) form a dense
  group far from every centre: it becomes a new segment with a new id.
- **retired**: a segment whose decayed weight fell below a share of the total; its members move
  to their nearest other segment.
- **merged**: two centres closer than a fraction of their spreads; the smaller is absorbed.
- **split**: a segment grown bimodal (the silhouette of a 2-means split rose above a floor and
  above its value at the last refit); the part farther from the centre gets a new id.
- **drifted**: the centre moved, the size changed, or the share of members active per update
  changed (River's Page-Hinkley detector on that series), beyond thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from river import drift as river_drift
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from automation.segments.dynamic import DynamicSegmenter, SegmentStats, member_distances


@dataclass
class StructurePolicy:
    birth_min_size: int = 20
    birth_min_share: float = 0.003
    birth_fit_factor: float = 1.0
    retire_share: float = 0.002
    merge_factor: float = 0.5
    split_min_silhouette: float = 0.5
    split_gain: float = 0.15
    drift_shift: float = 0.5
    drift_size: float = 0.3
    activity_change: float = 0.4
    refit_shift: float = 1.0
    seed: int = 0


def _t(kind: str, segments: list[str], evidence: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "segments": segments, "evidence": evidence}


def _top_moves(delta: np.ndarray, names: list[str], k: int = 3) -> list[dict[str, Any]]:
    order = np.argsort(-np.abs(delta))[:k]
    return [{"feature": names[i], "change": round(float(delta[i]), 3)} for i in order]


def bimodality(X: np.ndarray, seed: int = 0, sample: int = 2000) -> float:
    """Silhouette of a 2-means split of ``X`` (on a sample); 0 when too small to tell."""
    if len(X) < 10:
        return 0.0
    rng = np.random.default_rng(seed)
    S = X if len(X) <= sample else X[rng.choice(len(X), sample, replace=False)]
    lab = KMeans(2, n_init=2, random_state=seed).fit_predict(S)
    if len(set(lab.tolist())) < 2:
        return 0.0
    return float(silhouette_score(S, lab))


def apply_structure(
    seg: DynamicSegmenter,
    X: np.ndarray,
    labels: np.ndarray,
    active_mask: np.ndarray,
    names: list[str],
    new_id: Callable[[], str],
    policy: StructurePolicy | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], bool]:
    """Detect and apply structure changes; returns new labels, transitions, refit advice."""
    p = policy or StructurePolicy()
    n = len(X)
    min_size = max(p.birth_min_size, math.ceil(p.birth_min_share * n))
    labels = labels.copy()
    out: list[dict[str, Any]] = []

    def counts() -> dict[str, int]:
        vc = pd.Series(labels).value_counts()
        return {str(k): int(v) for k, v in vc.items()}

    # Retired: decayed weight too small a share of the total.
    total = sum(s.weight for s in seg.active) or 1.0
    for s in list(seg.active):
        if len(seg.active) > 2 and s.weight / total < p.retire_share:
            s.status = "retired"
            mask = labels == s.segment_id
            if mask.any():
                labels[mask] = seg.predict(X[mask])
            out.append(
                _t(
                    "retired",
                    [s.segment_id],
                    {
                        "weight": round(s.weight, 2),
                        "share": round(s.weight / total, 5),
                        "members_moved": int(mask.sum()),
                    },
                )
            )

    # Merged: two centres closer than their spreads allow.
    act = seg.active
    for i in range(len(act)):
        for j in range(i + 1, len(act)):
            a, b = act[i], act[j]
            if a.status != "active" or b.status != "active":
                continue
            dist = float(np.linalg.norm(a.center - b.center))
            if dist < p.merge_factor * (a.spread + b.spread):
                c = counts()
                keep, gone = (a, b) if c.get(a.segment_id, 0) >= c.get(b.segment_id, 0) else (b, a)
                moved = labels == gone.segment_id
                labels[moved] = keep.segment_id
                gone.status = "merged"
                out.append(
                    _t(
                        "merged",
                        [keep.segment_id, gone.segment_id],
                        {
                            "distance": round(dist, 3),
                            "spreads": [round(a.spread, 3), round(b.spread, 3)],
                            "members_moved": int(moved.sum()),
                        },
                    )
                )

    # Born: a dense group among users that fit no segment.
    ids, centers = seg.centers()
    pos = {sid: k for k, sid in enumerate(ids)}
    own = np.array([pos.get(str(v), -1) for v in labels])
    radius = np.array([s.radius for s in seg.active])
    d_own = np.where(own >= 0, member_distances(X, centers[np.maximum(own, 0)]), np.inf)
    poor = np.flatnonzero(d_own > p.birth_fit_factor * radius[np.maximum(own, 0)])
    if len(poor) >= min_size:
        B = X[poor]
        k = int(min(3, len(B) // min_size))
        km = KMeans(max(k, 1), n_init=2, random_state=p.seed).fit(B)
        med_spread = float(np.median([s.spread for s in seg.active]))
        for cl in range(km.n_clusters):
            members = np.flatnonzero(km.labels_ == cl)
            if len(members) < min_size:
                continue
            cc = B[members].mean(axis=0)
            compact = float(member_distances(B[members], cc).mean())
            sep = np.linalg.norm(centers - cc, axis=1)
            nearest = int(np.argmin(sep))
            if compact <= 1.5 * med_spread and sep[nearest] >= max(2.0 * compact, 1.5 * med_spread):
                child = new_id()
                labels[poor[members]] = child
                seg.segments_.append(_stats(child, B[members], 0.0))
                out.append(
                    _t(
                        "born",
                        [child],
                        {
                            "size": int(len(members)),
                            "compactness": round(compact, 3),
                            "separation": round(float(sep[nearest]), 3),
                            "nearest": ids[nearest],
                            "distinguishing": _top_moves(cc - centers[nearest], names),
                        },
                    )
                )

    # Split: grown bimodal.
    for s in list(seg.active):
        mask = labels == s.segment_id
        if mask.sum() < 2 * min_size:
            continue
        members = X[mask]
        score = bimodality(members, p.seed)
        if score < p.split_min_silhouette or score < s.bimodality + p.split_gain:
            continue
        km = KMeans(2, n_init=2, random_state=p.seed).fit(members)
        sizes = np.bincount(km.labels_, minlength=2)
        if sizes.min() < min_size:
            continue
        far = int(np.argmax(np.linalg.norm(km.cluster_centers_ - s.center, axis=1)))
        child = new_id()
        idx = np.flatnonzero(mask)[km.labels_ == far]
        labels[idx] = child
        seg.segments_.append(_stats(child, X[idx], score))
        s.center = km.cluster_centers_[1 - far].copy()
        s.bimodality = bimodality(X[labels == s.segment_id], p.seed)
        out.append(
            _t(
                "split",
                [s.segment_id, child],
                {
                    "bimodality": round(score, 3),
                    "baseline": round(s.bimodality, 3),
                    "sizes": [int(sizes[1 - far]), int(sizes[far])],
                    "moved_features": _top_moves(
                        km.cluster_centers_[far] - km.cluster_centers_[1 - far], names
                    ),
                },
            )
        )

    # Drifted: centre shift, size change, or a change in the share of members active.
    refit = False
    sizes_now = counts()
    for s in seg.active:
        size = sizes_now.get(s.segment_id, 0)
        members_active = labels == s.segment_id
        share = float(active_mask[members_active].mean()) if size else 0.0
        s.activity.append(share)
        shift = float(np.linalg.norm(s.center - s.ref_center)) / max(s.spread, 1e-6)
        size_change = abs(size - s.ref_weight) / max(s.ref_weight, 1.0)
        act_drift = _activity_drift(s.activity, p.activity_change)
        if shift > p.drift_shift or size_change > p.drift_size or act_drift is not None:
            evidence: dict[str, Any] = {
                "centre_shift": round(shift, 3),
                "size": [int(round(s.ref_weight)), size],
                "moved_features": _top_moves(s.center - s.ref_center, names),
            }
            if act_drift is not None:
                evidence["active_share"] = act_drift
            out.append(_t("drifted", [s.segment_id], evidence))
            refit = refit or shift > p.refit_shift or size_change > 2 * p.drift_size
            s.ref_center = s.center.copy()
            s.ref_weight = float(size)
            s.activity = s.activity[-1:]
    return labels, out, refit


def _stats(sid: str, members: np.ndarray, bimod: float) -> SegmentStats:
    center = members.mean(axis=0)
    d = member_distances(members, center)
    return SegmentStats(
        segment_id=sid,
        center=center,
        weight=float(len(members)),
        spread=float(d.mean()),
        radius=float(np.quantile(d, 0.95)),
        ref_center=center.copy(),
        ref_weight=float(len(members)),
        activity=[],
        bimodality=bimod,
    )


def _activity_drift(series: list[float], min_change: float) -> dict[str, float] | None:
    """Page-Hinkley over the series scaled by its baseline; a change at the newest point."""
    if len(series) < 6:
        return None
    base = float(np.median(series[:-1]))
    if base <= 0:
        return None
    last = series[-1]
    if abs(last - base) / base < min_change:
        return None
    detector = river_drift.PageHinkley(min_instances=5, delta=0.05, threshold=1.5, mode="both")
    fired = False
    for v in series:
        detector.update(v / base)
        fired = detector.drift_detected
    if not fired:
        return None
    return {"before": round(base, 4), "after": round(last, 4)}
