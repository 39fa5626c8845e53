"""Campaigns: marketers' rules, every decision, the delivery outbox, coupons and routing.

``campaigns``          one row per loaded version of a campaign file (name, version, spec).
``campaign_cursors``   per campaign, the last segment-change outbox row it has read.
``campaign_decisions`` the audit log: one row per (campaign, user, trigger occurrence), unique,
                       with the group (treatment or holdout) or why the user was suppressed.
``deliveries``         the transactional outbox of messages to send, one per treated decision
                       and channel, with attempts, back-off and status (pending, sent, dead).
``dead_letters``       deliveries that ran out of attempts, with the last error.
``coupons``            unique, unguessable codes per user and campaign; redemptions counted.
``routing``            each user's customer-service queue, priority and script, the newest wins.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, JSONType, UTCDateTime


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_campaigns_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    source: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    loaded_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class CampaignCursor(Base):
    __tablename__ = "campaign_cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    outbox_id: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CampaignDecision(Base):
    __tablename__ = "campaign_decisions"
    __table_args__ = (
        UniqueConstraint("campaign", "user_key", "occurrence", name="uq_decisions_occurrence"),
        Index("ix_decisions_campaign_group", "campaign", "group_name"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    campaign: Mapped[str] = mapped_column(String(100), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    user_key: Mapped[int] = mapped_column(BigInteger, nullable=False)
    occurrence: Mapped[str] = mapped_column(String(120), nullable=False)
    segment_id: Mapped[str | None] = mapped_column(String(40))
    group_name: Mapped[str] = mapped_column(String(12), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    triggered_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_status_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    decision_id: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    campaign: Mapped[str] = mapped_column(String(100), nullable=False)
    channel: Mapped[str] = mapped_column(String(20), nullable=False)
    user_key: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, nullable=False, unique=True)
    campaign: Mapped[str] = mapped_column(String(100), nullable=False)
    channel: Mapped[str] = mapped_column(String(20), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    error: Mapped[str] = mapped_column(Text, nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class Coupon(Base):
    __tablename__ = "coupons"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    campaign: Mapped[str] = mapped_column(String(100), nullable=False)
    user_key: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    decision_id: Mapped[int] = mapped_column(BigInteger, nullable=False, unique=True)
    kind: Mapped[str] = mapped_column(String(10), nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    usage_limit: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class Routing(Base):
    __tablename__ = "routing"

    user_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    campaign: Mapped[str] = mapped_column(String(100), nullable=False)
    segment_id: Mapped[str | None] = mapped_column(String(40))
    queue: Mapped[str] = mapped_column(String(100), nullable=False)
    priority: Mapped[int] = mapped_column(Integer, nullable=False)
    script: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
