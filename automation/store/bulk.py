"""Set-wise bulk writes and reads: ``COPY`` on PostgreSQL, ``executemany`` on SQLite.

Frames are converted column-wise with Arrow (no Python loop over rows on PostgreSQL; one tuple per
row is what SQLite's DB-API needs). Timestamps are UTC; on SQLite they are stored as
``YYYY-MM-DD HH:MM:SS.ffffff`` text, the format SQLAlchemy itself writes, so both paths agree.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.pool import Pool

SQLITE_TS = "%Y-%m-%d %H:%M:%S"
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def ids_to_hex(ids: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 ids as 32-character hex strings (what PostgreSQL's ``uuid`` accepts)."""
    out = np.empty((len(ids), 32), dtype=np.uint8)
    out[:, 0::2] = _HEX[ids >> 4]
    out[:, 1::2] = _HEX[ids & 15]
    return out.view("S32").ravel()


def ids_to_bytes(ids: np.ndarray) -> list[bytes]:
    flat = ids.tobytes()
    return [flat[i : i + 16] for i in range(0, len(flat), 16)]


def _arrow_column(s: pd.Series | np.ndarray) -> pa.Array:
    if isinstance(s, np.ndarray) and s.ndim == 2:  # event ids
        return pc.cast(pa.array(ids_to_hex(s)), pa.string())
    ser = pd.Series(s) if isinstance(s, np.ndarray) else s
    if isinstance(ser.dtype, pd.DatetimeTZDtype):
        return pa.array(ser.astype("datetime64[us, UTC]"))
    if ser.dtype == bool:
        return pa.array(ser.to_numpy())
    return pa.array(ser, from_pandas=True)


def write_frame(conn: Connection, table: str, frame: dict[str, Any]) -> int:
    """Append the columns of ``frame`` (name -> Series/array) to ``table``; returns rows written."""
    cols = list(frame)
    if not cols:
        return 0
    n = len(frame[cols[0]])
    if n == 0:
        return 0
    if conn.dialect.name == "postgresql":
        data = pa.table({c: _arrow_column(frame[c]) for c in cols})
        buf = io.BytesIO()
        pacsv.write_csv(data, buf, pacsv.WriteOptions(include_header=False))
        raw: Any = conn.connection.dbapi_connection
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN (FORMAT csv)") as cp,
        ):
            cp.write(buf.getbuffer())
        return n
    columns = [_sqlite_values(frame[c]) for c in cols]
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    lite: Any = conn.connection.dbapi_connection
    cur = lite.cursor()
    cur.executemany(sql, list(zip(*columns, strict=True)))
    cur.close()
    return n


def _sqlite_values(s: pd.Series | np.ndarray) -> list[Any]:
    if isinstance(s, np.ndarray) and s.ndim == 2:
        return ids_to_bytes(s)
    ser = pd.Series(s) if isinstance(s, np.ndarray) else s
    if isinstance(ser.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(ser):
        arr = pa.array(ser.astype("datetime64[us, UTC]").dt.tz_localize(None))
        return pc.strftime(arr, format=SQLITE_TS).to_pylist()
    if (pd.api.types.is_integer_dtype(ser) or ser.dtype == bool) and not ser.hasnans:
        return ser.tolist()
    if ser.dtype != object:  # floats, text, nullable types: Arrow's conversion, missing -> None
        return pa.array(ser, from_pandas=True).to_pylist()
    values = ser.astype(object).tolist()
    return [None if v is None or v is pd.NA or v != v else v for v in values]


_TEMP_TABLES = "shoal_temp_tables"  # per database connection: temp table name -> columns
_TEMP_MADE = "shoal_temp_made"  # ... and the ones (re)made in the open transaction


def create_temp_like(conn: Connection, name: str, columns_sql: str) -> None:
    """An empty temporary table for this transaction's staging.

    Made once per database connection and emptied on later uses: creating and dropping a table
    is catalog work that PostgreSQL writes to its log and flushes at every commit (milliseconds
    per staged table). On PostgreSQL the table empties itself at commit (``ON COMMIT DELETE
    ROWS``), so a reused table does not accumulate dead rows. Asked for with other columns, the
    table is made again; a rollback that undoes a making is remembered.
    """
    info = conn.connection.info
    tables: dict[str, str] = info.setdefault(_TEMP_TABLES, {})
    on_commit = " ON COMMIT DELETE ROWS" if conn.dialect.name == "postgresql" else ""
    if tables.get(name) == columns_sql:
        conn.execute(
            text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({columns_sql}){on_commit}")
        )
        conn.execute(text(f"DELETE FROM {name}"))
        return
    conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
    conn.execute(text(f"CREATE TEMPORARY TABLE {name} ({columns_sql}){on_commit}"))
    tables[name] = columns_sql
    info.setdefault(_TEMP_MADE, set()).add(name)


def _undone(info: dict[str, Any]) -> None:
    """A rollback: tables (re)made in the transaction may be gone or be the old ones again."""
    tables = info.get(_TEMP_TABLES, {})
    for name in info.pop(_TEMP_MADE, ()):
        tables.pop(name, None)


@event.listens_for(Engine, "commit")
def _kept(conn: Connection) -> None:
    conn.connection.info.pop(_TEMP_MADE, None)


@event.listens_for(Engine, "rollback")
def _rolled_back(conn: Connection) -> None:
    _undone(conn.connection.info)


@event.listens_for(Engine, "rollback_savepoint")
def _rolled_back_to(conn: Connection, name: str, context: Any) -> None:
    _undone(conn.connection.info)


@event.listens_for(Pool, "reset")
def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
    if not state.transaction_was_reset:  # the pool rolls back what was left open
        _undone(record.info)


def read_frame(conn: Connection, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run a query and return a DataFrame (``COPY ... TO STDOUT`` on PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        query = _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
        pg: Any = conn.connection.dbapi_connection
        buf = io.BytesIO()
        with (
            pg.cursor() as cur,
            cur.copy(
                f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)", params or None
            ) as cp,
        ):
            for chunk in cp:
                buf.write(chunk)
        buf.seek(0)
        if buf.getbuffer().nbytes == 0:
            return pd.DataFrame()
        return pacsv.read_csv(buf).to_pandas()
    # The DB-API cursor directly: SQLAlchemy's Row objects cost ~7x on large reads.
    lite: Any = conn.connection.dbapi_connection
    cur = lite.cursor()
    try:
        cur.execute(sql, params or {})
        columns = [d[0] for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=columns)
    finally:
        cur.close()
