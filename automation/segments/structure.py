"""Structure changes of live segments, each with its evidence.

The features are cumulative (orders, spend, shares over a user's whole history), so a change of
behaviour moves them slowly. What reacts at once is what the members *active in this update*
do. Every update, each live segment is tested on two series against its previous updates:

- **activity**: the share of members active; a change beyond ``activity_z`` standard errors
  (the larger of the series' day-to-day deviation and the binomial error) and ``activity_change``
  relative, or a gradual one (River's Page-Hinkley detector on the standardised series);
- **profile**: the mean scaled behaviour of the active members (time-driven columns such as
  recency and tenure left out); a change of one feature beyond ``profile_z_high`` deviations,
  or beyond ``profile_z`` in two consecutive updates in the same direction.

Transitions:

- **born**: (a) a profile change caused by a group of newcomers (users with no segment before
  this update) that is distinct from the segment: the group gets a new id; (b) users that fit no
  segment (beyond its radius) and changed in this update form a dense group far from every
  centre.
- **split**: a profile change caused by a distinct minority of established members that no
  other segment fits (the minority gets a new id); or a segment grown bimodal (the 2-means
  silhouette rose above a floor and above its value at the last refit).
- **drifted**: any other activity or profile change, or the centre moved / the size changed
  beyond thresholds since the last reference.
- **retired**: the decayed weight fell below a share of the total; members move to the nearest.
- **merged**: two centres closer than a fraction of their spreads that also converged since the
  reference (or overlap almost entirely); the smaller is absorbed. A refit's own clusters may sit
  that close in sparse data: without convergence they are not merged right after it. A segment
  split off on behaviour and its parent are merged on behaviour only. Or two segments whose
  active members' behaviour converged (:func:`behaviour.merged_pairs`); the strongest such
  convergence first, one merge per segment per update.

After a transition the segment's reference restarts from the current update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from river import drift as river_drift
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from automation.segments.base import nearest_centroid
from automation.segments.behaviour import (
    PROFILE,
    BehaviourPolicy,
    high_value_share,
    merged_pairs,
    profile_of,
    value_changes,
    value_split,
)
from automation.segments.dynamic import DynamicSegmenter, SegmentStats, member_distances

TIME_FEATURES = ("recency_days", "tenure_days", "interpurchase_days", "inactive_days")


@dataclass
class StructurePolicy:
    birth_min_size: int = 20
    birth_min_share: float = 0.003
    birth_fit_factor: float = 1.0
    birth_separation: float = 2.0  # far group: separation in median spreads
    retire_share: float = 0.002
    merge_factor: float = 0.5  # merged: centres nearer than this share of the summed spreads
    merge_converged: float = 0.25  # ... and this much nearer than at the reference,
    merge_overlap: float = 0.3  # ... unless nearer than this share (one segment in two)
    split_min_silhouette: float = 0.55  # 0.50-0.51 on the simulator once new customers arrive
    split_gain: float = 0.15
    drift_shift: float = 0.5
    drift_size: float = 0.5
    activity_change: float = 0.25
    activity_z: float = 5.0
    activity_ph: float = 25.0
    profile_z: float = 5.0
    profile_z_high: float = 7.0
    profile_min_active: int = 20
    group_separation: float = 1.0  # a new group: distance from the segment in its spreads
    history: int = 7  # updates of reference before a change is called (a week of daily ones)
    window: int = 10
    refit_shift: float = 1.0
    seed: int = 0
    behaviour: BehaviourPolicy = field(default_factory=BehaviourPolicy)


def _top_moves(delta: np.ndarray, names: list[str], k: int = 3) -> list[dict[str, Any]]:
    order = np.argsort(-np.abs(delta))[:k]
    return [{"feature": names[i], "change": round(float(delta[i]), 3)} for i in order]


def bimodality(
    X: np.ndarray, seed: int = 0, sample: int = 2000, mask: np.ndarray | None = None
) -> float:
    """Silhouette of a 2-means split of ``X`` (of its ``mask`` rows; on a sample); 0 when too
    small to tell. With ``mask``, only the sampled rows are copied."""
    rows = np.arange(len(X)) if mask is None else np.flatnonzero(mask)
    if len(rows) < 10:
        return 0.0
    rng = np.random.default_rng(seed)
    S = X[rows] if len(rows) <= sample else X[rows[rng.choice(len(rows), sample, replace=False)]]
    lab = KMeans(2, n_init=2, random_state=seed).fit_predict(S)
    if len(set(lab.tolist())) < 2:
        return 0.0
    return float(silhouette_score(S, lab))


@dataclass
class _Step:
    """One structure pass: the data, the policy and the transitions found so far."""

    seg: DynamicSegmenter
    X: np.ndarray
    labels: np.ndarray
    active: np.ndarray
    newcomers: np.ndarray
    names: list[str]
    new_id: Callable[[], str]
    p: StructurePolicy
    min_size: int
    out: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, segments: list[str], evidence: dict[str, Any]) -> None:
        self.out.append({"type": kind, "segments": segments, "evidence": evidence})

    def child(self, members: np.ndarray, bimod: float = 0.0, split_of: str | None = None) -> str:
        """A new segment of ``members``; ``split_of``: the parent of a behaviour split, whose
        profile pools the child's active members for the behaviour window (see _in_behaviour)."""
        sid = self.new_id()
        self.labels[members] = sid
        stats = _stats(sid, self.X[members], bimod)
        if split_of is not None:
            stats.origin = {"parent": split_of, "pool": self.p.behaviour.window}
        self.seg.segments_.append(stats)
        return sid

    def touched(self) -> set[str]:
        return {t["segments"][0] for t in self.out}


def apply_structure(
    seg: DynamicSegmenter,
    X: np.ndarray,
    labels: np.ndarray,
    active_mask: np.ndarray,
    names: list[str],
    new_id: Callable[[], str],
    policy: StructurePolicy | None = None,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], bool]:
    """Detect and apply structure changes; returns new labels, transitions, refit advice.

    ``counts``: what each active row did in this update (:func:`behaviour.increments`, rows in
    the order of ``active_mask``'s true entries); without it, merges and splits are seen in the
    features only."""
    p = policy or StructurePolicy()
    n = len(X)
    fresh = getattr(seg, "newcomers_", None)  # rows with no segment before this step
    newcomers = fresh if fresh is not None and len(fresh) == n else np.zeros(n, dtype=bool)
    min_size = max(p.birth_min_size, math.ceil(p.birth_min_share * n))
    st = _Step(seg, X, labels.copy(), np.asarray(active_mask, bool), newcomers, names, new_id,
               p, min_size)  # fmt: skip
    labels = st.labels

    # Retired: decayed weight too small a share of the total.
    total = sum(s.weight for s in seg.active) or 1.0
    for s in list(seg.active):
        if len(seg.active) > 2 and s.weight / total < p.retire_share:
            s.status = "retired"
            mask = labels == s.segment_id
            if mask.any():
                labels[mask] = seg.predict(X[mask])
            share, moved = round(s.weight / total, 5), int(mask.sum())
            st.add("retired", [s.segment_id],
                   {"weight": round(s.weight, 2), "share": share, "members_moved": moved})  # fmt: skip

    # Merged: two centres closer than their spreads allow.
    act = seg.active
    for i, a in enumerate(act):
        for b in act[i + 1 :]:
            dist = float(np.linalg.norm(a.center - b.center))
            if a.status != "active" or b.status != "active" or _split_pair(a, b):
                continue
            ref = float(np.linalg.norm(a.ref_center - b.ref_center))
            overlap = dist / max(a.spread + b.spread, 1e-9)
            converged = dist <= (1 - p.merge_converged) * ref
            if overlap < p.merge_factor and (converged or overlap < p.merge_overlap):
                c = pd.Series(labels).value_counts()
                keep, gone = (a, b) if c.get(a.segment_id, 0) >= c.get(b.segment_id, 0) else (b, a)
                mask = labels == gone.segment_id
                labels[mask] = keep.segment_id
                gone.status = "merged"
                st.add("merged", [keep.segment_id, gone.segment_id],
                       {"distance": round(dist, 3), "reference_distance": round(ref, 3),
                        "spreads": [round(a.spread, 3), round(b.spread, 3)],
                        "members_moved": int(mask.sum())})  # fmt: skip

    if counts is not None and len(counts) == int(st.active.sum()):
        _in_behaviour(st, counts)
    _born_far(st)
    _behaviour(st)

    # Split: grown bimodal.
    for s in list(seg.active):
        mask = labels == s.segment_id
        if mask.sum() < 2 * min_size or s.segment_id in st.touched():
            continue
        score, baseline = bimodality(X, p.seed, mask=mask), s.bimodality
        if score < p.split_min_silhouette or score < baseline + p.split_gain:
            continue
        km = KMeans(2, n_init=2, random_state=p.seed).fit(X[mask])
        sizes = np.bincount(km.labels_, minlength=2)
        if sizes.min() < min_size:
            continue
        far = int(np.argmax(np.linalg.norm(km.cluster_centers_ - s.center, axis=1)))
        child = st.child(np.flatnonzero(mask)[km.labels_ == far], score)
        s.center = km.cluster_centers_[1 - far].copy()
        s.bimodality = bimodality(X[labels == s.segment_id], p.seed)
        moves = _top_moves(km.cluster_centers_[far] - km.cluster_centers_[1 - far], names)
        st.add("split", [s.segment_id, child],
               {"bimodality": round(score, 3), "baseline": round(baseline, 3),
                "sizes": [int(sizes[1 - far]), int(sizes[far])], "moved_features": moves})  # fmt: skip

    # Drifted: centre shift or size change since the reference.
    refit = False
    sizes_now = pd.Series(labels).value_counts()
    done = st.touched()
    for s in seg.active:
        size = int(sizes_now.get(s.segment_id, 0))
        shift = float(np.linalg.norm(s.center - s.ref_center)) / max(s.spread, 1e-6)
        size_change = abs(size - s.ref_weight) / max(s.ref_weight, 1.0)
        if s.segment_id in done or (shift <= p.drift_shift and size_change <= p.drift_size):
            continue
        st.add("drifted", [s.segment_id],
               {"centre_shift": round(shift, 3), "size": [int(round(s.ref_weight)), size],
                "moved_features": _top_moves(s.center - s.ref_center, names)})  # fmt: skip
        refit = refit or shift > p.refit_shift or size_change > 2 * p.drift_size
        _restart(s, size)
    return labels, st.out, refit


def _split_pair(a: SegmentStats, b: SegmentStats) -> bool:
    """Whether one of the two was split off the other on behaviour (it follows that parent).

    Such a child starts from members whose cumulative features are still the parent's and
    collects more of them as they change habits, so its centre approaches the parent's for
    weeks: a geometric merge then undid every behaviour split within a week (the simulator's
    premium bargain hunters, merged back on days 43-44). The behaviour test decides instead."""
    return a.follow.get("parent") == b.segment_id or b.follow.get("parent") == a.segment_id


def _in_behaviour(st: _Step, counts: np.ndarray) -> None:
    """Merges and splits seen in what the active members did (:mod:`.behaviour`)."""
    bp, rows = st.p.behaviour, np.flatnonzero(st.active)
    lab, values = st.labels[rows], value_changes(counts)
    high = values > bp.split_value_gap  # spent well above their usual per bought line
    for s in st.seg.active:  # segments split off on spend keep collecting such buyers
        if s.follow and (pick := (lab == s.follow["parent"]) & high).any():
            st.labels[rows[pick]] = lab[pick] = s.segment_id
    young = {k.segment_id: k.origin["parent"] for k in st.seg.active if k.origin.get("pool")}
    for kid in st.seg.active:
        if kid.origin.get("pool"):
            kid.origin["pool"] -= 1
    for s in st.seg.active:
        mask = lab == s.segment_id
        v = values[mask & ~np.isnan(values)]
        share = high_value_share(v, bp)
        s.high_share = [*s.high_share[-bp.window - 2 :], math.nan if share is None else share]
        # the profile of the members it had before its recent behaviour splits: its series then
        # compares like with like (seed 1 of the simulator's merge split the browsers who began
        # to buy off on the shift day; what was left stopped buying, far from the refunders)
        pool = mask | np.isin(lab, [k for k, parent in young.items() if parent == s.segment_id])
        enough = int(pool.sum()) >= bp.min_active
        prof = profile_of(counts[pool]) if enough else [math.nan] * len(PROFILE)
        s.behaviour = [*s.behaviour[-bp.window - 2 :], prof]
        evidence = value_split(s.high_share, len(v), bp) if share is not None else None
        members = rows[mask & high]
        if evidence is None or len(members) < st.p.birth_min_size or mask.sum() < 2 * st.min_size:
            continue
        child = st.child(members, split_of=s.segment_id)
        lab[mask & high] = child
        st.seg.segments_[-1].follow = {"parent": s.segment_id, "cut": bp.split_value_gap}
        evidence.update(value_rise=bp.split_value_gap, size=int(len(members)))
        st.add("split", [s.segment_id, child], evidence)
        s.high_share = []
        _restart(s, int((st.labels == s.segment_id).sum()))
    segs = {s.segment_id: s for s in st.seg.active if s.segment_id not in st.touched()}
    pairs = merged_pairs({k: v.behaviour for k, v in segs.items()}, bp)
    merged: set[str] = set()
    # The strongest convergence first, and one merge per segment per update: when one kind of
    # customer changes, its segment's profile may come near several others' at once (the
    # simulator's browsers, blended with the refunders, also came near the dormant segment's few
    # active members: z 18 against 34 for the refunders).
    for a, b, evidence in sorted(pairs, key=lambda t: -t[2]["behaviour_distance"]["z"]):
        if merged & {a, b}:
            continue
        merged |= {a, b}
        c = pd.Series(st.labels).value_counts()
        keep, gone = (segs[a], segs[b]) if c.get(a, 0) >= c.get(b, 0) else (segs[b], segs[a])
        gone.status = "merged"
        moved = _absorb(st, keep, np.flatnonzero(st.labels == gone.segment_id))
        evidence.update(
            members_moved=moved, members_elsewhere=int(c.get(gone.segment_id, 0)) - moved
        )
        st.add("merged", [keep.segment_id, gone.segment_id], evidence)
        keep.behaviour, keep.high_share = [], []
        _restart(keep, int((st.labels == keep.segment_id).sum()))


def _absorb(st: _Step, keep: SegmentStats, rows: np.ndarray) -> int:
    """The absorbed segment's members join ``keep``, unless another segment is clearly nearer
    (the hysteresis margin of users without new events); how many joined ``keep``.

    All of them joined before: the simulator's refunders' segment also held dormant customers
    and bargain hunters, and its merge moved 1.6-1.7% of the users whose persona never changed
    to the browsers' segment in one update (above the 1% a day bound)."""
    ids, centers = st.seg.centers()
    best, best_d2 = nearest_centroid(st.X[rows], centers)
    keep_d2 = ((st.X[rows] - keep.center) ** 2).sum(axis=1)
    go = best_d2 < (1.0 - st.seg.margin) * keep_d2
    st.labels[rows] = np.where(go, np.asarray(ids, dtype=object)[best], keep.segment_id)
    return int((~go).sum())


def _born_far(st: _Step) -> None:
    """Born (b): users that changed in this update, fit no segment and form a far dense group."""
    seg, X, p = st.seg, st.X, st.p
    ids, centers = seg.centers()
    pos = {sid: k for k, sid in enumerate(ids)}
    cand = np.flatnonzero(st.active | st.newcomers)
    own = np.array([pos.get(str(v), -1) for v in st.labels[cand]], dtype=np.int64)
    radius = np.array([s.radius for s in seg.active])
    d_own = np.where(own >= 0, member_distances(X[cand], centers[np.maximum(own, 0)]), np.inf)
    poor = cand[d_own > p.birth_fit_factor * radius[np.maximum(own, 0)]]
    if len(poor) < st.min_size:
        return
    B = X[poor]
    k = int(min(3, len(B) // st.min_size))
    km = KMeans(max(k, 1), n_init=2, random_state=p.seed).fit(B)
    med_spread = float(np.median([s.spread for s in seg.active]))
    for cl in range(km.n_clusters):
        members = np.flatnonzero(km.labels_ == cl)
        if len(members) < st.min_size:
            continue
        cc = B[members].mean(axis=0)
        compact = float(member_distances(B[members], cc).mean())
        sep = np.linalg.norm(centers - cc, axis=1)
        near = int(np.argmin(sep))
        if compact <= 1.5 * med_spread and sep[near] >= max(
            2.0 * compact, p.birth_separation * med_spread
        ):
            child = st.child(poor[members])
            st.add("born", [child],
                   {"size": int(len(members)), "compactness": round(compact, 3),
                    "separation": round(float(sep[near]), 3), "nearest": ids[near],
                    "distinguishing": _top_moves(cc - centers[near], st.names)})  # fmt: skip


def _behaviour(st: _Step) -> None:
    """Activity and profile changes of each segment: born (a), split (a) or drifted."""
    names, X, p = st.names, st.X, st.p
    keep = [i for i, f in enumerate(names) if f not in TIME_FEATURES]
    cols = np.array(keep if len(names) == X.shape[1] else range(X.shape[1]))
    skip = st.touched()
    for s in list(st.seg.active):
        mask = st.labels == s.segment_id
        size = int(mask.sum())
        if not size or s.segment_id in skip:
            continue
        act_idx = np.flatnonzero(mask & st.active)
        s.activity.append(len(act_idx) / size)
        activity = _activity_change(s.activity, size, p)
        profile = None
        if len(act_idx) >= p.profile_min_active:
            profile = _profile_change(s, X[act_idx][:, cols], p, [names[i] for i in cols])
        if activity is None and profile is None:
            continue
        group = _group(st, s, cols, act_idx, profile) if profile is not None else None
        if group is None:
            shift = float(np.linalg.norm(s.center - s.ref_center)) / max(s.spread, 1e-6)
            evidence: dict[str, Any] = {"size": [int(round(s.ref_weight)), size]}
            evidence["centre_shift"] = round(shift, 3)
            if activity is not None:
                evidence["active_share"] = activity
            if profile is not None:
                evidence["active_profile"] = profile["evidence"]
            st.add("drifted", [s.segment_id], evidence)
            _restart(s, size)
            continue
        kind, members, evidence = group
        child = st.child(members, split_of=s.segment_id if kind == "split" else None)
        st.add(kind, [child] if kind == "born" else [s.segment_id, child], evidence)
        _restart(s, int((st.labels == s.segment_id).sum()))


def _activity_change(series: list[float], size: int, p: StructurePolicy) -> dict[str, Any] | None:
    """The newest share of members active against the previous ones (z-test, Page-Hinkley)."""
    hist = np.asarray(series[-(p.window + 1) : -1], dtype=np.float64)
    if len(hist) < p.history:
        return None
    mu, last = float(hist.mean()), series[-1]
    if mu <= 0 or abs(last - mu) / mu < p.activity_change:
        return None
    binomial = math.sqrt(mu * (1 - mu) / max(size, 1))
    z = (last - mu) / max(float(hist.std(ddof=1)), binomial, 1e-6)
    fired = abs(z) >= p.activity_z
    if not fired:  # a gradual change: Page-Hinkley on the series standardised by its start
        base = np.asarray(series[: p.history], dtype=np.float64)
        scale = max(float(base.std(ddof=1)), binomial, 1e-6)
        ph = river_drift.PageHinkley(p.history, delta=0.5, threshold=p.activity_ph, mode="both")
        for v in series:
            ph.update((v - float(base.mean())) / scale)
            fired = ph.drift_detected
    return {"before": round(mu, 4), "after": round(last, 4), "z": round(z, 2)} if fired else None


def _profile_change(
    s: SegmentStats, A: np.ndarray, p: StructurePolicy, names: list[str]
) -> dict[str, Any] | None:
    """The newest mean behaviour of the active members against the previous updates'.

    A change seen once (``profile_z``) stays out of the reference until the next update
    confirms it (the same feature, the same direction) or not.
    """
    prof = A.mean(axis=0)
    past = s.profiles[:-1] if s.pending else s.profiles
    hist = np.asarray(past[-p.window :], dtype=np.float64)
    s.profiles = [*s.profiles[-p.window :], prof.tolist()]
    if len(hist) < p.history or hist.shape[1] != len(prof):
        s.pending = 0
        return None
    mu = hist.mean(axis=0)
    sd = np.maximum(hist.std(axis=0, ddof=1), A.std(axis=0) / math.sqrt(len(A)))
    z = (prof - mu) / np.maximum(sd, 1e-6)
    j = int(np.argmax(np.abs(z)))
    was = abs(s.pending) - 1
    confirmed = was >= 0 and np.sign(z[was]) * np.sign(s.pending) * abs(z[was]) >= p.profile_z
    fired = bool(abs(z[j]) >= p.profile_z_high or confirmed)
    s.pending = int(np.sign(z[j])) * (j + 1) if abs(z[j]) >= p.profile_z and not fired else 0
    if not fired:
        return None
    top = np.argsort(-np.abs(z))[:3]
    feats = [{"feature": names[i], "before": round(float(mu[i]), 3),
              "after": round(float(prof[i]), 3), "z": round(float(z[i]), 1)} for i in top]  # fmt: skip
    return {"mu": mu, "delta": prof - mu, "evidence": {"active_members": len(A), "features": feats}}


def _group(
    st: _Step, s: SegmentStats, cols: np.ndarray, act_idx: np.ndarray, profile: dict[str, Any]
) -> tuple[str, np.ndarray, dict[str, Any]] | None:
    """Who caused a profile change: a distinct group (born / split), or ``None`` (drifted).

    The active members are cut in two along the direction of the change; the far side is a
    group if it is big enough, mostly newcomers (born) or a minority of the active members
    (split), at least ``group_separation`` spreads from the segment's centre and nearer to it
    than to any other segment.
    """
    X, p = st.X, st.p
    u = profile["delta"] / max(float(np.linalg.norm(profile["delta"])), 1e-9)
    proj = (X[act_idx][:, cols] - profile["mu"]) @ u
    group = act_idx[proj > _otsu(proj)]
    if len(group) < st.min_size:
        return None
    new_share = float(st.newcomers[group].mean())
    if new_share < 0.5 and len(group) > 0.5 * len(act_idx):  # most active members changed
        return None
    cc = X[group].mean(axis=0)
    compact = float(member_distances(X[group], cc).mean())
    ids, centers = st.seg.centers()
    dist = np.linalg.norm(centers - cc, axis=1)
    own = float(dist[ids.index(s.segment_id)])
    others = np.delete(dist, ids.index(s.segment_id))
    if own < p.group_separation * s.spread or compact > 1.5 * s.spread:
        return None
    if len(others) and float(others.min()) < own:
        return None
    evidence = {"size": int(len(group)), "newcomers": round(new_share, 3),
                "separation": round(own, 3), "spread": round(float(s.spread), 3),
                "compactness": round(compact, 3), "active_profile": profile["evidence"],
                "distinguishing": _top_moves(cc - s.center, st.names)}  # fmt: skip
    return ("born" if new_share >= 0.5 else "split"), group, evidence


def _otsu(v: np.ndarray) -> float:
    """The cut of a 1-D sample that best separates two groups (largest between-group variance)."""
    x = np.sort(v)
    n = len(x)
    if n < 4:
        return float(x[-1]) if n else 0.0
    c, k = np.cumsum(x), np.arange(1, n)
    between = k * (n - k) * (c[:-1] / k - (c[-1] - c[:-1]) / (n - k)) ** 2
    i = int(np.argmax(between))
    return float((x[i] + x[i + 1]) / 2)


def _restart(s: SegmentStats, size: int) -> None:
    s.ref_center, s.ref_weight = s.center.copy(), float(size)
    s.activity, s.profiles, s.pending = s.activity[-1:], s.profiles[-1:], 0


def _stats(sid: str, members: np.ndarray, bimod: float) -> SegmentStats:
    center = members.mean(axis=0)
    d = member_distances(members, center)
    return SegmentStats(sid, center, float(len(members)), float(d.mean()),
                        float(np.quantile(d, 0.95)), center.copy(), float(len(members)), [],
                        bimod)  # fmt: skip
