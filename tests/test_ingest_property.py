"""Property tests: random and malformed input never crashes a reader and is always accounted for."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from automation.config import Settings
from automation.errors import InputError
from automation.ingest.run import ingest_files
from automation.store.db import open_store

HEADER = b"event_id,user_id,type,timestamp,item_id,quantity,price,rating\n"

field = st.one_of(
    st.sampled_from(
        [
            b"",
            b"u1",
            b"view",
            b"purchase",
            b"Order Completed",
            b"2024-01-01T00:00:00Z",
            b"1704103200",
            b"-1",
            b"3.5",
            b"abc",
            b'"q,uoted"',
            b"\xff\xfe",
            b"nan",
            b"1e309",
        ]
    ),
    st.binary(max_size=12),
    st.text(max_size=12).map(lambda s: s.encode("utf-8")),
)
row = st.lists(field, min_size=0, max_size=10).map(lambda fs: b",".join(fs))
body = st.lists(row, min_size=1, max_size=25).map(lambda rows: b"\n".join(rows) + b"\n")


@pytest.fixture(scope="module")
def store() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory() as d:
        eng = open_store(f"sqlite:///{Path(d) / 'p.db'}")
        yield eng
        eng.dispose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=body)
def test_random_csv_is_fully_accounted_for(store: Engine, data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "random.csv"
    path.write_bytes(HEADER + data)
    with store.connect() as conn:
        events_before = conn.execute(text("SELECT COUNT(*) FROM events")).scalar()
    try:
        report = ingest_files(store, [path], Settings())
    except InputError:
        return  # e.g. no rows at all: a clear error, not a crash
    assert report.read == report.accepted + report.duplicates + report.quarantined
    with store.connect() as conn:
        events_after = conn.execute(text("SELECT COUNT(*) FROM events")).scalar()
    assert events_after - events_before == report.accepted


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=8,
)
json_line = st.one_of(
    st.dictionaries(
        st.sampled_from(
            [
                "user_id",
                "type",
                "timestamp",
                "item_id",
                "price",
                "quantity",
                "event",
                "userId",
                "properties",
                "batch",
                "messageId",
            ]
        ),
        json_value,
        max_size=6,
    ).map(lambda d: __import__("json").dumps(d).encode()),
    st.binary(max_size=20),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(json_line, min_size=1, max_size=15))
def test_random_jsonl_is_fully_accounted_for(
    store: Engine, lines: list[bytes], tmp_path: Path
) -> None:
    path = tmp_path / "random.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    try:
        report = ingest_files(store, [path], Settings())
    except InputError:
        return
    assert report.read == report.accepted + report.duplicates + report.quarantined
