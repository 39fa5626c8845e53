"""Segmentations (versions), their segments and per-user memberships.

Segment ids (``segments.segment_id``) are stable business identifiers carried from version to
version by matching, never raw cluster indices. Memberships carry the version and the event time
they are valid from, so "which segment was this user in at T" is one range query.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, JSONType, UTCDateTime


class Segmentation(Base):
    """One fitted version: method, K and how it was chosen, quality, scaling and feature names."""

    __tablename__ = "segmentations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    as_of: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    method: Mapped[str] = mapped_column(String(20), nullable=False)
    k: Mapped[int] = mapped_column(Integer, nullable=False)
    seed: Mapped[int | None] = mapped_column(Integer)
    n_users: Mapped[int] = mapped_column(BigInteger, nullable=False)
    is_current: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    quality: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    k_selection: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    features: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    scaler: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    model: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    kind: Mapped[str] = mapped_column(String(10), nullable=False, default="refit")
    parent_id: Mapped[int | None] = mapped_column(Integer)
    base_id: Mapped[int | None] = mapped_column(Integer)
    last_batch_id: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_events: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    users_touched: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Segment(Base):
    """A segment of one segmentation version, with its readable name and profile."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    segmentation_id: Mapped[int] = mapped_column(
        ForeignKey("segmentations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    segment_id: Mapped[str] = mapped_column(String(40), nullable=False)
    label: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    share: Mapped[float] = mapped_column(Float, nullable=False)
    n_outliers: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    centroid: Mapped[list[float]] = mapped_column(JSONType, nullable=False)
    profile: Mapped[dict[str, float]] = mapped_column(JSONType, nullable=False)
    quality: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)


class Membership(Base):
    """A user's segment in one version, valid in event time from ``valid_from`` until ``valid_to``."""

    __tablename__ = "memberships"
    __table_args__ = (Index("ix_memberships_user_valid", "user_key", "valid_from"),)

    segmentation_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    segment_id: Mapped[str] = mapped_column(String(40), nullable=False)
    is_outlier: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    valid_to: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
