"""Readers: CSV (also ``.gz``), JSON lines (flat rows or Segment payloads) and Parquet.

Every reader yields :class:`RawBatch` objects: the source columns of the rows it could read, their
line numbers, and the rows it had to reject while reading (wrong column count, invalid UTF-8,
malformed JSON, ...). ``read`` counts both, so the accounting identity
``read == accepted + duplicates + quarantined`` can be checked batch by batch.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from automation.errors import EmptyInputError, InputError
from automation.ingest.segment_spec import flatten_message

BLOCK_BYTES = 32 << 20
JSON_BATCH_LINES = 100_000


@dataclass
class Reject:
    """A row refused before or during validation."""

    line: int | None
    reason: str
    detail: str
    raw: str


@dataclass
class RawBatch:
    """Source rows as read: columns as in the file, one line number per row, read-time rejects."""

    source: str
    frame: pd.DataFrame
    lines: np.ndarray
    rejects: list[Reject] = field(default_factory=list)

    @property
    def read(self) -> int:
        return len(self.frame) + len(self.rejects)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".csv", ".txt")):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise InputError(f"{path}: unknown file type (expected .csv, .csv.gz, .jsonl or .parquet)")


def read_file(path: str | Path, block_bytes: int = BLOCK_BYTES) -> Iterator[RawBatch]:
    """Yield the batches of one file, by its extension."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a file")
    fmt = detect_format(p)
    if fmt == "csv":
        return read_csv(p, block_bytes)
    if fmt == "jsonl":
        return read_jsonl(p)
    return read_parquet(p)


def _open(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


# ----------------------------------------------------------------------------------------- CSV
def read_csv(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[RawBatch]:
    """Read a CSV in blocks of whole lines; exact line numbers, messy blocks parsed line by line."""
    with _open(path) as fh:
        try:
            first = fh.readline()
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: cannot read: {exc}") from None
        if not first.strip():
            raise EmptyInputError(f"{path}: file is empty (no header line)")
        try:
            header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]))
        except UnicodeDecodeError:
            raise InputError(f"{path}: the header line is not valid UTF-8") from None
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise InputError(f"{path}: duplicate column names in the header: {', '.join(dupes)}")
        line = 1
        carry = b""
        while True:
            try:
                chunk = fh.read(block_bytes)
            except (OSError, EOFError) as exc:
                raise InputError(f"{path}: cannot read past line {line}: {exc}") from None
            data = carry + chunk
            if not data:
                break
            if chunk:
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                block, carry = data[: cut + 1], data[cut + 1 :]
            else:
                block, carry = (data if data.endswith(b"\n") else data + b"\n"), b""
            yield _parse_block(block, header, str(path), line + 1)
            line += block.count(b"\n")


def _arrow_csv(block: bytes, header: list[str], kind: pa.DataType) -> pa.Table | None:
    """The block parsed by Arrow with every column of type ``kind``; ``None`` when Arrow rejects
    it (a wrong column count; invalid UTF-8 for text) or the row count differs from the line
    count (blank lines, quoted newlines)."""
    try:
        table = pacsv.read_csv(
            io.BytesIO(block),
            read_options=pacsv.ReadOptions(column_names=header, use_threads=True),
            convert_options=pacsv.ConvertOptions(column_types={h: kind for h in header}),
        )
    except pa.ArrowInvalid:
        return None
    return table if table.num_rows == block.count(b"\n") else None


def _parse_block(block: bytes, header: list[str], source: str, first_line: int) -> RawBatch:
    n_lines = block.count(b"\n")
    lines = np.arange(first_line, first_line + n_lines, dtype=np.int64)
    # Fastest path: text columns, their UTF-8 checked by Arrow. A block it rejects is parsed as
    # bytes to find the rows with invalid UTF-8; one that fails that too, line by line.
    text = _arrow_csv(block, header, pa.string())
    if text is not None:
        return RawBatch(source, text.to_pandas(), lines, [])
    table = _arrow_csv(block, header, pa.binary())
    if table is None:
        return _parse_block_slow(block, header, source, first_line)
    columns: dict[str, pa.Array] = {}
    bad_rows: set[int] = set()
    for name in header:
        col = table.column(name).combine_chunks()
        try:
            columns[name] = pc.cast(col, pa.string())
        except pa.ArrowInvalid:
            values = col.to_pylist()
            decoded: list[str | None] = []
            for i, v in enumerate(values):
                try:
                    decoded.append(None if v is None else v.decode("utf-8"))
                except UnicodeDecodeError:
                    bad_rows.add(i)
                    decoded.append(None)
            columns[name] = pa.array(decoded, pa.string())
    rejects: list[Reject] = []
    if bad_rows:
        raw_cols = {h: table.column(h).to_pylist() for h in header}
        for i in sorted(bad_rows):
            raw = ",".join(
                (raw_cols[h][i] or b"").decode("utf-8", "backslashreplace") for h in header
            )
            rejects.append(Reject(int(lines[i]), "invalid_utf8", "row is not valid UTF-8", raw))
        keep = np.ones(n_lines, dtype=bool)
        keep[sorted(bad_rows)] = False
        mask = pa.array(keep)
        columns = {h: pc.filter(a, mask) for h, a in columns.items()}
        lines = lines[keep]
    frame = pa.table(columns).to_pandas()
    return RawBatch(source, frame, lines, rejects)


def _parse_block_slow(block: bytes, header: list[str], source: str, first_line: int) -> RawBatch:
    """Line-by-line parse of a block that holds bad rows, quoted newlines or blank lines."""
    raw_lines = block.split(b"\n")[:-1]
    text_lines = [b.decode("utf-8", "surrogateescape") + "\n" for b in raw_lines]
    reader = csv.reader(text_lines)
    rows: list[list[str]] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    consumed = 0
    ncol = len(header)
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            start = consumed
            consumed = reader.line_num
            raw = "".join(text_lines[start:consumed]).rstrip("\n")
            rejects.append(Reject(first_line + start, "malformed_csv", str(exc), _clean(raw)))
            continue
        start, consumed = consumed, reader.line_num
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue  # a blank line is not a record
        raw = "".join(text_lines[start:consumed]).rstrip("\r\n")
        line_no = first_line + start
        if len(rec) != ncol:
            detail = f"expected {ncol} columns, found {len(rec)}"
            rejects.append(Reject(line_no, "wrong_column_count", detail, _clean(raw)))
        elif any(_has_surrogate(v) for v in rec):
            rejects.append(Reject(line_no, "invalid_utf8", "row is not valid UTF-8", _clean(raw)))
        else:
            rows.append(rec)
            lines.append(line_no)
    frame = pd.DataFrame(rows, columns=header, dtype="str") if rows else _empty(header)
    return RawBatch(source, frame, np.asarray(lines, dtype=np.int64), rejects)


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean(raw: str) -> str:
    """Raw text safe to store: undecodable bytes shown as escapes."""
    return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype="str") for c in columns})


# ----------------------------------------------------------------------------------- JSON lines
def read_jsonl(path: Path, batch_lines: int = JSON_BATCH_LINES) -> Iterator[RawBatch]:
    """Read JSON lines: flat objects, or Segment ``track`` messages and ``batch`` payloads."""
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    seen_any = False
    with _open(path) as fh:
        for line_no, raw_bytes in enumerate(fh, start=1):
            try:
                text = raw_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raw = raw_bytes.decode("utf-8", "backslashreplace").rstrip("\r\n")
                rejects.append(Reject(line_no, "invalid_utf8", "line is not valid UTF-8", raw))
                continue
            if not text.strip():
                continue
            seen_any = True
            raw = text.rstrip("\r\n")
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                rejects.append(Reject(line_no, "malformed_json", exc.msg, raw))
                continue
            if not isinstance(obj, dict):
                detail = f"expected a JSON object, found {type(obj).__name__}"
                rejects.append(Reject(line_no, "malformed_json", detail, raw))
                continue
            for rec, reason in flatten_message(obj):
                if reason is not None:
                    rejects.append(Reject(line_no, reason[0], reason[1], json.dumps(rec)[:2000]))
                else:
                    rows.append(rec)
                    lines.append(line_no)
            if len(rows) + len(rejects) >= batch_lines:
                yield _json_batch(str(path), rows, lines, rejects)
                rows, lines, rejects = [], [], []
    if not seen_any and not rejects:
        raise EmptyInputError(f"{path}: file is empty")
    if rows or rejects:
        yield _json_batch(str(path), rows, lines, rejects)


def _json_batch(
    source: str, rows: list[dict[str, Any]], lines: list[int], rejects: list[Reject]
) -> RawBatch:
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for col in frame.columns:
        if frame[col].dtype == object:
            frame[col] = [
                json.dumps(v) if isinstance(v, dict | list) else v for v in frame[col].tolist()
            ]
    return RawBatch(source, frame, np.asarray(lines, dtype=np.int64), rejects)


# -------------------------------------------------------------------------------------- Parquet
def read_parquet(path: Path, batch_rows: int = 500_000) -> Iterator[RawBatch]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    if pf.metadata.num_rows == 0:
        raise EmptyInputError(f"{path}: file has no rows")
    start = 1
    for batch in pf.iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        lines = np.arange(start, start + len(frame), dtype=np.int64)
        start += len(frame)
        yield RawBatch(str(path), frame, lines)
