"""Readers and validation on small, deliberately messy inputs, on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, text

from automation.config import Settings
from automation.errors import EmptyInputError, InputError
from automation.features.aggregates import (
    UPSERT_COLUMNS,
    categories_select,
    items_select,
    orders_select,
    stats_select,
)
from automation.features.build import build_features
from automation.ingest.run import ingest_files
from automation.store.bulk import read_frame

HEADER = b"event_id,user_id,type,timestamp,item_id,quantity,price,rating\n"
ROWS = [
    (b"e1,u1,purchase,2024-01-01T10:00:00Z,i1,2,3.5,\n", None),
    (b"e2,,view,2024-01-01T10:00:00Z,i1,,,\n", "missing_user_id"),
    (b"e3,u2,teleport,2024-01-01T10:00:00Z,i1,,,\n", "unknown_type"),
    (b"e4,u2,view,not-a-date,i1,,,\n", "unparseable_timestamp"),
    (b"e5,u2,purchase,2024-01-01T10:00:00Z,i1,-1,2,\n", "negative_quantity"),
    (b"e6,u2,purchase,2024-01-01T10:00:00Z,i1,two,2,\n", "non_numeric_quantity"),
    (b"e7,u2,purchase,2024-01-01T10:00:00Z,i1,1,-2,\n", "negative_price"),
    (b"e8,u2,view,2999-01-01T00:00:00Z,i1,,,\n", "timestamp_in_future"),
    (b"e9,u2,view\n", "wrong_column_count"),
    (b"e10,u3,Product Viewed,1704103200,i2,,,\n", None),
    (b"e11,u3,Order Completed,1704103200000,i2,1,5,\n", None),
    (b"e1,u1,purchase,2024-01-01T10:00:00Z,i1,2,3.5,\n", "duplicate"),
    (b"e12,u\xff\xfe,view,2024-01-01T10:00:00Z,i1,,,\n", "invalid_utf8"),
    (b"e13,u4,view,,i1,,,\n", "missing_timestamp"),
    (b"e14,u4,rating,2024-01-01T10:00:00Z,i1,,,\n", "missing_rating"),
    (b"e15,u4,rating,2024-01-01T10:00:00Z,i1,,,9\n", "rating_out_of_range"),
    (b'e16,u5,purchase,2024-01-01T10:00:00Z,"i,3",1,1.5,\n', None),
    (b"e17,u5,purchase,1985-01-01T10:00:00Z,i1,1,1.5,\n", "timestamp_out_of_range"),
    (b"e18,u5,purchase,2024-01-01T10:00:00Z,i1,0,1.5,\n", "zero_quantity"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def expected() -> dict[str, int]:
    reasons = [r for _, r in ROWS]
    return {
        "read": len(ROWS),
        "accepted": reasons.count(None),
        "duplicates": reasons.count("duplicate"),
        "quarantined": len([r for r in reasons if r not in (None, "duplicate")]),
    }


def test_messy_csv_every_row_accounted_for(engine: Engine, tmp_path: Path) -> None:
    path = _write(tmp_path / "messy.csv", HEADER + b"".join(r for r, _ in ROWS))
    report = ingest_files(engine, [path], Settings())
    got = report.to_dict()
    assert {k: got[k] for k in expected()} == expected()
    want = sorted(r for _, r in ROWS if r not in (None, "duplicate"))
    assert sorted(report.reasons.elements()) == want
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT line, reason, raw FROM quarantine ORDER BY line")).all()
        assert len(rows) == len(want)
        by_reason = {r.reason: r for r in rows}
        # Line numbers count the header as line 1.
        assert by_reason["missing_user_id"].line == 3
        assert by_reason["wrong_column_count"].line == 10
        assert by_reason["wrong_column_count"].raw == "e9,u2,view"
        assert "\\xff" in by_reason["invalid_utf8"].raw
        n_events = conn.execute(text("SELECT COUNT(*) FROM events")).scalar()
        assert n_events == expected()["accepted"]
        types = {t for (t,) in conn.execute(text("SELECT DISTINCT type FROM events"))}
        assert types == {"purchase", "view"}


def test_reingest_adds_nothing_anywhere(engine: Engine, tmp_path: Path) -> None:
    path = _write(tmp_path / "messy.csv", HEADER + b"".join(r for r, _ in ROWS))
    ingest_files(engine, [path], Settings())
    with engine.connect() as conn:
        before = {
            t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar()
            for t in ("events", "quarantine", "users", "items", "user_stats", "user_orders")
        }
        n_events_before = conn.execute(text("SELECT SUM(n_events) FROM user_stats")).scalar()
    again = ingest_files(engine, [path], Settings())
    assert again.accepted == 0
    assert again.duplicates == expected()["accepted"] + expected()["duplicates"]
    with engine.connect() as conn:
        after = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar() for t in before}
        assert conn.execute(text("SELECT SUM(n_events) FROM user_stats")).scalar() == (
            n_events_before
        )
    assert after == before


def test_gzip_quoted_newlines_and_blank_lines(engine: Engine, tmp_path: Path) -> None:
    body = (
        b"user_id,type,timestamp,item_name\n"
        b'u1,view,2024-01-01T00:00:00Z,"two\nlines"\n'
        b"\n"
        b"u2,view,2024-01-01T00:00:00Z,plain\n"
    )
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(body))
    report = ingest_files(engine, [path], Settings())
    assert (report.read, report.accepted, report.quarantined) == (2, 2, 0)


def test_jsonl_flat_and_segment_payloads(engine: Engine, tmp_path: Path) -> None:
    lines = [
        {"user_id": "u1", "type": "view", "timestamp": "2024-01-01T00:00:00Z", "item_id": "a"},
        {
            "type": "track",
            "event": "Order Completed",
            "userId": "u2",
            "messageId": "m1",
            "timestamp": "2024-01-02T10:00:00+01:00",
            "properties": {
                "order_id": "o1",
                "products": [
                    {"product_id": "a", "price": 2.5, "quantity": 2, "category": "Toys"},
                    {"product_id": "b", "price": 10, "quantity": 1, "category": "Books"},
                ],
            },
        },
        {"type": "identify", "userId": "u2", "traits": {"email": "x@example.com"}},
        {
            "batch": [
                {
                    "type": "track",
                    "event": "Product Viewed",
                    "anonymousId": "anon-9",
                    "messageId": "m2",
                    "timestamp": "2024-01-03T00:00:00Z",
                    "properties": {"product_id": "c", "category": "Toys", "price": 3},
                },
                {
                    "type": "track",
                    "event": "Product Reviewed",
                    "userId": "u1",
                    "messageId": "m3",
                    "timestamp": "2024-01-03T00:00:00Z",
                    "properties": {"product_id": "a", "rating": 4},
                },
            ]
        },
    ]
    text_lines = [json.dumps(x) for x in lines] + ["{not json", "[1, 2]"]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    report = ingest_files(engine, [path], Settings())
    assert report.read == 1 + 2 + 1 + 2 + 2
    assert report.accepted == 5
    assert dict(report.reasons) == {"unsupported_message_type": 1, "malformed_json": 2}
    with engine.connect() as conn:
        purchases = conn.execute(
            text("SELECT order_id, revenue FROM events WHERE type = 'purchase' ORDER BY revenue")
        ).all()
        assert [(o, r) for o, r in purchases] == [("o1", 5.0), ("o1", 10.0)]
        anon = conn.execute(text("SELECT external_id FROM users WHERE external_id LIKE 'anon:%'"))
        assert [a for (a,) in anon] == ["anon:anon-9"]
        cats = conn.execute(text("SELECT COUNT(*) FROM items WHERE category IS NOT NULL"))
        assert cats.scalar() == 3
    # Segment message ids are event ids: the same payload again is all duplicates.
    assert ingest_files(engine, [path], Settings()).accepted == 0


def test_parquet_typed_columns(engine: Engine, tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "customer": [1, 2, 3],
            "kind": ["purchase", "view", "purchase"],
            "when": pd.to_datetime(["2024-01-01", "2024-01-02", None]),
            "sku": ["a", "b", "c"],
            "qty": [1, 2, 3],
            "unit": [1.5, 2.0, 3.0],
        }
    )
    path = tmp_path / "events.parquet"
    frame.to_parquet(path)
    report = ingest_files(
        engine,
        [path],
        Settings(),
        maps=[
            "user_id=customer",
            "type=kind",
            "timestamp=when",
            "item_id=sku",
            "quantity=qty",
            "price=unit",
        ],
    )
    assert (report.read, report.accepted, report.quarantined) == (3, 2, 1)
    assert dict(report.reasons) == {"missing_timestamp": 1}


def test_map_and_set_and_online_retail_preset(engine: Engine, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "sales.csv",
        b"who,sku,when\nc1,x,2024-02-01 10:00\nc2,y,2024-02-01 11:00\n",
    )
    report = ingest_files(
        engine,
        [path],
        Settings(),
        maps=["user_id=who", "item_id=sku", "timestamp=when"],
        sets=["type=purchase"],
    )
    assert report.accepted == 2
    with pytest.raises(InputError, match="--map user_id=nobody: no column 'nobody'"):
        ingest_files(engine, [path], Settings(), maps=["user_id=nobody"])
    with pytest.raises(InputError, match="unknown preset 'shopify'"):
        ingest_files(engine, [path], Settings(), preset="shopify")
    with pytest.raises(InputError, match="unknown field 'colour'"):
        ingest_files(engine, [path], Settings(), sets=["colour=red"])
    with pytest.raises(InputError, match="preset 'online-retail' expects a column"):
        ingest_files(engine, [path], Settings(), preset="online-retail")


def test_missing_and_empty_files(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        ingest_files(engine, [tmp_path / "nope.csv"], Settings())
    with pytest.raises(EmptyInputError):
        ingest_files(engine, [_write(tmp_path / "empty.csv", b"")], Settings())
    with pytest.raises(EmptyInputError):
        ingest_files(engine, [_write(tmp_path / "header.csv", HEADER)], Settings())
    with pytest.raises(InputError, match="unknown file type"):
        ingest_files(engine, [_write(tmp_path / "x.xls", b"abc")], Settings())


def test_local_time_zone_and_refunds_of_online_retail(engine: Engine, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "or.csv",
        b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        b"536365,85123A,HEART,6,2011-07-01 08:26:00,2.55,17850.0,United Kingdom\n"
        b"C536379,85123A,HEART,-2,2011-07-02 09:41:00,2.55,17850.0,United Kingdom\n"
        b"536370,POST,POSTAGE,3,2011-07-02 09:45:00,18,17850.0,United Kingdom\n"
        b"536371,22728,ALARM CLOCK,-5,2011-07-02 09:45:00,3.75,,United Kingdom\n",
    )
    report = ingest_files(engine, [path], Settings(), preset="online-retail")
    assert (report.accepted, report.quarantined) == (3, 1)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT type, quantity, revenue, ts FROM events ORDER BY ts")
        ).all()
        assert [(r.type, r.quantity) for r in rows] == [
            ("purchase", 6.0),
            ("refund", 2.0),
            ("purchase", 3.0),
        ]
        # 08:26 in London in July (BST) is 07:26 UTC.
        assert pd.Timestamp(rows[0].ts).strftime("%H:%M") == "07:26"
        assert conn.execute(text("SELECT external_id FROM users")).scalar() == "17850"
        post = conn.execute(text("SELECT is_product FROM items WHERE external_id = 'POST'"))
        assert not post.scalar()
        stats = conn.execute(text("SELECT purchase_revenue, refund_revenue FROM user_stats")).one()
        assert stats.purchase_revenue == pytest.approx(6 * 2.55 + 54)
        assert stats.refund_revenue == pytest.approx(5.1)


def test_out_of_order_blocks_and_overlap_accounted(engine: Engine, tmp_path: Path) -> None:
    """Newer events take the no-probe path, older ones the duplicate check; both stay exact.

    Tiny blocks (1 MiB) make the reader hand over many blocks, so the helper thread prepares
    block i+1 while block i is in the database.
    """
    rows = [
        f"u{i % 97},{'purchase' if i % 5 == 0 else 'view'},"
        f"{1_700_000_000 + i * 60},i{i % 31},1,2.5\n".encode()
        for i in range(100_000)
    ]
    head = b"user_id,type,timestamp,item_id,quantity,price\n"
    late = _write(tmp_path / "late.csv", head + b"".join(rows[50_000:]))
    early = _write(tmp_path / "early.csv", head + b"".join(rows[:50_000]))
    mixed = _write(tmp_path / "mixed.csv", head + b"".join(rows[45_000:55_000]))
    small = Settings(ingest_block_mb=1)
    assert ingest_files(engine, [late], small).accepted == 50_000
    got = ingest_files(engine, [early], small)  # older than everything stored: all new
    assert (got.accepted, got.duplicates) == (50_000, 0)
    got = ingest_files(engine, [mixed], small)  # all stored already
    assert (got.accepted, got.duplicates) == (0, 10_000)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == 100_000
        assert conn.execute(text("SELECT SUM(n_events) FROM user_stats")).scalar() == 100_000
        n_batches = conn.execute(text("SELECT COUNT(*) FROM ingest_batches")).scalar()
        assert n_batches is not None and n_batches > 3
        _assert_aggregates_recomputed(conn)


def _assert_aggregates_recomputed(conn: Connection, min_rows: int = 0) -> None:
    """Every running aggregate equals a recompute from the stored events (and holds at least
    ``min_rows`` rows)."""
    for table, select, keys in (
        ("user_stats", stats_select("events"), "user_key"),
        ("user_orders", orders_select("events"), "user_key, order_id"),
        ("user_items", items_select("events"), "user_key, item_key"),
        ("user_categories", categories_select("events"), "user_key, category"),
    ):
        cols = ", ".join(UPSERT_COLUMNS[table])
        stored = read_frame(conn, f"SELECT {cols} FROM {table} ORDER BY {keys}")
        recomputed = read_frame(conn, f"SELECT {cols} FROM ({select}) AS r ORDER BY {keys}")
        assert len(stored) >= min_rows, table
        pd.testing.assert_frame_equal(stored, recomputed, check_dtype=False, rtol=1e-9)


def test_windows_of_blocks_fold_the_aggregates_exactly(engine: Engine, tmp_path: Path) -> None:
    """Several blocks per transaction (aggregates folded once per window on PostgreSQL) give the
    same running aggregates as a recompute from the stored events, also when a re-ingest with
    overlap sends some blocks down the duplicate check."""
    rows = [
        f"u{i % 211},{('view', 'cart', 'purchase', 'refund', 'rating')[i % 5]},"
        f"{1_700_000_000 + i * 37},i{i % 53},{1 + i % 3},{2.5 + i % 7},"
        f"{(i % 5) + 0.0 if i % 5 == 4 else ''},c{i % 4},o{i // 9}\n".encode()
        for i in range(60_000)
    ]
    head = b"user_id,type,timestamp,item_id,quantity,price,rating,category,order_id\n"
    first = _write(tmp_path / "first.csv", head + b"".join(rows[:40_000]))
    overlap = _write(tmp_path / "overlap.csv", head + b"".join(rows[30_000:]))
    windows = Settings(ingest_block_mb=1, ingest_blocks_per_commit=2)
    assert ingest_files(engine, [first], windows).accepted == 40_000
    got = ingest_files(engine, [overlap], windows)
    assert (got.accepted, got.duplicates) == (20_000, 10_000)
    with engine.connect() as conn:
        n_batches = conn.execute(text("SELECT COUNT(*) FROM ingest_batches")).scalar()
        assert n_batches is not None and n_batches >= 4
        assert conn.execute(text("SELECT SUM(n_events) FROM user_stats")).scalar() == 60_000
        assert conn.execute(text("SELECT SUM(n_events) FROM batch_users")).scalar() == 60_000
        lines = conn.execute(text("SELECT SUM(n_lines) FROM user_orders")).scalar()
        assert lines == sum(1 for i in range(60_000) if i % 5 == 2)
        fast = build_features(conn).frame
        slow = build_features(conn, from_events=True).frame
        _assert_aggregates_recomputed(conn, min_rows=101)
    pd.testing.assert_frame_equal(fast, slow, check_exact=False, rtol=1e-9, atol=1e-9)


def test_a_block_parsed_into_several_arrow_chunks(engine: Engine, tmp_path: Path) -> None:
    """A block of several MB is parsed by Arrow in several chunks (threads): its text columns
    reach validation, the binary COPY and the aggregates whole."""
    rows = [
        f"u{i % 997},{('view', 'cart', 'purchase')[i % 3]},{1_700_000_000 + i},i{i % 301},"
        f"cat{i % 7},o{i // 4},{1 + i % 2},{3.5 + i % 5},{'x' * (i % 50)}\n".encode()
        for i in range(60_000)
    ]
    head = b"user_id,type,timestamp,item_id,category,order_id,quantity,price,session_id\n"
    path = _write(tmp_path / "big.csv", head + b"".join(rows))
    assert path.stat().st_size > 3 << 20  # Arrow's CSV reader cuts 1 MB chunks
    got = ingest_files(engine, [path], Settings())
    assert (got.read, got.accepted, got.quarantined) == (60_000, 60_000, 0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == 60_000
        assert conn.execute(text("SELECT SUM(n_events) FROM user_stats")).scalar() == 60_000
        assert conn.execute(text("SELECT COUNT(DISTINCT category) FROM events")).scalar() == 7
        sessions = conn.execute(text("SELECT MAX(LENGTH(session_id)) FROM events")).scalar()
        assert sessions == 49


def test_several_files_of_several_blocks_in_one_call(engine: Engine, tmp_path: Path) -> None:
    """Blocks prepared ahead for one file never read from the next: every line of every file
    is accounted for."""
    head = b"user_id,type,timestamp,item_id,quantity,price\n"
    paths = []
    for f in range(3):
        rows = [
            f"u{i % 89},view,{1_700_000_000 + f * 10_000_000 + i * 60},i{i % 31},1,2.5\n".encode()
            for i in range(40_000)
        ]
        paths.append(_write(tmp_path / f"part{f}.csv", head + b"".join(rows)))
    got = ingest_files(engine, paths, Settings(ingest_block_mb=1))
    assert (got.read, got.accepted) == (120_000, 120_000)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == 120_000
