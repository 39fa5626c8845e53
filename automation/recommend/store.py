"""Reading what the recommenders need from the store: events, items, and segments at a time.

Segments "as of" a past time are computed in memory with the segmentation pipeline's own steps
(features as of that time, scaling, K selection, the segmenter, rule-based names) and are never
written to the store: an evaluation leaves the live segmentation untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import Connection, Engine

from automation.errors import EmptyStoreError
from automation.features.build import build_features, ts_param
from automation.features.scaling import FeatureScaler
from automation.recommend.data import Interactions
from automation.segments.naming import name_segments, segment_profiles
from automation.segments.registry import make_segmenter
from automation.segments.result import parse_k
from automation.segments.select_k import select_k
from automation.store.bulk import read_frame
from automation.store.history import resolve
from automation.store.segmentations import current_version, segments_of

K_RANGE = range(2, 11)


@dataclass
class SegmentMap:
    """Every user's segment id (index: external user id), the names, and where they came from."""

    members: pd.Series
    names: dict[str, str] = field(default_factory=dict)
    source: str = "none"  # "stored version N", "fitted as of T", or "none"

    @classmethod
    def empty(cls) -> SegmentMap:
        """No segments (nothing segmented yet)."""
        return cls(pd.Series(dtype=str), {}, "none")


def read_items(conn: Connection) -> pd.DataFrame:
    """The catalogue: ``item_id``, ``name``, ``category``, ``price``, ``is_product``."""
    return read_frame(
        conn,
        "SELECT external_id AS item_id, name, category, price, is_product FROM items",
    )


def read_events(
    conn: Connection, before: pd.Timestamp | None = None, user_ids: list[str] | None = None
) -> pd.DataFrame:
    """Events with an item (external ids), optionally before a time and for some users."""
    where = ["e.item_key IS NOT NULL"]
    params: dict[str, object] = {}
    if before is not None:
        where.append("e.ts < :before")
        params["before"] = ts_param(conn, before)
    if user_ids is not None:
        names = {f"u{k}": str(u) for k, u in enumerate(user_ids)}
        params.update(names)
        where.append(f"u.external_id IN ({', '.join(':' + k for k in names) or 'NULL'})")
    return read_frame(
        conn,
        "SELECT u.external_id AS user_id, i.external_id AS item_id, e.type, e.ts AS timestamp, "
        "e.order_id FROM events e JOIN users u ON u.id = e.user_key "
        f"JOIN items i ON i.id = e.item_key WHERE {' AND '.join(where)}",
        params,
    )


def load_interactions(
    engine: Engine,
    before: pd.Timestamp | None = None,
    segments: SegmentMap | None = None,
    user_ids: list[str] | None = None,
) -> Interactions:
    """Interactions from the store (events strictly before ``before``, if given).

    Ages are measured from ``before`` (else from the newest event).
    """
    with engine.connect() as conn:
        events = read_events(conn, before, user_ids)
        items = read_items(conn)
    if events.empty:
        when = f" before {before.isoformat()}" if before is not None else ""
        raise EmptyStoreError(f"the store has no item events{when}: run `shoal ingest` first")
    seg = segments or SegmentMap.empty()
    return Interactions.from_frame(
        events,
        items,
        segments=seg.members if len(seg.members) else None,
        segment_names=seg.names,
        as_of=before,
    )


def current_segments(engine: Engine) -> SegmentMap:
    """The live segmentation's assignments (empty when nothing has been segmented yet)."""
    with engine.connect() as conn:
        try:
            version = current_version(conn)
        except EmptyStoreError:
            return SegmentMap.empty()
        frame = resolve(conn, version)
        users = read_frame(conn, "SELECT id AS user_key, external_id AS user_id FROM users")
        names = {str(s.segment_id): str(s.name) for s in segments_of(conn, version.id)}
    merged = frame.merge(users, on="user_key", how="inner")
    members = pd.Series(
        merged["segment_id"].astype(str).to_numpy(), index=merged["user_id"].astype(str)
    )
    return SegmentMap(members, names, f"stored version {version.id}")


def segments_as_of(
    engine: Engine, at: pd.Timestamp, k: str | int = "auto", seed: int = 0
) -> SegmentMap:
    """Segment every user from their features as of ``at`` (in memory; nothing is stored)."""
    with engine.connect() as conn:
        table = build_features(conn, at, random_state=seed)
    raw = table.frame
    if len(raw) < 3:
        return SegmentMap.empty()
    n_fixed = parse_k(k)
    X = FeatureScaler().fit(raw).transform(raw)
    chosen = (
        n_fixed
        if n_fixed is not None
        else select_k(X, method="kmeans", k_range=K_RANGE, random_state=seed).best_k
    )
    chosen = min(chosen, len(raw) - 1)
    model = make_segmenter("kmeans", chosen, random_state=seed).fit(X)
    labels = model.labels_
    profiles = segment_profiles(raw, labels)
    share = pd.Series(model.outliers_).groupby(labels).mean().to_dict()
    names = name_segments(profiles, raw, outlier_share=share)
    ids = [f"seg-{int(label) + 1}" for label in labels]
    members = pd.Series(ids, index=table.external_ids.reindex(raw.index).astype(str).to_numpy())
    readable = {f"seg-{int(label) + 1}": name for label, name in names.items()}
    return SegmentMap(members, readable, f"fitted as of {at.isoformat()}")
