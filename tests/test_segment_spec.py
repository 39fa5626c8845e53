"""Segment payload flattening: the batch columns (HTTP) and the records (files) agree, and the
service's frame keeps every value validation needs to judge it as before."""

from __future__ import annotations

from typing import Any

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from automation.ingest.schema import CANONICAL_FIELDS
from automation.ingest.segment_spec import flatten_batch, flatten_message
from automation.service.routes_ingest import _raw

SCALARS = st.one_of(
    st.none(),
    st.sampled_from(["", "x", "I1", "Product Viewed", "Order Completed", "2024-01-01T00:00:00Z"]),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.just("a"), SCALARS))
PROPERTY_KEYS = [
    "product_id", "sku", "id", "name", "category", "price", "quantity", "revenue", "total",
    "rating", "session_id", "order_id", "checkout_id", "coupon", "coupon_id",
]  # fmt: skip
MESSAGE_KEYS = [
    "messageId", "userId", "anonymousId", "event", "timestamp", "originalTimestamp", "sentAt",
]  # fmt: skip


def _props(products: bool) -> st.SearchStrategy[dict[str, Any]]:
    base = st.dictionaries(st.sampled_from(PROPERTY_KEYS), VALUES, max_size=6)
    if not products:
        return base
    items = st.lists(st.one_of(_props(False), SCALARS), max_size=3)
    return st.tuples(base, st.one_of(st.none(), items)).map(
        lambda p: p[0] if p[1] is None else {**p[0], "products": p[1]}
    )


MESSAGES = st.tuples(
    st.dictionaries(st.sampled_from(MESSAGE_KEYS), VALUES, max_size=6),
    st.one_of(st.none(), st.sampled_from(["track", "identify", 3])),
    st.one_of(st.none(), _props(True), SCALARS),
    st.one_of(st.none(), st.dictionaries(st.just("session_id"), SCALARS)),
).map(
    lambda m: {
        **m[0],
        **({} if m[1] is None else {"type": m[1]}),
        **({} if m[2] is None else {"properties": m[2]}),
        **({} if m[3] is None else {"context": m[3]}),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGES, max_size=5))
def test_batch_columns_are_the_records_of_each_message(messages: list[dict[str, Any]]) -> None:
    flat = flatten_batch(messages)
    rows = [dict(zip(CANONICAL_FIELDS, r, strict=True)) for r in zip(*flat.columns, strict=True)]
    expected_rows: list[dict[str, Any]] = []
    expected_rejects = []
    for position, msg in enumerate(messages, start=1):
        for rec, reason in flatten_message({"type": "track", **msg}):
            if reason is None:
                expected_rows.append({name: rec.get(name) for name in CANONICAL_FIELDS})
            else:
                expected_rejects.append((position, rec, reason))
    assert rows == expected_rows
    assert flat.rejects == expected_rejects
    assert len(flat.lines) == len(rows)


def test_records_keep_their_key_order() -> None:
    msg = {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "messageId": "m1",
        "timestamp": "2024-01-01T00:00:00Z",
        "properties": {"order_id": "o1", "products": [{"sku": "I1", "price": 2.5}, 7]},
    }
    (first, ok), (second, why) = flatten_message(msg)
    assert ok is None and list(first) == [
        "event_id", "user_id", "type", "timestamp", "session_id", "order_id", "coupon",
        "rating", "item_id", "price",
    ]  # fmt: skip
    assert first["event_id"] == "m1:0" and first["item_id"] == "I1"
    assert second == {"product": 7} and why == ("malformed_json", "products[1] is not an object")


def test_service_frame_types_numbers_only_when_all_are_numbers() -> None:
    def msg(i: int, price: Any) -> dict[str, Any]:
        return {
            "userId": f"u{i}",
            "event": "Product Viewed",
            "messageId": f"m{i}",
            "timestamp": "2024-01-01T00:00:00Z",
            "properties": {"product_id": "I1", "price": price},
        }

    numbers = _raw([msg(0, 2.5), msg(1, 3), msg(2, None)], "api:t").frame
    assert numbers["price"].dtype == "float64" and numbers["price"].tolist()[:2] == [2.5, 3.0]
    assert numbers["user_id"].dtype == "str" and numbers["category"].isna().all()
    mixed = _raw([msg(0, 2.5), msg(1, "4.5"), msg(2, True)], "api:t").frame
    assert mixed["price"].dtype == "str" and mixed["price"].tolist() == ["2.5", "4.5", "True"]
    odd = _raw([{**msg(0, 1), "userId": 12}, {**msg(1, 1), "userId": "u1"}], "api:t").frame
    assert odd["user_id"].dtype == "str" and odd["user_id"].tolist() == ["12", "u1"]
    assert len(_raw([], "api:t").frame.columns) == len(CANONICAL_FIELDS)
    assert isinstance(odd, pd.DataFrame)
