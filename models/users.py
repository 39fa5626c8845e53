"""Users, items and the per-user running aggregates kept current at ingest.

The aggregates make features cost O(users) instead of O(events): ``user_stats`` holds one row per
user (counters and sums), ``user_orders`` one row per (user, order) so that order counts stay exact
across batches, ``user_items`` one row per (user, item) bought or refunded (distinct items, the
taste factorisation), and ``user_categories`` one row per (user, category) with views, carts and
purchases (the category affinity).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime


class User(Base):
    """A customer, known by a pseudonymous external id; ``id`` is the internal surrogate key."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class Item(Base):
    """A catalogue item as seen in events; ``is_product`` is false for fees, postage, adjustments."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    name: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(200))
    price: Mapped[float | None] = mapped_column(Float)
    is_product: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)


class UserStats(Base):
    """One row per user: running counters, sums and first/last times (additive across batches)."""

    __tablename__ = "user_stats"

    user_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    first_purchase_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_purchase_ts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    n_events: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    n_views: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    n_carts: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    n_removes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    n_purchases: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    n_refunds: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    n_ratings: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    rating_sum: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    purchase_revenue: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    refund_revenue: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)


class UserOrder(Base):
    """One row per (user, order): exact order counts, order values and inter-purchase times."""

    __tablename__ = "user_orders"

    user_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revenue: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    n_lines: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class UserItem(Base):
    """One row per (user, item) bought or refunded: lines, quantities and spend."""

    __tablename__ = "user_items"

    user_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    item_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n_purchases: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_refunds: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    quantity: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    revenue: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    last_ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class UserCategory(Base):
    """One row per (user, category): views, carts and purchases, for the category affinity."""

    __tablename__ = "user_categories"

    user_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    category: Mapped[str] = mapped_column(String(200), primary_key=True)
    n_views: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_carts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_purchases: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
