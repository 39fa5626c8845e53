"""The bare baseline of `synthetic_pg.py`: rows keyed in memory, sent with one binary COPY.

Split out of `synthetic_pg.py` to keep each script small; see that script for how it is used.
"""

from __future__ import annotations

import csv
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa

from automation.ingest.load import event_ids
from automation.store.pgcopy import HEADER, TRAILER, Encoder

# Shoal's ``events`` table (models/events.py), column by column, with the binary COPY types.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("event_id", "uuid PRIMARY KEY", "uuid"),
    ("user_key", "bigint NOT NULL", "int8"),
    ("type", "varchar(10) NOT NULL", "varchar"),
    ("ts", "timestamptz NOT NULL", "timestamptz"),
    ("item_key", "bigint", "int8"),
    ("category", "varchar(200)", "varchar"),
    ("quantity", "float8", "float8"),
    ("price", "float8", "float8"),
    ("revenue", "float8", "float8"),
    ("rating", "float8", "float8"),
    ("session_id", "varchar(200)", "varchar"),
    ("order_id", "varchar(200)", "varchar"),
    ("batch_id", "integer", "int4"),
)
COPY_SQL = (
    f"COPY baseline_events ({', '.join(c for c, _, _ in COLUMNS)}) FROM STDIN (FORMAT BINARY)"
)
DDL = f"CREATE TABLE baseline_events ({', '.join(f'{c} {t}' for c, t, _ in COLUMNS)})"


# ------------------------------------------------------------------------------ keyed rows
def keyed_rows(ev: pd.DataFrame) -> dict[str, Any]:
    """The events as Shoal stores them: ids from ``event_ids``, integer user/item keys."""
    is_line = ev["type"].isin(["purchase", "refund"]).to_numpy()
    acc = pd.DataFrame(
        {
            "event_id": ev["event_id"],
            "user_id": ev["user_id"],
            "type": ev["type"],
            "ts": ev["timestamp"].astype("datetime64[us, UTC]"),
            "item_id": ev["item_id"],
            "quantity": ev["quantity"].astype("float64"),
            "price": ev["price"].astype("float64"),
            "revenue": ev["revenue"].astype("float64").where(is_line),
            "rating": ev["rating"].astype("float64"),
            "session_id": ev["session_id"],
            "order_id": ev["order_id"],
        }
    )
    ids = event_ids(acc)
    user_codes, _ = pd.factorize(ev["user_id"])
    item_codes, _ = pd.factorize(ev["item_id"])
    return {
        "event_id": ids,
        "user_key": user_codes.astype(np.int64) + 1,
        "type": ev["type"],
        "ts": acc["ts"],
        "item_key": np.where(item_codes >= 0, item_codes + 1, -1).astype(np.int64),
        "category": ev["category"],
        "quantity": acc["quantity"].to_numpy(),
        "price": acc["price"].to_numpy(),
        "revenue": acc["revenue"].to_numpy(),
        "rating": acc["rating"].to_numpy(),
        "session_id": ev["session_id"],
        "order_id": ev["order_id"],
        "batch_id": np.ones(len(ev), dtype=np.int32),
    }


# ------------------------------------------------------------------------- Arrow encoder
class ArrowBinaryEncoder(Encoder):
    """Shoal's own column-wise binary COPY encoder (``automation.store.pgcopy``), over COLUMNS."""

    def __init__(self, rows: dict[str, Any]) -> None:
        kinds = {name: ("text" if kind == "varchar" else kind) for name, _, kind in COLUMNS}
        values = dict(rows)
        values["item_key"] = pd.Series(rows["item_key"]).where(rows["item_key"] >= 0)
        super().__init__({name: values[name] for name, _, _ in COLUMNS}, kinds)

    def encode(self, start: int, stop: int) -> pa.Buffer:
        return self.rows(start, stop)


def _python_rows(rows: dict[str, Any], start: int, stop: int) -> list[tuple[Any, ...]]:
    """Plain Python tuples for ``write_row`` (uuid.UUID, datetime, None for NULL)."""
    cols: list[list[Any]] = []
    for name, _, kind in COLUMNS:
        v = rows[name][start:stop]
        if kind == "uuid":
            cols.append([uuid.UUID(bytes=bytes(r)) for r in v])
        elif kind == "timestamptz":
            cols.append(list(pd.Series(v).dt.to_pydatetime()))
        elif kind == "varchar":
            cols.append(pd.Series(v).astype(object).where(pd.Series(v).notna(), None).tolist())
        elif name == "item_key":
            cols.append([None if x < 0 else x for x in v.tolist()])
        elif kind == "float8":
            cols.append([None if x != x else x for x in v.tolist()])
        else:
            cols.append(v.tolist())
    return list(zip(*cols, strict=True))


def baseline_copy(dsn: str, rows: dict[str, Any], method: str, chunk: int) -> dict[str, Any]:
    """One bare COPY of every row into a fresh ``baseline_events``; timed: encode+send+commit."""
    n = len(rows["user_key"])
    prep = 0.0
    encode = 0.0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS baseline_events")
        conn.execute(DDL)
        conn.execute("CHECKPOINT")
    t = time.perf_counter()
    encoder = ArrowBinaryEncoder(rows) if method == "arrow" else None
    prep += time.perf_counter() - t
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        timed = 0.0
        t0 = time.perf_counter()
        with cur.copy(COPY_SQL) as cp:
            if encoder is not None:
                # Encode chunk i+1 in a helper thread (Arrow releases the GIL) while chunk i is
                # sent, as psycopg's own writer thread overlaps write_row with the server.
                def timed_encode(start: int) -> tuple[pa.Buffer, float]:
                    t = time.perf_counter()
                    body = encoder.encode(start, min(start + chunk, n))
                    return body, time.perf_counter() - t

                cp.write(HEADER)
                with ThreadPoolExecutor(max_workers=1) as pool:
                    pending = pool.submit(timed_encode, 0)
                    for start in range(0, n, chunk):
                        body, dt = pending.result()
                        encode += dt
                        if start + chunk < n:
                            pending = pool.submit(timed_encode, start + chunk)
                        cp.write(body)
                cp.write(TRAILER)
            else:
                cp.set_types([k for _, _, k in COLUMNS])
                for start in range(0, n, chunk):
                    timed += time.perf_counter() - t0
                    t = time.perf_counter()
                    batch = _python_rows(rows, start, min(start + chunk, n))
                    prep += time.perf_counter() - t
                    t0 = time.perf_counter()
                    for r in batch:
                        cp.write_row(r)
        conn.commit()
        timed += time.perf_counter() - t0
        stored = conn.execute("SELECT count(*) FROM baseline_events").fetchone()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE baseline_events")
        conn.execute("CHECKPOINT")
    return {
        "method": method,
        "rows": n,
        "stored": int(stored[0]) if stored else None,
        "seconds": timed,
        "encode_seconds": encode if encoder is not None else None,
        "untimed_prep_seconds": prep,
        "events_per_second": n / timed if timed else None,
    }


# ------------------------------------------------------------------ the file, as it is
# Types of the simulator's CSV columns in the file-as-is table; any other column is text.
FILE_TYPES = {
    "event_id": "varchar(200) PRIMARY KEY",
    "timestamp": "timestamptz",
    "quantity": "float8",
    "price": "float8",
    "revenue": "float8",
    "rating": "float8",
}


def file_copy(dsn: str, csv_path: Path, piece: int = 1 << 20) -> dict[str, Any]:
    """The bare indexed ``COPY`` of the CSV file as it is: every column of its header into a
    table typed like it (``event_id`` the primary key), ``FORMAT csv``; no validation, keying or
    deduplication. Timed: sending the file and the commit."""
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f))
    cols = ", ".join(f'"{c}" {FILE_TYPES.get(c, "varchar(200)")}' for c in header)
    names = ", ".join(f'"{c}"' for c in header)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS file_events")
        conn.execute(f"CREATE TABLE file_events ({cols})")
        conn.execute("CHECKPOINT")
    with psycopg.connect(dsn) as conn:
        t = time.perf_counter()
        with (
            open(csv_path, "rb") as f,
            conn.cursor().copy(f"COPY file_events ({names}) FROM STDIN (FORMAT csv, HEADER)") as cp,
        ):
            while body := f.read(piece):
                cp.write(body)
        conn.commit()
        seconds = time.perf_counter() - t
        stored = conn.execute("SELECT count(*) FROM file_events").fetchone()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE file_events")
        conn.execute("CHECKPOINT")
    n = int(stored[0]) if stored else 0
    return {
        "method": "csv file",
        "rows": n,
        "stored": n,
        "seconds": seconds,
        "encode_seconds": None,
        "untimed_prep_seconds": 0.0,
        "events_per_second": n / seconds if seconds else None,
    }


# ---------------------------------------------------------------------- baseline segments
