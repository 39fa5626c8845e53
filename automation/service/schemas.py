"""Request and response bodies (inputs and outputs are separate models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TrackIn(BaseModel):
    """A Segment ``track`` call: ``userId``, ``event``, ``properties``, ``timestamp``,
    ``messageId`` (other Segment fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    userId: str | int | None = None  # noqa: N815 - Segment's field names
    anonymousId: str | None = None  # noqa: N815
    event: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    timestamp: str | int | float | None = None
    messageId: str | None = None  # noqa: N815
    type: str = "track"


class BatchIn(BaseModel):
    """A Segment ``batch`` call: ``{"batch": [message, ...]}`` (at most 10,000 messages)."""

    model_config = ConfigDict(extra="allow")

    batch: list[dict[str, Any]] = Field(max_length=10_000)


class EventError(BaseModel):
    index: int
    error: str
    message: str


class IngestOut(BaseModel):
    received: int
    accepted: int
    duplicates: int
    rejected: int
    errors: list[EventError]


class SegmentRef(BaseModel):
    id: str
    name: str | None = None
    version: int | None = None
    as_of: str | None = None


class RoutingOut(BaseModel):
    queue: str
    priority: int
    script: str | None
    campaign: str
    segment_id: str | None
    since: str


class MigrationOut(BaseModel):
    user_id: str | None = None
    at: str
    from_segment: str | None = Field(default=None, alias="from")
    to: str
    reason: str | None = None

    model_config = ConfigDict(populate_by_name=True)


class UserOut(BaseModel):
    user_id: str
    as_of: str
    segment: SegmentRef | None
    routing: RoutingOut | None
    features: dict[str, float]
    migrations: list[dict[str, Any]]


class ItemOut(BaseModel):
    item_id: str
    name: str | None = None
    price: float | None = None
    score: float
    reason: str
    category: str | None = None


class RecommendationsOut(BaseModel):
    user_id: str
    segment: dict[str, Any] | None
    items: list[ItemOut]
    fitted_at_batch: int


class AudienceOut(BaseModel):
    item_id: str
    users: list[dict[str, Any]]


class ErrorOut(BaseModel):
    error: str
    message: str
    details: Any | None = None


#: Error responses every route may give, documented in the OpenAPI spec (one shape for all).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "The input cannot be used"),
        (401, "A bearer token is required"),
        (404, "No such user, segment, item or campaign"),
        (409, "The store has no segmentation yet"),
        (422, "The request does not match the schema"),
        (500, "Internal error (no detail)"),
        (503, "Not ready yet (the recommender is being fitted)"),
    )
}
