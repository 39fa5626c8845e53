"""SQLAlchemy 2.x models of the Shoal store, one module per aggregate, sharing one ``Base``.

Every schema change is an Alembic migration in ``migrations/versions``; the store applies them on
first use (see :func:`automation.store.db.open_store`).
"""

from models.base import Base
from models.campaigns import (
    Campaign,
    CampaignCursor,
    CampaignDecision,
    Coupon,
    DeadLetter,
    Delivery,
    Routing,
)
from models.dynamics import (
    BatchUser,
    FeatureSnapshot,
    FeatureSnapshotDelta,
    Lock,
    Outbox,
    RecommenderModel,
    SegmentMigration,
    SegmentState,
    SegmentTransition,
    TaskRun,
)
from models.events import Event, IngestBatch, Quarantine
from models.segments import Membership, Segment, Segmentation
from models.users import Item, User, UserCategory, UserItem, UserOrder, UserStats

__all__ = [
    "Base",
    "Campaign",
    "CampaignCursor",
    "CampaignDecision",
    "Coupon",
    "DeadLetter",
    "Delivery",
    "Routing",
    "BatchUser",
    "FeatureSnapshot",
    "FeatureSnapshotDelta",
    "Lock",
    "Outbox",
    "RecommenderModel",
    "SegmentMigration",
    "SegmentState",
    "SegmentTransition",
    "TaskRun",
    "Event",
    "IngestBatch",
    "Item",
    "Membership",
    "Quarantine",
    "Segment",
    "Segmentation",
    "User",
    "UserCategory",
    "UserItem",
    "UserOrder",
    "UserStats",
]
