"""What the dynamic segmentation records: migrations, transitions, the live state, the outbox.

``segment_migrations``  one row per user whose segment changed: from, to, event time, version,
                        the events that caused it and an explanation.
``segment_transitions`` per update or refit, each segment-level change with its evidence
                        (born, retired, split, merged, drifted; MONIC's survival, absorption,
                        disappearance and emergence at refits).
``segment_state``       the live state of every segment (centre, decayed weight, spread).
``feature_snapshots``   the per-user raw features and segment ids of the newest refit or
                        compaction (arrays; time-driven cells as anchors), so an update
                        touches only the users that new events touch.
``feature_snapshot_deltas`` per update since that base, only the rows that changed.
``batch_users``         which users each ingest transaction touched (by its batches, or at once
                        under its last batch).
``outbox``              segment-change events (``Segment Entered``, ``Segment Exited``, ...) with
                        idempotency keys, written in the same transaction as the memberships.
``task_runs``, ``locks`` idempotent background tasks and mutual exclusion of refits/updates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, JSONType, UTCDateTime


class SegmentMigration(Base):
    __tablename__ = "segment_migrations"
    __table_args__ = (
        Index("ix_segment_migrations_base_at", "base_id", "at"),
        Index("ix_segment_migrations_user_at", "user_key", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    base_id: Mapped[int] = mapped_column(Integer, nullable=False)
    user_key: Mapped[int] = mapped_column(BigInteger, nullable=False)
    from_segment: Mapped[str | None] = mapped_column(String(40))
    to_segment: Mapped[str] = mapped_column(String(40), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    reason: Mapped[str] = mapped_column(String(20), nullable=False)
    n_events: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    explanation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class SegmentTransition(Base):
    __tablename__ = "segment_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    type: Mapped[str] = mapped_column(String(20), nullable=False)
    segments: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)


class SegmentState(Base):
    __tablename__ = "segment_state"

    segment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(10), nullable=False)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    weight: Mapped[float] = mapped_column(Float, nullable=False)
    center: Mapped[list[float]] = mapped_column(JSONType, nullable=False)
    spread: Mapped[float] = mapped_column(Float, nullable=False)
    radius: Mapped[float] = mapped_column(Float, nullable=False)
    state: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    born_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class FeatureSnapshot(Base):
    __tablename__ = "feature_snapshots"

    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    columns: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    token: Mapped[str | None] = mapped_column(String(32))


class FeatureSnapshotDelta(Base):
    __tablename__ = "feature_snapshot_deltas"

    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_version_id: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    n_rows: Mapped[int] = mapped_column(Integer, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    token: Mapped[str] = mapped_column(String(32), nullable=False)


class BatchUser(Base):
    __tablename__ = "batch_users"

    batch_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n_events: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class Outbox(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    event: Mapped[str] = mapped_column(String(40), nullable=False)
    user_key: Mapped[int | None] = mapped_column(BigInteger)
    segment_id: Mapped[str] = mapped_column(String(40), nullable=False)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TaskRun(Base):
    __tablename__ = "task_runs"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    task: Mapped[str] = mapped_column(String(50), nullable=False)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class Lock(Base):
    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str | None] = mapped_column(Text)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class RecommenderModel(Base):
    """A fitted recommender saved as arrays (the ``.npz`` of ``Recommender.save``, no pickles),
    with the store mark it reflects: the newest ingest batch and segmentation version."""

    __tablename__ = "recommender_models"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    batch_id: Mapped[int] = mapped_column(Integer, nullable=False)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    erasures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    fitted_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
