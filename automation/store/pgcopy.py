"""PostgreSQL binary ``COPY``, encoded column-wise with Arrow (no Python loop over rows).

The binary format is row-major: a header, then per row an ``int16`` field count and per field an
``int32`` length (-1 for NULL) and the value's bytes, then a trailer. Each field becomes an Arrow
binary column (its length prefix, then its value) and :func:`pyarrow.compute.binary_join_element_wise`
joins them row by row, so the joined array's data buffer is the ``COPY`` body. Arrow releases the
GIL while it does so, which lets the ingest prepare one block while the database loads another.

Supported column types: ``uuid`` ((n, 16) uint8 rows), ``int8``, ``int4``, ``float8``,
``timestamptz`` (UTC datetimes) and ``text`` (strings; ``varchar`` columns accept it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
TYPES = ("uuid", "int8", "int4", "float8", "timestamptz", "text")
CHUNK_ROWS = 200_000


def _fixed(mat: np.ndarray) -> pa.Array:
    """(n, w) uint8 rows as an Arrow binary array."""
    n, w = mat.shape
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int32)
    return pa.BinaryArray.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(mat))]
    )


def _be(values: np.ndarray, dtype: str) -> np.ndarray:
    a = np.ascontiguousarray(values.astype(dtype))
    return a.view(np.uint8).reshape(len(a), a.dtype.itemsize)


def _fixed_run(run: list[tuple[np.ndarray, bool]], m: int) -> pa.Array:
    """Consecutive fixed-width fields without NULLs, ``m`` rows, as one binary array.

    ``run``: (big-endian byte rows, whether a length prefix goes first) per field, laid out side
    by side in one byte matrix.
    """
    width = sum(d.shape[1] + (4 if prefixed else 0) for d, prefixed in run)
    mat = np.empty((m, width), dtype=np.uint8)
    pos = 0
    for data, prefixed in run:
        w = data.shape[1]
        if prefixed:
            mat[:, pos : pos + 4] = _be(np.full(1, w), ">i4")
            pos += 4
        mat[:, pos : pos + w] = data
        pos += w
    return _fixed(mat)


def _nullable(data: np.ndarray, valid: np.ndarray) -> list[pa.Array]:
    """A fixed-width field with NULLs: its lengths (-1 for NULL) and its values (none for NULL)."""
    width = data.shape[1]
    lengths = _fixed(_be(np.where(valid, width, -1), ">i4"))
    bitmap = pa.array(valid).buffers()[1]
    values = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(data), [bitmap, pa.py_buffer(np.ascontiguousarray(data))]
    )
    return [lengths, values.cast(pa.binary()).fill_null(pa.scalar(b"", pa.binary()))]


def _column(values: Any, kind: str) -> tuple[np.ndarray | pa.Array, np.ndarray | None]:
    """One column as (big-endian byte rows or an Arrow binary array, validity or None)."""
    if kind == "uuid":
        return np.ascontiguousarray(values, dtype=np.uint8), None
    if kind == "text":
        arr = pa.array(values, from_pandas=True, type=pa.large_string())
        if isinstance(arr, pa.ChunkedArray):  # pandas text backed by several Arrow chunks
            arr = arr.combine_chunks()
        return pc.cast(arr, pa.binary()), None
    ser = values if isinstance(values, pd.Series) else pd.Series(values)
    if kind == "timestamptz":
        valid = ser.notna().to_numpy()
        us = ser.astype("datetime64[us, UTC]").dt.tz_localize(None).to_numpy()
        raw = np.where(valid, us.astype("int64", copy=False), 0) - PG_EPOCH_US
        return _be(raw, ">i8"), None if valid.all() else valid
    if kind in ("int8", "int4"):
        valid = ser.notna().to_numpy()
        raw = ser.fillna(0).to_numpy(dtype="int64")
        return _be(raw, ">i8" if kind == "int8" else ">i4"), None if valid.all() else valid
    if kind == "float8":
        raw = ser.to_numpy(dtype="float64", na_value=np.nan)
        valid = ~np.isnan(raw)
        return _be(raw, ">f8"), None if valid.all() else valid
    raise ValueError(f"kind={kind!r} should be one of {TYPES}")


class Encoder:
    """Binary ``COPY`` fields of ``columns`` (name -> values), typed by ``types`` (name -> type).

    Columns are converted once; :meth:`rows` encodes any row range, so a caller can encode the
    next range in a helper thread while the previous one is sent. A row may be split in two
    encoders: the first with ``fields`` set to the row's total number of fields, the second
    with ``fields=0`` (no count); :func:`join_rows` glues their row arrays together.
    """

    def __init__(
        self, columns: Mapping[str, Any], types: Mapping[str, str], fields: int | None = None
    ) -> None:
        self.names = list(columns)
        self.n = len(columns[self.names[0]]) if self.names else 0
        self.fields = len(self.names) if fields is None else fields
        self.encoded = [_column(columns[c], types[c]) for c in self.names]

    def row_array(self, start: int, stop: int) -> pa.Array:
        """Rows ``start:stop``, one binary element per row.

        Runs of fixed-width fields without NULLs in the range (and the field count) are laid
        out side by side in one byte matrix (NumPy); Arrow joins them to the other fields.
        """
        m = stop - start
        pieces: list[pa.Array] = []
        run: list[tuple[np.ndarray, bool]] = []
        if self.fields:
            run.append((_be(np.full(m, self.fields), ">i2"), False))
        for data, valid in self.encoded:
            ok = None if valid is None else valid[start:stop]
            if isinstance(data, np.ndarray) and (ok is None or ok.all()):
                run.append((data[start:stop], True))
                continue
            if run:
                pieces.append(_fixed_run(run, m))
                run = []
            if isinstance(data, np.ndarray):
                assert ok is not None
                pieces.extend(_nullable(data[start:stop], ok))
                continue
            arr = data.slice(start, m)
            lengths = pc.binary_length(arr).fill_null(-1).to_numpy(zero_copy_only=False)
            pieces.append(_fixed(_be(lengths, ">i4")))
            pieces.append(arr.fill_null(pa.scalar(b"", pa.binary())))
        if run:
            pieces.append(_fixed_run(run, m))
        if len(pieces) == 1:
            return pieces[0]
        return pc.binary_join_element_wise(*pieces, b"")

    def rows(self, start: int, stop: int) -> pa.Buffer:
        """The encoded rows ``start:stop`` (without the stream's header and trailer)."""
        return _data(self.row_array(start, stop))

    def chunks(self) -> list[pa.Array]:
        """Every row, as row arrays of at most ``CHUNK_ROWS`` rows."""
        return [
            self.row_array(i, min(i + CHUNK_ROWS, self.n)) for i in range(0, self.n, CHUNK_ROWS)
        ]


def _data(joined: pa.Array) -> pa.Buffer:
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)
    lo, hi = int(offsets[joined.offset]), int(offsets[joined.offset + len(joined)])
    return joined.buffers()[2][lo:hi]


def join_rows(head: list[pa.Array], tail: Encoder) -> list[pa.Buffer]:
    """A whole stream from row arrays made by :meth:`Encoder.chunks` and the rest of each row."""
    body = [pa.py_buffer(HEADER)]
    start = 0
    for chunk in head:
        stop = start + len(chunk)
        body.append(_data(pc.binary_join_element_wise(chunk, tail.row_array(start, stop), b"")))
        start = stop
    body.append(pa.py_buffer(TRAILER))
    return body


def stream(encoder: Encoder) -> list[pa.Buffer]:
    """A whole stream (header, every row, trailer) from one encoder."""
    rows = [
        encoder.rows(i, min(i + CHUNK_ROWS, encoder.n)) for i in range(0, encoder.n, CHUNK_ROWS)
    ]
    return [pa.py_buffer(HEADER), *rows, pa.py_buffer(TRAILER)]


def copy_binary(conn: Connection, table: str, names: Sequence[str], body: list[pa.Buffer]) -> None:
    """Send an encoded stream with ``COPY table (names) FROM STDIN (FORMAT binary)``."""
    raw: Any = conn.connection.dbapi_connection
    with (
        raw.cursor() as cur,
        cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT binary)") as cp,
    ):
        for piece in body:
            cp.write(memoryview(piece))
