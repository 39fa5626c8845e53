"""Segments that follow behaviour: forgetting centres, hysteresis, and the per-event path.

:class:`DynamicSegmenter` holds every segment's state in the scaled feature space of the last
refit: a stable business id, a centre, a decayed weight (member count), a spread (mean member
distance) and a radius (95th percentile of member distances). One :meth:`step` folds in the
users' current vectors:

1. **Assignment with hysteresis.** A user moves from segment ``a`` to the nearest ``b`` only if
   ``d(x, b)^2 < (1 - margin) * d(x, a)^2``, so noise does not flip people back and forth.
   Two margins: ``margin = 0.65`` (``b`` about 40% nearer than ``a``) for a user whose vector
   moved by time alone (recency and tenure grow every day: a smaller margin moves users back
   and forth across borders drawn by time), and ``margin_active = 0.3`` (about 16% nearer) for
   a user with new events in this update, whose evidence grew: users measured on few events at
   the refit become clear later, and one margin of 0.65 kept nearly all of them where the
   warm-up put them. Replaying the simulator's ``none`` run (seed 0, days 29-47, the day-28
   partition, this class without structure changes): ARI against the personas from day 38
   0.598 with 0.65 for everyone, 0.711 with 0.3 for active users (0.717 with 0.3 for everyone,
   0.745 with 0), users moving a day 0.08% / 0.48% / 0.55% / 2.19% (worst day 0.14% / 0.68% /
   0.74% / 2.90%). :func:`automation.segments.update.run_update` applies ``margin_active`` to
   daily (or more frequent) updates and moves it back towards ``margin`` as the time between
   updates grows (``1 / days`` of the difference): 0.3 for the active users of monthly updates
   broke the demo (Online Retail: 733 migrations in the first month, a split, a refit to K=2).
2. **Forgetting.** With ``a = 0.5 ** (dt / half_life)``, each centre becomes
   ``a * centre + (1 - a) * mean(members)`` and each weight ``a * weight + (1 - a) * count``
   (Spark's StreamingKMeans rule with a half-life in days, 7 by default: centres follow a
   week-old change halfway); the per-event path (:meth:`learn_one`) uses a half-life in events.
3. Structure changes come from :mod:`automation.segments.structure`.

Examples
--------
>>> import numpy as np
>>> X = np.array([[0.0, 0.0], [0.2, 0.0], [5.0, 5.0], [5.2, 5.0]])
>>> seg = DynamicSegmenter().init_from_partition(X, np.array(["seg-1", "seg-1", "seg-2", "seg-2"]))
>>> seg.predict_one(np.array([4.0, 4.0]))
'seg-2'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from automation.errors import ValidationError
from automation.segments.base import CHUNK_ROWS, nearest_centroid

NONE = ""


@dataclass
class SegmentStats:
    """One segment's live state (what ``segment_state`` stores)."""

    segment_id: str
    center: np.ndarray
    weight: float
    spread: float
    radius: float
    ref_center: np.ndarray  # the centre at the last refit: drift is measured from it
    ref_weight: float
    activity: list[float]  # share of members active per update (newest last)
    bimodality: float  # 2-means silhouette at the last refit (split baseline)
    status: str = "active"
    # mean behaviour of the members active in each update (newest last), and a change seen once
    # and awaiting confirmation by the next update (signed 1-based feature index, 0: none)
    profiles: list[list[float]] = field(default_factory=list)
    pending: int = 0
    # what the active members did in each update (pooled, :mod:`automation.segments.behaviour`),
    # the share of today's buyers with a high order value, and for a segment split off on order
    # value, the rule that keeps collecting such buyers from its parent ({"parent", "cut"})
    behaviour: list[list[float]] = field(default_factory=list)
    high_share: list[float] = field(default_factory=list)
    follow: dict[str, Any] = field(default_factory=dict)
    # for a segment split off on behaviour: its parent, and for how many more updates the
    # parent's behaviour profile still pools its active members ({"parent", "pool"})
    origin: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "center": [float(v) for v in self.center],
            "weight": float(self.weight),
            "spread": float(self.spread),
            "radius": float(self.radius),
            "ref_center": [float(v) for v in self.ref_center],
            "ref_weight": float(self.ref_weight),
            "activity": [float(v) for v in self.activity[-60:]],
            "bimodality": float(self.bimodality),
            "status": self.status,
            "profiles": [[round(float(v), 6) for v in p] for p in self.profiles[-15:]],
            "pending": int(self.pending),
            # JSON has no NaN (PostgreSQL's json type rejects it): a missing value is null.
            "behaviour": [[_json_num(v) for v in b] for b in self.behaviour[-15:]],
            "high_share": [_json_num(v) for v in self.high_share[-15:]],
            "follow": dict(self.follow),
            "origin": dict(self.origin),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentStats:
        return cls(
            segment_id=str(d["segment_id"]),
            center=np.asarray(d["center"], dtype=np.float64),
            weight=float(d["weight"]),
            spread=float(d["spread"]),
            radius=float(d["radius"]),
            ref_center=np.asarray(d.get("ref_center", d["center"]), dtype=np.float64),
            ref_weight=float(d.get("ref_weight", d["weight"])),
            activity=[float(v) for v in d.get("activity", [])],
            bimodality=float(d.get("bimodality", 0.0)),
            status=str(d.get("status", "active")),
            profiles=[[float(v) for v in p] for p in d.get("profiles", [])],
            pending=int(d.get("pending", 0)),
            behaviour=[[_num(v) for v in b] for b in d.get("behaviour", [])],
            high_share=[_num(v) for v in d.get("high_share", [])],
            follow=dict(d.get("follow") or {}),
            origin=dict(d.get("origin") or {}),
        )


def _json_num(v: Any) -> float | None:
    """A number for JSON, rounded to 6 places; NaN as ``None`` (null)."""
    f = float(v)
    return None if math.isnan(f) else round(f, 6)


def _num(v: Any) -> float:
    """A stored number; ``null`` (a NaN written as JSON) reads back as NaN."""
    return math.nan if v is None else float(v)


def member_distances(X: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of ``X`` to ``center`` (one centre, or one per row)."""
    out = np.empty(len(X))
    for start in range(0, len(X), CHUNK_ROWS):  # small temporaries: the same values, faster
        stop = start + CHUNK_ROWS
        diff = X[start:stop] - (center if center.ndim == 1 else center[start:stop])
        out[start:stop] = np.sqrt((diff**2).sum(axis=1))
    return out


class DynamicSegmenter:
    """Live segments with stable ids (see the module docstring).

    Parameters
    ----------
    half_life_days : float
        Centres and weights forget with this half-life in event time.
    half_life_events : float
        Half-life of the per-event path (:meth:`learn_one`), in events per segment.
    margin : float
        Hysteresis: the relative squared-distance gain needed to move a user.
    """

    def __init__(
        self,
        half_life_days: float = 7.0,
        half_life_events: float = 5000.0,
        margin: float = 0.65,
        margin_active: float = 0.3,
    ) -> None:
        self.half_life_days = half_life_days
        self.half_life_events = half_life_events
        self.margin = margin
        self.margin_active = margin_active

    # ----------------------------------------------------------------------------- state
    def init_from_partition(
        self, X: np.ndarray, labels: np.ndarray, bimodality: dict[str, float] | None = None
    ) -> DynamicSegmenter:
        """Start from a partition (a refit): one segment per distinct non-empty id."""
        self._validate()
        self.segments_: list[SegmentStats] = []
        for sid in sorted({str(v) for v in labels if v != NONE}, key=_id_order):
            members = X[labels == sid]
            center = members.mean(axis=0)
            d = member_distances(members, center)
            self.segments_.append(
                SegmentStats(
                    segment_id=sid,
                    center=center,
                    weight=float(len(members)),
                    spread=float(d.mean()) if len(d) else 0.0,
                    radius=float(np.quantile(d, 0.95)) if len(d) else 0.0,
                    ref_center=center.copy(),
                    ref_weight=float(len(members)),
                    activity=[],
                    bimodality=(bimodality or {}).get(sid, 0.0),
                )
            )
        return self

    def load_state(self, states: list[dict[str, Any]]) -> DynamicSegmenter:
        self._validate()
        self.segments_ = [SegmentStats.from_dict(s) for s in states]
        return self

    def state(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.segments_]

    def _validate(self) -> None:
        if self.half_life_days <= 0:
            raise ValidationError(f"half_life_days={self.half_life_days} should be > 0")
        if self.half_life_events <= 0:
            raise ValidationError(f"half_life_events={self.half_life_events} should be > 0")
        for name in ("margin", "margin_active"):
            if not 0 <= getattr(self, name) < 1:
                raise ValidationError(f"{name}={getattr(self, name)} should be in [0, 1)")

    @property
    def active(self) -> list[SegmentStats]:
        return [s for s in self.segments_ if s.status == "active"]

    def centers(self) -> tuple[list[str], np.ndarray]:
        act = self.active
        return [s.segment_id for s in act], np.stack([s.center for s in act])

    # ------------------------------------------------------------------------ assignment
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Nearest active segment id per row (no hysteresis)."""
        ids, centers = self.centers()
        idx, _ = nearest_centroid(np.asarray(X, dtype=np.float64), centers)
        return np.asarray(ids, dtype=object)[idx]

    def assign(
        self, X: np.ndarray, current: np.ndarray, active: np.ndarray | None = None
    ) -> np.ndarray:
        """New segment id per row: the nearest, unless the current one is nearly as close.

        ``active`` marks the rows with new events (``margin_active`` applies to them, ``margin``
        to the others; without it, ``margin`` to every row). Rows whose ``current`` is empty
        (users new since the last step) are remembered in ``newcomers_`` for the structure
        changes (a new kind of customer is born from them).
        """
        ids, centers = self.centers()
        X = np.asarray(X, dtype=np.float64)
        best, best_d2 = nearest_centroid(X, centers)
        out = np.asarray(ids, dtype=object)[best]
        cur_idx = _codes(ids, current)
        has = cur_idx >= 0
        self.newcomers_ = np.asarray(current, dtype=object) == NONE
        if has.any():
            cur_d2 = np.empty(len(X))
            for start in range(0, len(X), CHUNK_ROWS):  # squared distance to the current centre
                stop = start + CHUNK_ROWS
                diff = X[start:stop] - centers[np.maximum(cur_idx[start:stop], 0)]
                cur_d2[start:stop] = np.einsum("ij,ij->i", diff, diff)
            margin = np.full(len(X), self.margin)
            if active is not None:
                margin[np.asarray(active, bool)] = self.margin_active
            stay = has & (best_d2 >= (1.0 - margin) * cur_d2)
            out[stay] = np.asarray(current, dtype=object)[stay]
        return out

    # --------------------------------------------------------------------- learning
    def decay(self, X: np.ndarray, labels: np.ndarray, dt_days: float) -> None:
        """Move centres towards their members' current mean with the day half-life."""
        a = 0.5 ** (max(dt_days, 0.0) / self.half_life_days)
        act = self.active
        codes = _codes([s.segment_id for s in act], labels)
        order = np.argsort(codes, kind="stable")  # each segment's rows, in their order
        bounds = np.searchsorted(codes[order], np.arange(len(act) + 1))
        for i, s in enumerate(act):
            n = int(bounds[i + 1] - bounds[i])
            if n:
                members = X.take(order[bounds[i] : bounds[i + 1]], axis=0)
                s.center = a * s.center + (1 - a) * members.mean(axis=0)
                d = member_distances(members, s.center)
                s.spread = a * s.spread + (1 - a) * float(d.mean())
                s.radius = a * s.radius + (1 - a) * float(np.quantile(d, 0.95))
            s.weight = a * s.weight + (1 - a) * n

    def predict_one(self, x: np.ndarray) -> str:
        """The per-event path: the nearest active segment of one scaled vector."""
        return str(self.predict(np.asarray(x, dtype=np.float64).reshape(1, -1))[0])

    def learn_one(self, x: np.ndarray, current: str | None = None) -> str:
        """Assign one vector (with hysteresis from ``current``) and move that centre towards it."""
        x = np.asarray(x, dtype=np.float64).reshape(1, -1)
        sid = str(self.assign(x, np.array([current or NONE], dtype=object))[0])
        a = 0.5 ** (1.0 / self.half_life_events)
        for s in self.active:
            if s.segment_id == sid:
                s.center = a * s.center + (1 - a) * x[0]
        return sid


def _codes(ids: list[str], labels: np.ndarray) -> np.ndarray:
    """Position of each label in ``ids`` (-1: not there)."""
    return pd.Index(ids, dtype=object).get_indexer(pd.Index(labels, dtype=object))


def _id_order(sid: str) -> tuple[int, str]:
    tail = sid.rsplit("-", 1)[-1]
    return (int(tail), sid) if tail.isdigit() else (1 << 30, sid)
