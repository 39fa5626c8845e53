"""``shoal update``: fold new events into the live segmentation without a full refit.

One update is one transaction under the segmentation lock:

1. the ingest batches not yet folded in (``last_batch_id`` watermark) and the users they touched;
2. those users' features from the running aggregates (affinity folded in with the stored model);
   every other user's come from the stored feature snapshot (:mod:`automation.store.snapshots`),
   read as of the new event time (recency and tenure grow without events);
3. assignment with hysteresis, centres forgetting with a half-life, structure changes with
   evidence (:mod:`automation.segments.structure`);
4. migrations (who, from, to, when, the events that caused it, why), transitions, outbox events,
   the new version, the segment state and the feature snapshot's delta (the touched users' and
   the movers' rows only), all committed together.

Idempotent: a ``task_key`` that completed changes nothing; a batch is folded in exactly once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, text

from automation.config import Settings
from automation.errors import EmptyStoreError
from automation.features.build import build_features, latest_event_time
from automation.features.scaling import FeatureScaler
from automation.segments.behaviour import increments
from automation.segments.dynamic import NONE, DynamicSegmenter
from automation.segments.explain import centers_for, explain_moves, unique_name
from automation.segments.identity import next_id_number
from automation.segments.naming import name_segments, segment_profiles
from automation.segments.quality import cluster_metrics
from automation.segments.result import clean
from automation.segments.structure import StructurePolicy, apply_structure
from automation.store.bulk import read_frame
from automation.store.history import (
    load_state,
    resolve,
    save_state,
    write_migrations,
    write_outbox,
    write_transitions,
)
from automation.store.locks import acquire_lock, already_done, mark_done
from automation.store.segmentations import (
    SegmentRecord,
    all_segment_ids,
    current_version,
    save_segmentation,
    segments_of,
)
from automation.store.snapshots import (
    Compaction,
    Rows,
    Stored,
    encode,
    load_stored,
    materialise,
    save_delta,
    upsert,
)
from models import Segmentation

PROFILE_SAMPLE = 50_000
QUALITY_SAMPLE = 2_000
"""Users scored for an update's quality figures (silhouette: pairwise distances, so quadratic;
5,000 made it a third of a fold's time in the service; its standard error at 2,000 is ~0.005)."""


@dataclass
class UpdateResult:
    version: int
    as_of: pd.Timestamp
    events: int
    users_touched: int
    migrations: int
    transitions: list[dict[str, Any]]
    quality: dict[str, Any]
    refit_recommended: bool
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "as_of": self.as_of.isoformat(),
            "events": self.events,
            "users_touched": self.users_touched,
            "migrations": self.migrations,
            "transitions": self.transitions,
            "quality": self.quality,
            "refit_recommended": self.refit_recommended,
            "sizes": self.sizes,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class DriftReport:
    refit_needed: bool
    since_version: int
    evidence: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "refit_needed": self.refit_needed,
            "since_version": self.since_version,
            "evidence": self.evidence,
        }


def _fresh_rows(snap: Stored, fresh: pd.DataFrame, at: pd.Timestamp) -> Rows:
    """The touched users' new rows in the stored form (as of ``at``), their old segment kept.

    A column the new features lack keeps the stored value (``0`` for a new user)."""
    fresh = fresh.sort_index()
    keys = fresh.index.to_numpy(dtype=np.int64)
    pos, hit = snap.positions(keys)
    frame = fresh.reindex(columns=snap.columns)
    missing = [c for c in snap.columns if c not in fresh.columns]
    if missing and hit.any():
        old = snap.frame_of(keys[hit]).reindex(columns=missing)
        frame.loc[frame.index[hit], missing] = old.to_numpy()
    labels = np.where(hit, snap.rows.labels[pos] if len(snap.rows) else NONE, NONE)
    return encode(frame.fillna(0.0), at, labels.astype(object))


def pending_batches(conn: Connection, watermark: int) -> int | None:
    """The last ingest batch after ``watermark``, or ``None``.

    Every batch row is created and finished in its block's transaction under the ingest lock,
    so committed batch ids only grow: nothing below the newest committed batch can appear later.
    """
    value = conn.execute(
        text("SELECT MAX(id) FROM ingest_batches WHERE id > :w AND finished_at IS NOT NULL"),
        {"w": watermark},
    ).scalar()
    return None if value is None else int(value)


def run_update(
    engine: Engine,
    settings: Settings | None = None,
    task_key: str | None = None,
    policy: StructurePolicy | None = None,
    half_life_days: float = 7.0,
    margin: float = 0.65,
    margin_active: float = 0.3,
    compaction: Compaction | None = None,
) -> UpdateResult | None:
    """Fold every pending ingest batch into the live segmentation; ``None`` if none is pending.

    ``compaction``: when the feature snapshot's deltas are folded into a full one."""
    del settings  # reserved: thresholds from configuration
    started = time.perf_counter()
    with engine.begin() as conn:
        acquire_lock(conn, "segmentation", holder=task_key or "update")
        if task_key is not None and already_done(conn, task_key) is not None:
            return None
        cur = current_version(conn)
        pending = pending_batches(conn, cur.last_batch_id)
        if pending is None:
            if task_key is not None:
                mark_done(conn, task_key, "update", {"version": None})
            return None
        result = _update(
            conn, cur, int(pending), policy, half_life_days, (margin, margin_active), compaction
        )
        if task_key is not None:
            mark_done(conn, task_key, "update", result.to_dict())
    result.seconds = time.perf_counter() - started
    return result


def _update(
    conn: Connection,
    cur: Any,
    last_batch: int,
    policy: StructurePolicy | None,
    half_life_days: float,
    margins: tuple[float, float],
    compaction: Compaction | None = None,
) -> UpdateResult:
    touched = read_frame(
        conn,
        "SELECT user_key, SUM(n_events) AS n FROM batch_users WHERE batch_id > :a "
        "AND batch_id <= :b GROUP BY user_key",
        {"a": cur.last_batch_id, "b": last_batch},
    )
    snap = load_stored(conn)
    if snap is None:
        raise EmptyStoreError("no feature snapshot: run `shoal segment` (a refit) first")
    scaler = FeatureScaler.from_dict(cur.scaler)
    at = latest_event_time(conn)
    dt_days = max((at - snap.at).total_seconds() / 86_400.0, 0.0)
    keys = touched["user_key"].astype("int64").tolist()
    fresh = build_features(conn, user_keys=keys, affinity_model=snap.affinity).frame
    new_rows = _fresh_rows(snap, fresh, at)
    rows = upsert(snap.rows, new_rows)
    values = materialise(rows, snap.columns, at)
    values[np.isnan(values)] = 0.0
    index = pd.Index(rows.keys, name="user_key")
    raw = pd.DataFrame(values, index=index, columns=snap.columns, copy=False)
    X = scaler.transform(raw)
    current = rows.labels.copy()
    if not snap.labelled:  # an old snapshot without segment ids: resolve, then write in full
        compaction = Compaction(max_deltas=0)
        old = resolve(conn, cur)
        before = pd.Series(old["segment_id"].astype(str).to_numpy(), index=old["user_key"])
        current = before.reindex(index).fillna(NONE).to_numpy(dtype=object)
    # The smaller margin for users with new events is for frequent updates: over a month an
    # active user's vector moves a lot by the noise of a month's purchases alone, so the
    # active margin goes back to ``margin`` as the time since the last update grows (one day:
    # margin_active; a month: within 0.02 of margin). One margin of 0.3 for active users broke the
    # demo's monthly updates (Online Retail: 733 migrations in the first month, a refit to K=2).
    gap = (margins[0] - margins[1]) * min(1.0, 1.0 / max(dt_days, 1e-9))
    seg = DynamicSegmenter(
        half_life_days=half_life_days, margin=margins[0], margin_active=margins[0] - gap
    ).load_state(load_state(conn))
    active = np.isin(rows.keys, new_rows.keys)  # users with new events in this update
    labels = seg.assign(X, current, active)
    seg.decay(X, labels, dt_days)
    counter = [next_id_number(all_segment_ids(conn) + [s.segment_id for s in seg.segments_])]

    def new_id() -> str:
        counter[0] += 1
        return f"seg-{counter[0] - 1}"

    old_rows = snap.frame_of(new_rows.keys)  # what each touched user did since the last update
    counts = increments(old_rows, fresh.reindex(index=old_rows.index, columns=snap.columns))
    labels, transitions, refit = apply_structure(
        seg, X, labels, active, scaler.features_, new_id, policy, counts
    )
    sample = np.random.default_rng(0).choice(len(X), min(len(X), QUALITY_SAMPLE), replace=False)
    codes = pd.factorize(labels[sample])[0]
    quality = clean(cluster_metrics(X[sample], codes, random_state=0, sample_size=QUALITY_SAMPLE))
    quality["stability_ari"] = None
    quality["refit_recommended"] = refit
    version_id = _record(
        conn,
        cur,
        at,
        last_batch,
        raw,
        X,
        labels,
        current,
        snap,
        scaler,
        seg,
        transitions,
        touched,
        quality,
    )
    moved_mask = labels != current
    done = Rows(rows.keys, rows.values, rows.anchors, np.asarray(labels, dtype=object))
    save_delta(
        conn, snap, version_id, at, done, done.take(np.flatnonzero(active | moved_mask)), compaction
    )
    sizes = pd.Series(labels, dtype=object).value_counts().to_dict()
    moved = int(moved_mask.sum())
    return UpdateResult(
        version=version_id,
        as_of=at,
        events=int(touched["n"].sum()),
        users_touched=len(keys),
        migrations=moved,
        transitions=transitions,
        quality=quality,
        refit_recommended=refit,
        sizes={str(k): int(v) for k, v in sizes.items()},
    )


def _record(
    conn: Connection,
    cur: Any,
    at: pd.Timestamp,
    last_batch: int,
    raw: pd.DataFrame,
    X: np.ndarray,
    labels: np.ndarray,
    current: np.ndarray,
    snap: Stored,
    scaler: FeatureScaler,
    seg: DynamicSegmenter,
    transitions: list[dict[str, Any]],
    touched: pd.DataFrame,
    quality: dict[str, Any],
) -> int:
    base = cur.base_id or cur.id
    prev_names = {str(s.segment_id): str(s.name) for s in segments_of(conn, cur.id)}
    ids = [s.segment_id for s in seg.active]
    rng = np.random.default_rng(0)
    sample = rng.choice(len(raw), min(len(raw), PROFILE_SAMPLE), replace=False)
    profiles = segment_profiles(raw.iloc[sample], labels[sample])
    new_ids = [i for i in ids if i not in prev_names and i in profiles.index]
    names = dict(prev_names)
    if new_ids:
        rule = name_segments(profiles.loc[new_ids].reset_index(drop=True), raw.iloc[sample])
        taken = set(prev_names.values())
        for pos, sid in enumerate(new_ids):
            names[sid] = unique_name(rule[pos], taken)
            taken.add(names[sid])
    n = len(raw)
    segs = []
    for label, sid in enumerate(ids):
        mask = labels == sid
        prof = profiles.loc[sid].to_dict() if sid in profiles.index else {}
        segs.append(
            SegmentRecord(
                segment_id=sid,
                label=label,
                name=names.get(sid, sid),
                size=int(mask.sum()),
                share=float(mask.mean()) if n else 0.0,
                n_outliers=0,
                centroid=[float(v) for v in seg.active[label].center],
                profile=clean(prof),
                quality={},
            )
        )
    version = Segmentation(
        as_of=at.to_pydatetime(),
        method=cur.method,
        k=len(segs),
        seed=cur.seed,
        n_users=n,
        is_current=False,
        quality=quality,
        k_selection=None,
        features=cur.features,
        scaler=cur.scaler,
        model=cur.model,
        kind="update",
        parent_id=cur.id,
        base_id=base,
        last_batch_id=last_batch,
        n_events=int(touched["n"].sum()),
        users_touched=len(touched),
    )
    vid = save_segmentation(conn, version, segs, None)
    changed = np.flatnonzero(labels != current)
    if len(changed):
        moves = _moves(
            raw,
            X,
            labels,
            current,
            snap,
            scaler,
            seg,
            transitions,
            touched,
            changed,
            (cur.last_batch_id + 1, last_batch),
        )
        write_migrations(conn, vid, base, at, moves)
        write_outbox(conn, vid, at, moves, transitions, names)
    elif transitions:
        write_outbox(
            conn,
            vid,
            at,
            pd.DataFrame(columns=["user_key", "from_segment", "to_segment", "reason"]),
            transitions,
            names,
        )
    write_transitions(conn, vid, at, transitions)
    save_state(conn, vid, at, [s.to_dict() for s in seg.segments_])
    return vid


def _moves(
    raw: pd.DataFrame,
    X: np.ndarray,
    labels: np.ndarray,
    current: np.ndarray,
    snap: Stored,
    scaler: FeatureScaler,
    seg: DynamicSegmenter,
    transitions: list[dict[str, Any]],
    touched: pd.DataFrame,
    changed: np.ndarray,
    batches: tuple[int, int],
) -> pd.DataFrame:
    keys = raw.index.to_numpy()[changed]
    from_ids = current[changed]
    to_ids = labels[changed]
    by_kind: dict[str, str] = {}
    for t in transitions:
        for sid in t["segments"]:
            by_kind.setdefault(str(sid), str(t["type"]))
    n_events = touched.set_index("user_key")["n"].reindex(keys).fillna(0).to_numpy(dtype=np.int64)
    reason = [
        _reason(str(fr), str(to), int(ev), by_kind)
        for fr, to, ev in zip(from_ids, to_ids, n_events, strict=True)
    ]
    centers = {s.segment_id: s.center for s in seg.segments_}
    old = snap.frame_of(keys)
    X_old = scaler.transform(old.fillna(old.median()).fillna(0.0))
    X_old[old.isna().all(axis=1).to_numpy()] = np.nan
    d = X.shape[1]
    explanations = explain_moves(
        X[changed],
        X_old,
        centers_for(from_ids, centers, d),
        centers_for(to_ids, centers, d),
        scaler.features_,
        n_events,
    )
    for item, ev in zip(explanations, n_events, strict=True):
        if ev > 0:  # the events that caused it: this user's events in these ingest batches
            item["batches"] = list(batches)
    return pd.DataFrame(
        {
            "user_key": keys,
            "from_segment": [f if f != NONE else None for f in from_ids],
            "to_segment": to_ids,
            "reason": reason,
            "n_events": n_events,
            "explanation": explanations,
        }
    )


def _reason(fr: str, to: str, events: int, by_kind: dict[str, str]) -> str:
    """Why a user moved: a structure change, a first segment, new events, or time passing."""
    if by_kind.get(to) in ("born", "split"):
        return by_kind[to]
    if by_kind.get(fr) in ("retired", "merged", "split"):
        return by_kind[fr]
    if fr == NONE:
        return "new_user"
    return "events" if events > 0 else "time"


def check_drift(engine: Engine) -> DriftReport:
    """Whether the live segmentation should be refitted now (drift beyond the bound)."""
    with engine.connect() as conn:
        cur = current_version(conn)
        base = cur.base_id or cur.id
        rows = conn.execute(
            text(
                "SELECT s.quality, s.id FROM segmentations s WHERE s.base_id = :b "
                "AND s.kind = 'update' ORDER BY s.id"
            ),
            {"b": base},
        ).all()
        recommended = [r.id for r in rows if _flag(r.quality)]
        trans = conn.execute(
            text(
                "SELECT t.type, t.segments, t.version_id FROM segment_transitions t "
                "JOIN segmentations s ON s.id = t.version_id WHERE s.base_id = :b "
                "AND s.kind = 'update' AND t.type <> 'survival'"
            ),
            {"b": base},
        ).all()
    evidence = [{"type": t.type, "segments": t.segments, "version": t.version_id} for t in trans]
    return DriftReport(bool(recommended), base, evidence)


def _flag(quality: Any) -> bool:
    q = json.loads(quality) if isinstance(quality, str) else (quality or {})
    return bool(q.get("refit_recommended"))
