"""Segment (segment.com) message payloads flattened into canonical event rows.

``track`` messages become one row; an ``Order Completed`` / ``Order Refunded`` with a ``products``
array becomes one row per product (ids ``messageId:index``). A ``batch`` payload is a list of
messages. Other message types (identify, page, screen, group, alias) are not behavioural product
events and are reported as ``unsupported_message_type`` rather than dropped. A flat object that is
not a Segment message passes through unchanged.
"""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]
Outcome = tuple[Row, tuple[str, str] | None]

_PRODUCT_FIELDS = {
    "product_id": "item_id",
    "sku": "item_id",
    "id": "item_id",
    "name": "item_name",
    "category": "category",
    "price": "price",
    "quantity": "quantity",
}


def is_segment_message(obj: Row) -> bool:
    return "batch" in obj or ("event" in obj and ("properties" in obj or "messageId" in obj))


def flatten_message(obj: Row) -> list[Outcome]:
    """Canonical rows (or a rejection reason) for one JSON object."""
    if isinstance(obj.get("batch"), list):
        out: list[Outcome] = []
        for msg in obj["batch"]:
            if isinstance(msg, dict):
                out.extend(_flatten_segment(msg))
            else:
                out.append(({"batch_item": msg}, ("malformed_json", "batch item is not an object")))
        return out
    kind = obj.get("type")
    if is_segment_message(obj) or (
        isinstance(kind, str) and kind in {"identify", "page", "screen", "group"}
    ):
        return _flatten_segment(obj)
    return [(obj, None)]


def _flatten_segment(msg: Row) -> list[Outcome]:
    kind = msg.get("type", "track")
    if not isinstance(kind, str):
        return [(msg, ("malformed_json", "type is not a string"))]
    if kind != "track":
        return [(msg, ("unsupported_message_type", f"Segment {kind!r} messages carry no event"))]
    props = msg.get("properties") or {}
    if not isinstance(props, dict):
        return [(msg, ("malformed_json", "properties is not an object"))]
    base: Row = {
        "event_id": msg.get("messageId"),
        "user_id": msg.get("userId")
        or (f"anon:{msg['anonymousId']}" if msg.get("anonymousId") else None),
        "type": msg.get("event"),
        "timestamp": msg.get("timestamp") or msg.get("originalTimestamp") or msg.get("sentAt"),
        "session_id": props.get("session_id") or _dict(msg.get("context")).get("session_id"),
        "order_id": props.get("order_id") or props.get("checkout_id"),
        "coupon": props.get("coupon") or props.get("coupon_id"),
        "rating": props.get("rating"),
        "revenue": props.get("revenue"),
    }
    for src, dst in _PRODUCT_FIELDS.items():
        if src in props and base.get(dst) is None:
            base[dst] = props[src]
    products = props.get("products")
    if not isinstance(products, list) or not products:
        if base.get("revenue") is None and props.get("total") is not None:
            base["revenue"] = props.get("total")
        return [(base, None)]
    out: list[Outcome] = []
    for i, prod in enumerate(products):
        if not isinstance(prod, dict):
            out.append(({"product": prod}, ("malformed_json", f"products[{i}] is not an object")))
            continue
        row = {k: v for k, v in base.items() if k not in ("revenue",) and k not in _ITEM_KEYS}
        row["event_id"] = f"{base['event_id']}:{i}" if base.get("event_id") else None
        for src, dst in _PRODUCT_FIELDS.items():
            if src in prod and row.get(dst) is None:
                row[dst] = prod[src]
        out.append((row, None))
    return out


_ITEM_KEYS = {"item_id", "item_name", "category", "price", "quantity"}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
