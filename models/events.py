"""Canonical events, ingest batches and the quarantine of rows that could not be accepted."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, EventId, JSONType, UTCDateTime

EVENT_TYPES = ("view", "cart", "remove", "purchase", "refund", "rating")


class Event(Base):
    """One behavioural event. ``event_id`` is unique, enforced by the database (primary key).

    ``user_key`` and ``item_key`` refer to ``users.id`` / ``items.id``; the ingest path writes users
    and items first in the same transaction. There are deliberately no per-row foreign-key checks or
    secondary indexes on this table: it is the bulk write path, and every read goes through the
    running aggregates or a set-wise scan.
    """

    __tablename__ = "events"

    event_id: Mapped[bytes] = mapped_column(EventId, primary_key=True)
    user_key: Mapped[int] = mapped_column(BigInteger, nullable=False)
    type: Mapped[str] = mapped_column(String(10), nullable=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    item_key: Mapped[int | None] = mapped_column(BigInteger)
    category: Mapped[str | None] = mapped_column(String(200))
    quantity: Mapped[float | None] = mapped_column(Float)
    price: Mapped[float | None] = mapped_column(Float)
    revenue: Mapped[float | None] = mapped_column(Float)
    rating: Mapped[float | None] = mapped_column(Float)
    session_id: Mapped[str | None] = mapped_column(String(200))
    order_id: Mapped[str | None] = mapped_column(String(200))
    batch_id: Mapped[int | None] = mapped_column(Integer)


class IngestBatch(Base):
    """One ``shoal ingest`` of one file: its accounting (read = accepted + duplicates + quarantined)."""

    __tablename__ = "ingest_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    preset: Mapped[str | None] = mapped_column(String(50))
    mapping: Mapped[dict[str, str] | None] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    read: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    accepted: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    quarantined: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Quarantine(Base):
    """A row that was not accepted, with its file, line, raw text and the reason.

    ``fingerprint`` (a hash of source, line, reason and raw text) makes re-ingesting the same file
    leave the quarantine as it was.
    """

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    batch_id: Mapped[int | None] = mapped_column(Integer, index=True)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    line: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(50), nullable=False, index=True)
    detail: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[str | None] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(32), nullable=False, unique=True)
    # The row's user id as given (pseudonymised when that is on), so erasure finds it exactly.
    user_id: Mapped[str | None] = mapped_column(String(200), index=True)
