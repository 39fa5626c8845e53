"""The canonical event and the names other systems use for its types.

A canonical event has ``event_id``, ``user_id`` (required), ``type`` (required; one of
:data:`EVENT_TYPES`), ``timestamp`` (required; ISO 8601 or epoch seconds/milliseconds, stored as
UTC), ``item_id``, ``item_name``, ``category``, ``quantity``, ``price`` (unit), ``revenue`` (line
total), ``rating``, ``session_id``, ``order_id`` and ``coupon`` (a campaign coupon code used
on a purchase: it counts as a redemption, see :mod:`automation.campaigns`).
"""

from __future__ import annotations

from models.events import EVENT_TYPES

CANONICAL_FIELDS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "type",
    "timestamp",
    "item_id",
    "item_name",
    "category",
    "quantity",
    "price",
    "revenue",
    "rating",
    "session_id",
    "order_id",
    "coupon",
)
REQUIRED_FIELDS: tuple[str, ...] = ("user_id", "type", "timestamp")
NUMERIC_FIELDS: tuple[str, ...] = ("quantity", "price", "revenue", "rating")
MAX_TEXT = 200

# Segment E-commerce Spec v2 event names, and common spellings, onto canonical types.
# Lookup is case-insensitive; canonical names map onto themselves.
TYPE_ALIASES: dict[str, str] = {
    **{t: t for t in EVENT_TYPES},
    # Segment E-commerce Spec v2
    "product viewed": "view",
    "product clicked": "view",
    "product list viewed": "view",
    "product added": "cart",
    "product removed": "remove",
    "order completed": "purchase",
    "order refunded": "refund",
    "product reviewed": "rating",
    "product rated": "rating",
    # other common spellings (OTTO, GA-style, plurals)
    "views": "view",
    "click": "view",
    "clicks": "view",
    "page_view": "view",
    "view_item": "view",
    "add_to_cart": "cart",
    "addtocart": "cart",
    "carts": "cart",
    "remove_from_cart": "remove",
    "removes": "remove",
    "order": "purchase",
    "orders": "purchase",
    "transaction": "purchase",
    "purchases": "purchase",
    "return": "refund",
    "refunds": "refund",
    "review": "rating",
    "ratings": "rating",
}

# Column names recognised without a --map, case-insensitively, per canonical field.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "event_id": ("event_id", "eventid", "messageid", "message_id", "id"),
    "user_id": ("user_id", "userid", "customer_id", "customerid", "user", "visitorid"),
    "type": ("type", "event_type", "event", "action"),
    "timestamp": ("timestamp", "ts", "time", "event_time", "datetime", "date"),
    "item_id": ("item_id", "itemid", "product_id", "productid", "sku", "aid"),
    "item_name": ("item_name", "name", "description", "product_name"),
    "category": ("category", "category_code", "product_category"),
    "quantity": ("quantity", "qty"),
    "price": ("price", "unit_price", "unitprice"),
    "revenue": ("revenue", "amount", "total", "line_total"),
    "rating": ("rating", "stars", "score"),
    "session_id": ("session_id", "sessionid", "session", "user_session"),
    "order_id": ("order_id", "orderid", "invoice", "invoiceno", "transaction_id"),
    "coupon": ("coupon", "coupon_code", "coupon_id", "promo_code"),
}


def normalise_type(value: str) -> str | None:
    """Map a type spelling to a canonical type, or ``None`` when unknown.

    >>> normalise_type("Order Completed")
    'purchase'
    >>> normalise_type("teleport") is None
    True
    """
    return TYPE_ALIASES.get(value.strip().lower())
