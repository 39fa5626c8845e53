"""Segment (segment.com) message payloads flattened into canonical event rows.

``track`` messages become one row; an ``Order Completed`` / ``Order Refunded`` with a ``products``
array becomes one row per product (ids ``messageId:index``). A ``batch`` payload is a list of
messages. Other message types (identify, page, screen, group, alias) are not behavioural product
events and are reported as ``unsupported_message_type`` rather than dropped. A flat object that is
not a Segment message passes through unchanged.

One function reads a message (:func:`segment_rows`): it gives rows as tuples in the order of
:data:`~automation.ingest.schema.CANONICAL_FIELDS`, which :func:`flatten_batch` transposes into
columns for the HTTP batch path and :func:`flatten_message` turns into records for the file
readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from automation.ingest.schema import CANONICAL_FIELDS

Row = dict[str, Any]
Reason = tuple[str, str]
Outcome = tuple[Row, Reason | None]
Values = tuple[Any, ...]  # one canonical row, in CANONICAL_FIELDS order

# Record keys in the order the readers have always produced them: the message's fields, then the
# item's (a record's key order is its quarantined raw text's, which de-duplicates quarantine).
_POSITION = {name: i for i, name in enumerate(CANONICAL_FIELDS)}
_MESSAGE_KEYS = tuple(
    (k, _POSITION[k])
    for k in ("event_id", "user_id", "type", "timestamp", "session_id", "order_id", "coupon")
)
_LINE_KEYS = tuple(
    (k, _POSITION[k]) for k in ("item_id", "item_name", "category", "price", "quantity")
)


def is_segment_message(obj: Row) -> bool:
    return "batch" in obj or ("event" in obj and ("properties" in obj or "messageId" in obj))


def flatten_message(obj: Row) -> list[Outcome]:
    """Canonical rows (or a rejection reason) for one JSON object."""
    how = _shape(obj)
    if how == "batch":
        out: list[Outcome] = []
        for msg in obj["batch"]:
            if isinstance(msg, dict):
                out.extend(_records(msg))
            else:
                out.append(({"batch_item": msg}, _NOT_AN_OBJECT))
        return out
    if how == "segment":
        return _records(obj)
    return [(obj, None)]


_NOT_AN_OBJECT = ("malformed_json", "batch item is not an object")


def _shape(obj: Row) -> str:
    """``batch`` (a list of messages), ``segment`` (one message) or ``flat`` (a plain row)."""
    if isinstance(obj.get("batch"), list):
        return "batch"
    kind = obj.get("type")
    if is_segment_message(obj) or (
        isinstance(kind, str) and kind in {"identify", "page", "screen", "group"}
    ):
        return "segment"
    return "flat"


def _records(msg: Row) -> list[Outcome]:
    out: list[Outcome] = []
    per_product = _has_products(msg)
    for values in segment_rows(msg):
        if isinstance(values, Rejected):
            out.append((values.record, values.reason))
            continue
        rec = {k: values[i] for k, i in _MESSAGE_KEYS}
        rec["rating"] = values[_POSITION["rating"]]
        if not per_product:
            rec["revenue"] = values[_POSITION["revenue"]]
        rec.update((k, values[i]) for k, i in _LINE_KEYS if values[i] is not None)
        out.append((rec, None))
    return out


@dataclass
class Rejected:
    """A message (or one of its products) that yields no event, and why."""

    record: Row
    reason: Reason


def _has_products(msg: Row) -> bool:
    props = msg.get("properties")
    return (
        isinstance(props, dict)
        and isinstance(props.get("products"), list)
        and bool(props["products"])
    )


def _item(obj: Row) -> tuple[Any, Any, Any, Any, Any]:
    """(item_id, item_name, category, quantity, price) of a product or of the properties; the
    item id is the first non-null of ``product_id``, ``sku`` and ``id``."""
    get = obj.get
    item = get("product_id")
    if item is None:
        item = get("sku")
        if item is None:
            item = get("id")
    return item, get("name"), get("category"), get("quantity"), get("price")


def segment_rows(msg: Row) -> list[Values | Rejected]:
    """The canonical rows of one Segment message (one per product of an order), or rejections."""
    kind = msg.get("type", "track")
    if not isinstance(kind, str):
        return [Rejected(msg, ("malformed_json", "type is not a string"))]
    if kind != "track":
        return [
            Rejected(msg, ("unsupported_message_type", f"Segment {kind!r} messages carry no event"))
        ]
    props = msg.get("properties") or {}
    if not isinstance(props, dict):
        return [Rejected(msg, ("malformed_json", "properties is not an object"))]
    get = props.get
    event_id = msg.get("messageId")
    anonymous = msg.get("anonymousId")
    user = msg.get("userId") or (f"anon:{anonymous}" if anonymous else None)
    timestamp = msg.get("timestamp") or msg.get("originalTimestamp") or msg.get("sentAt")
    context = msg.get("context")
    session = get("session_id") or (
        context.get("session_id") if isinstance(context, dict) else None
    )
    order = get("order_id") or get("checkout_id")
    coupon = get("coupon") or get("coupon_id")
    rating = get("rating")
    products = get("products")
    if not isinstance(products, list) or not products:
        item = _item(props)
        revenue = get("revenue")
        if revenue is None:
            revenue = get("total")
        return [
            (
                event_id,
                user,
                msg.get("event"),
                timestamp,
                *item,
                revenue,
                rating,
                session,
                order,
                coupon,
            )
        ]
    out: list[Values | Rejected] = []
    for i, prod in enumerate(products):
        if not isinstance(prod, dict):
            out.append(
                Rejected({"product": prod}, ("malformed_json", f"products[{i}] is not an object"))
            )
            continue
        line_id = f"{event_id}:{i}" if event_id else None
        item = _item(prod)
        out.append(
            (
                line_id,
                user,
                msg.get("event"),
                timestamp,
                *item,
                None,
                rating,
                session,
                order,
                coupon,
            )
        )
    return out


@dataclass
class FlatBatch:
    """A batch's canonical columns (CANONICAL_FIELDS order) and what could not be read.

    ``lines`` is the 1-based position in the batch of the message each row came from;
    ``rejects`` are ``(position, record, reason)``.
    """

    columns: list[tuple[Any, ...]]
    lines: list[int] = field(default_factory=list)
    rejects: list[tuple[int, Row, Reason]] = field(default_factory=list)


def flatten_batch(messages: list[Row], default_type: str = "track") -> FlatBatch:
    """Canonical columns of a list of Segment messages (a message without a type is ``default_type``).

    >>> flat = flatten_batch([{"userId": "u1", "event": "Product Viewed", "timestamp": "2024-01-01",
    ...                        "properties": {"product_id": "i1"}}, {"type": "identify"}])
    >>> flat.columns[1], flat.columns[4], flat.lines, flat.rejects[0][2][0]
    (('u1',), ('i1',), [1], 'unsupported_message_type')
    """
    rows: list[Values] = []
    lines: list[int] = []
    rejects: list[tuple[int, Row, Reason]] = []
    for position, msg in enumerate(messages, start=1):
        if "type" not in msg:
            msg = {"type": default_type, **msg}
        how = _shape(msg)
        if how == "flat":  # a plain row: its canonical fields
            rows.append(tuple(msg.get(name) for name in CANONICAL_FIELDS))
            lines.append(position)
            continue
        for values in _batch_rows(msg["batch"]) if how == "batch" else segment_rows(msg):
            if isinstance(values, Rejected):
                rejects.append((position, values.record, values.reason))
            else:
                rows.append(values)
                lines.append(position)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in CANONICAL_FIELDS]
    return FlatBatch(columns, lines, rejects)


def _batch_rows(items: list[Any]) -> list[Values | Rejected]:
    """The rows of a ``batch`` payload nested as one message of a batch."""
    out: list[Values | Rejected] = []
    for item in items:
        if isinstance(item, dict):
            out.extend(segment_rows(item))
        else:
            out.append(Rejected({"batch_item": item}, _NOT_AN_OBJECT))
    return out
