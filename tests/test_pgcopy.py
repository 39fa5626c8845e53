"""The binary ``COPY`` encoder against a row-by-row reference, and through PostgreSQL itself."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from automation.store.pgcopy import (
    HEADER,
    PG_EPOCH_US,
    TRAILER,
    Encoder,
    copy_binary,
    join_rows,
    stream,
)

TYPES = {
    "id": "uuid",
    "a": "int8",
    "b": "int4",
    "name": "text",
    "x": "float8",
    "at": "timestamptz",
    "note": "text",
    "z": "float8",
}
FORMATS = {"int8": ">q", "int4": ">i", "float8": ">d"}


def _columns(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    some = rng.random(n) < 0.3  # NULL in about 30% of the rows of a nullable column
    at = pd.Series(pd.to_datetime(rng.integers(0, 2_000_000_000, n), unit="s", utc=True))
    return {
        "id": rng.integers(0, 256, (n, 16), dtype=np.uint8),
        "a": pd.Series(rng.integers(-(2**40), 2**40, n)).astype("Int64").mask(some),
        "b": rng.integers(-1000, 1000, n),
        "name": pd.Series([f"n{i}é" * (i % 4) for i in range(n)], dtype=object).mask(~some),
        "x": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
        "at": at.mask(rng.random(n) < 0.1),
        "note": pd.Series([f"note {i}" for i in range(n)], dtype=object),
        "z": rng.normal(size=n),
    }


def _reference(cols: dict[str, Any], names: list[str], fields: int | None) -> bytes:
    """The format as the PostgreSQL manual states it, one row and one field at a time."""
    n = len(cols["b"])
    out = bytearray()
    for i in range(n):
        if fields != 0:
            out += struct.pack(">h", len(names) if fields is None else fields)
        for c in names:
            kind, v = TYPES[c], cols[c][i]
            if kind == "uuid":
                out += struct.pack(">i", 16) + bytes(v)
            elif v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v):
                out += struct.pack(">i", -1)
            elif kind == "text":
                raw = str(v).encode()
                out += struct.pack(">i", len(raw)) + raw
            elif kind == "timestamptz":
                us = pd.Timestamp(v).value // 1000 - PG_EPOCH_US
                out += struct.pack(">iq", 8, us)
            else:
                value = float(v) if kind == "float8" else int(v)
                out += struct.pack(">i", 8 if kind != "int4" else 4)
                out += struct.pack(FORMATS[kind], value)
    return bytes(out)


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
def test_encoder_matches_the_reference_row_by_row(n: int) -> None:
    cols = _columns(n, seed=n)
    got = b"".join(bytes(b) for b in stream(Encoder(cols, TYPES)))
    assert got == HEADER + _reference(cols, list(TYPES), None) + TRAILER


def test_a_row_split_in_two_encoders_joins_to_the_same_stream() -> None:
    cols = _columns(500, seed=3)
    head_names, tail_names = list(TYPES)[:3], list(TYPES)[3:]
    head = Encoder({c: cols[c] for c in head_names}, TYPES, fields=len(TYPES)).chunks()
    tail = Encoder({c: cols[c] for c in tail_names}, TYPES, fields=0)
    got = b"".join(bytes(b) for b in join_rows(head, tail))
    assert got == HEADER + _reference(cols, list(TYPES), None) + TRAILER


def test_inputs_are_not_mutated() -> None:
    cols = _columns(200, seed=5)
    before = {c: (v.copy() if hasattr(v, "copy") else v) for c, v in cols.items()}
    Encoder(cols, TYPES).rows(0, 200)
    for c, v in cols.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, before[c])
        else:
            pd.testing.assert_series_equal(v, before[c])


@pytest.mark.postgres
def test_postgresql_reads_back_every_value(pg_url: str) -> None:
    n = 3000
    cols = _columns(n, seed=11)
    engine = create_engine(pg_url)
    sql_types = {
        "uuid": "uuid",
        "int8": "bigint",
        "int4": "integer",
        "text": "text",
        "float8": "float8",
        "timestamptz": "timestamptz",
    }
    with engine.begin() as conn:
        ddl = ", ".join(f"{c} {sql_types[t]}" for c, t in TYPES.items())
        conn.execute(text(f"CREATE TABLE enc ({ddl}, ord serial)"))
        copy_binary(conn, "enc", list(TYPES), stream(Encoder(cols, TYPES)))
        back = pd.read_sql(text(f"SELECT {', '.join(TYPES)} FROM enc ORDER BY ord"), conn)
    engine.dispose()
    assert len(back) == n
    ids = [uuid.UUID(bytes=bytes(r)) for r in cols["id"]]
    assert [uuid.UUID(str(v)) for v in back["id"]] == ids
    assert back["a"].astype("Int64").equals(cols["a"].astype("Int64").rename("a"))
    np.testing.assert_array_equal(back["b"].to_numpy(), cols["b"])
    name = cols["name"]
    assert back["name"].isna().tolist() == name.isna().tolist()
    assert back["name"].dropna().tolist() == name.dropna().tolist()
    np.testing.assert_array_equal(back["x"].to_numpy(), cols["x"])
    pd.testing.assert_series_equal(
        back["at"].dt.tz_convert("UTC").astype("datetime64[us, UTC]"),
        cols["at"].astype("datetime64[us, UTC]").rename("at"),
    )
    assert back["note"].tolist() == cols["note"].tolist()
