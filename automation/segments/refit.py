"""Recording a refit: match to the live segments, migrations, outbox, state, feature snapshot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, text, update

from automation.errors import EmptyStoreError
from automation.features.build import FeatureTable, as_utc
from automation.features.scaling import FeatureScaler
from automation.segments.dynamic import DynamicSegmenter
from automation.segments.explain import centers_for, explain_moves, unique_name
from automation.segments.lineage import match_refit
from automation.segments.result import SegmentationResult, clean
from automation.segments.structure import bimodality
from automation.store.history import (
    resolve,
    save_state,
    write_migrations,
    write_outbox,
    write_transitions,
)
from automation.store.locks import already_done, mark_done
from automation.store.segmentations import (
    SegmentRecord,
    all_segment_ids,
    current_version,
    save_segmentation,
    segments_of,
)
from automation.store.snapshots import load_snapshot, save_snapshot
from models import Segmentation


@dataclass
class RefitRecord:
    version_id: int
    segments: list[SegmentRecord]
    members: pd.DataFrame


def last_finished_batch(conn: Connection) -> int:
    """A refit's watermark, read before its features: every batch up to it is in them."""
    from automation.segments.update import pending_batches

    return pending_batches(conn, 0) or 0


def record_refit(
    conn: Connection,
    table: FeatureTable,
    scaler: FeatureScaler,
    X: np.ndarray,
    labels: np.ndarray,
    outliers: np.ndarray,
    rule_names: dict[int, str],
    report: dict[str, Any],
    overall: dict[str, Any],
    selection: dict[str, Any] | None,
    method: str,
    seed: int,
    model: Any,
    task_key: str | None,
    watermark: int,
) -> RefitRecord:
    """Store a fitted partition as a new version (in the caller's locked transaction)."""
    raw = table.frame
    try:
        cur = current_version(conn)
    except EmptyStoreError:
        cur = None
    live = cur is None or table.as_of >= as_utc(cur.as_of)
    prev_frame = resolve(conn, cur) if cur is not None and live else None
    prev = (
        pd.Series(prev_frame["segment_id"].astype(str).to_numpy(), index=prev_frame["user_key"])
        if prev_frame is not None
        else None
    )
    lineage = match_refit(pd.Series(labels, index=raw.index), prev, X, all_segment_ids(conn))
    ids = lineage.ids
    prev_names = {str(s.segment_id): str(s.name) for s in segments_of(conn, cur.id)} if cur else {}
    survivors = {i for i in ids.values() if i in prev_names}
    taken = {prev_names[i] for i in survivors}
    names: dict[int, str] = {}
    for label in sorted(ids):
        sid = ids[label]
        if sid in survivors:
            names[label] = prev_names[sid]
        else:
            names[label] = unique_name(rule_names[label], taken)
            taken.add(names[label])

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
                n_outliers=int(outliers[mask].sum()),
                centroid=X[mask].mean(axis=0).tolist() if mask.any() else [],
                profile=clean(q.get("profile", {})),
                quality=clean({k: v for k, v in q.items() if k != "profile"}),
            )
        )
    seg_ids = np.array([ids[int(v)] for v in labels], dtype=object)
    members = pd.DataFrame(
        {"user_key": raw.index.to_numpy(), "segment_id": seg_ids, "is_outlier": outliers}
    )
    version = Segmentation(
        as_of=table.as_of.to_pydatetime(),
        method=method,
        k=len([s for s in segs if s.label >= 0]),
        seed=seed,
        n_users=len(raw),
        is_current=False,
        quality=overall,
        k_selection=selection,
        features=scaler.features_,
        scaler=scaler.to_dict(),
        model={"class": type(model).__name__, "params": clean(model.get_params())},
        kind="refit",
        parent_id=cur.id if cur is not None else None,
        last_batch_id=watermark if live else 0,
        users_touched=len(raw),
    )
    vid = save_segmentation(conn, version, segs, members)
    conn.execute(update(Segmentation).where(Segmentation.id == vid).values(base_id=vid))
    at = table.as_of
    if live:
        if prev is not None:
            moves = _moves(raw, X, seg_ids, prev, scaler, conn)
            write_migrations(conn, vid, vid, at, moves)
            write_outbox(
                conn, vid, at, moves, lineage.transitions, {s.segment_id: s.name for s in segs}
            )
        write_transitions(conn, vid, at, lineage.transitions)
        bimod = {sid: bimodality(X[seg_ids == sid], seed) for sid in np.unique(seg_ids)}
        dyn = DynamicSegmenter().init_from_partition(X, seg_ids, bimod)
        conn.execute(text("UPDATE segment_state SET status = 'retired' WHERE status = 'active'"))
        save_state(conn, vid, at, dyn.state())
        save_snapshot(conn, vid, at, raw, table.affinity_model, seg_ids)
    if task_key is not None:
        mark_done(conn, task_key, "refit", {"version": vid})
    return RefitRecord(vid, segs, members)


def _moves(
    raw: pd.DataFrame,
    X: np.ndarray,
    seg_ids: np.ndarray,
    prev: pd.Series,
    scaler: FeatureScaler,
    conn: Connection,
) -> pd.DataFrame:
    before = prev.reindex(raw.index)
    changed = (before.isna() | (before.astype(object) != seg_ids)).to_numpy()
    idx = np.flatnonzero(changed)
    from_ids = before.to_numpy(dtype=object)[idx]
    to_ids = seg_ids[idx]
    centers = {str(s): X[seg_ids == s].mean(axis=0) for s in np.unique(seg_ids)}
    old_centers = {
        str(s): X[(before == s).to_numpy()].mean(axis=0) for s in pd.unique(before.dropna())
    }
    snap = load_snapshot(conn)
    X_old = None
    if snap is not None:
        old_raw = snap.raw.reindex(raw.index[idx])
        cols = [c for c in scaler.features_ if c in old_raw.columns]
        if len(cols) == len(scaler.features_):
            X_old = scaler.transform(old_raw[scaler.features_].fillna(np.nan))
    d = X.shape[1]
    explanations = explain_moves(
        X[idx],
        X_old,
        centers_for(from_ids, old_centers, d),
        centers_for(to_ids, centers, d),
        scaler.features_,
        np.zeros(len(idx), dtype=np.int64),
    )
    return pd.DataFrame(
        {
            "user_key": raw.index.to_numpy()[idx],
            "from_segment": [f if isinstance(f, str) else None for f in from_ids],
            "to_segment": to_ids,
            "reason": "refit",
            "n_events": 0,
            "explanation": explanations,
        }
    )


def stored_result(engine: Engine, task_key: str) -> SegmentationResult:
    """The result of a refit task that already completed (an idempotent redelivery)."""
    with engine.connect() as conn:
        done = already_done(conn, task_key) or {}
        version = conn.execute(
            text("SELECT * FROM segmentations WHERE id = :v"), {"v": int(done["version"])}
        ).one()
        segs = segments_of(conn, version.id)
    quality = version.quality if isinstance(version.quality, dict) else json.loads(version.quality)
    return SegmentationResult(
        version=version.id,
        method=version.method,
        k=version.k,
        as_of=pd.Timestamp(version.as_of),
        n_users=version.n_users,
        quality=quality,
        segments=[
            SegmentRecord(
                segment_id=s.segment_id,
                label=s.label,
                name=s.name,
                size=s.size,
                share=s.share,
                n_outliers=s.n_outliers,
                centroid=list(s.centroid or []),
                profile=dict(s.profile or {}),
                quality=dict(s.quality or {}),
            )
            for s in segs
        ],
        k_selection=None,
        features=list(version.features or []),
        constant_features=[],
    )
