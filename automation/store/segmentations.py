"""Segmentation versions, segments and memberships: save, read current, read as of a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Row, insert, select, text, update

from automation.errors import EmptyStoreError, NotFoundError
from automation.features.build import ts_param
from automation.store.bulk import write_frame
from models import Segment, Segmentation


@dataclass
class SegmentRecord:
    segment_id: str
    label: int
    name: str
    size: int
    share: float
    n_outliers: int
    centroid: list[float]
    profile: dict[str, float]
    quality: dict[str, Any]
    description: str | None = None


def save_segmentation(
    conn: Connection,
    seg: Segmentation,
    segments: list[SegmentRecord],
    members: pd.DataFrame | None,
) -> int:
    """Insert a version, its segments and every member (``user_key``, ``segment_id``,
    ``is_outlier``); the version with the newest ``as_of`` becomes current."""
    conn.execute(text("SELECT 1"))  # open the transaction before taking ids
    seg_id = conn.execute(
        insert(Segmentation).returning(Segmentation.id),
        [
            {
                c.name: getattr(seg, c.name)
                for c in Segmentation.__table__.columns
                if c.name not in ("id", "created_at") and getattr(seg, c.name) is not None
            }
        ],
    ).scalar_one()
    conn.execute(
        insert(Segment),
        [
            {
                "segmentation_id": seg_id,
                "segment_id": s.segment_id,
                "label": s.label,
                "name": s.name,
                "size": s.size,
                "share": s.share,
                "n_outliers": s.n_outliers,
                "centroid": s.centroid,
                "profile": s.profile,
                "quality": s.quality,
                "description": s.description,
            }
            for s in segments
        ],
    )
    if members is None:  # an update version: only its migrations are stored
        _refresh_current(conn)
        return int(seg_id)
    n = len(members)
    as_of = pd.Series([seg.as_of] * n).astype("datetime64[us, UTC]")
    write_frame(
        conn,
        "memberships",
        {
            "segmentation_id": pd.Series(np.full(n, seg_id, dtype=np.int64)),
            "user_key": members["user_key"].astype("int64").reset_index(drop=True),
            "segment_id": members["segment_id"].astype("str").reset_index(drop=True),
            "is_outlier": members["is_outlier"].astype(bool).reset_index(drop=True),
            "valid_from": as_of,
            "valid_to": pd.Series([None] * n, dtype="object"),
            "reason": pd.Series(["refit"] * n, dtype="object"),
        },
    )
    _refresh_current(conn)
    return int(seg_id)


def _refresh_current(conn: Connection) -> None:
    """The newest ``as_of`` (then the newest id) is current; older snapshots' intervals close.

    A snapshot's memberships are valid from its ``as_of`` until the next refit's ``as_of``
    (updates in between are recorded as migrations on top of it).
    """
    newest = conn.execute(
        select(Segmentation.id, Segmentation.as_of)
        .order_by(Segmentation.as_of.desc(), Segmentation.id.desc())
        .limit(1)
    ).one()
    conn.execute(
        update(Segmentation)
        .where(Segmentation.is_current != (Segmentation.id == newest.id))
        .values(is_current=Segmentation.id == newest.id)
    )
    base = conn.execute(
        select(Segmentation.id, Segmentation.as_of)
        .where(Segmentation.kind == "refit", Segmentation.as_of <= newest.as_of)
        .order_by(Segmentation.as_of.desc(), Segmentation.id.desc())
        .limit(1)
    ).first()
    if base is not None:
        conn.execute(
            text(
                "UPDATE memberships SET valid_to = :t WHERE valid_to IS NULL "
                "AND segmentation_id <> :s AND valid_from <= :t"
            ),
            {"t": ts_param(conn, pd.Timestamp(base.as_of)), "s": base.id},
        )


def all_segment_ids(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute(select(Segment.segment_id).distinct()).all()]


def current_version(conn: Connection) -> Row[Any]:
    """The current version's row (attributes named as the columns of ``segmentations``)."""
    seg = conn.execute(
        select(Segmentation.__table__).where(Segmentation.is_current.is_(True))
    ).one_or_none()
    if seg is None:
        raise EmptyStoreError("no segmentation yet: run `shoal segment` first")
    return seg


def version_as_of(conn: Connection, at: pd.Timestamp) -> Row[Any]:
    """The version in force at ``at``: the newest one whose ``as_of`` is not after it."""
    seg = conn.execute(
        select(Segmentation.__table__)
        .where(Segmentation.as_of <= _as_dt(conn, at))
        .order_by(Segmentation.as_of.desc(), Segmentation.id.desc())
        .limit(1)
    ).one_or_none()
    if seg is None:
        first = conn.execute(select(Segmentation.as_of).order_by(Segmentation.as_of)).first()
        if first is None:
            raise EmptyStoreError("no segmentation yet: run `shoal segment` first")
        raise NotFoundError(
            f"no segmentation as of {at.isoformat()}: the earliest is as of {first[0]}"
        )
    return seg


def _as_dt(conn: Connection, at: pd.Timestamp) -> Any:
    return pd.Timestamp(at).tz_convert("UTC").to_pydatetime()


def segments_of(conn: Connection, version: int) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(Segment.__table__)
            .where(Segment.segmentation_id == version)
            .order_by(Segment.label)
        ).all()
    )
