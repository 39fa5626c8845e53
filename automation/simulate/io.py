"""Writers (and readers, for round trips) of a :class:`~automation.simulate.generate.Simulation`.

``write_simulation`` writes ``events``, ``truth`` and ``items`` as CSV, Parquet or JSON Lines,
plus ``scenarios.json`` (the injected shifts and the run's parameters). Timestamps are UTC:
ISO 8601 text ending in ``Z`` in CSV and JSON Lines (``2024-01-01T00:21:02.090Z``: milliseconds, the
simulator's resolution). Text formats are produced with pyarrow, 500,000 rows at a time, so writing
ten million events takes seconds and little memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from automation.errors import InputError, ValidationError
from automation.simulate.frame import EVENT_COLUMNS
from automation.simulate.generate import Simulation

__all__ = ["FORMATS", "canonical_events", "read_simulation", "write_simulation"]

FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl")
TABLES: tuple[str, ...] = ("events", "truth", "items")

_BATCH_ROWS = 500_000
"""Rows converted to text at a time by the CSV and JSON Lines writers (bounds memory)."""

_CATEGORICAL = {
    "events": ("user_id", "type", "item_id", "category", "session_id", "order_id"),
    "truth": ("user_id", "persona"),
    "items": (),
}
_COLUMNS = {
    "events": EVENT_COLUMNS,
    "truth": ("user_id", "day", "persona"),
    "items": ("item_id", "name", "category", "price"),
}
_STRINGS = {"events": ("event_id",), "truth": (), "items": ("item_id", "name", "category")}


def _check_fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValidationError(f"fmt={fmt!r} should be one of {', '.join(FORMATS)}")
    return fmt


def _iso_timestamps(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamp columns as ISO 8601 text in UTC (``2024-01-01T00:21:02.090Z`` at ms precision)."""
    columns: list[pa.Array] = []
    for column in batch.columns:
        if pa.types.is_timestamp(column.type):
            # arrow stores UTC: format the values as naive timestamps (much faster than strftime)
            try:
                column = pc.cast(column, pa.timestamp("ms"))
            except pa.ArrowInvalid:  # finer than milliseconds: keep every digit
                column = pc.cast(column, pa.timestamp(column.type.unit))
            text = pc.replace_substring(pc.cast(column, pa.string()), " ", "T", max_replacements=1)
            column = pc.binary_join_element_wise(text, "Z", "")
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _json_values(column: pa.Array) -> pa.Array:
    """JSON text of every value of ``column`` (``null`` for missing and non-finite numbers)."""
    kind = column.type
    if pa.types.is_dictionary(kind):  # encode the distinct values once, then pick
        return pc.fill_null(pc.take(_json_values(column.dictionary), column.indices), "null")
    if pa.types.is_floating(kind):
        text = pc.cast(column, pa.string())
        missing = pc.or_kleene(pc.is_null(column), pc.invert(pc.is_finite(column)))
        return pc.if_else(pc.fill_null(missing, True), pa.scalar("null"), text)
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return pc.fill_null(pc.cast(column, pa.string()), "null")
    text = pc.cast(column, pa.string())
    if pc.any(pc.match_substring_regex(text, _NEEDS_ESCAPE)).as_py():  # rare: let json quote it
        return pa.array(
            ["null" if v is None else json.dumps(v, ensure_ascii=False) for v in text.to_pylist()],
            pa.string(),
        )
    return pc.fill_null(pc.binary_join_element_wise('"', text, '"', ""), "null")


_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def _write_jsonl(table: pa.Table, path: Path) -> None:
    """JSON Lines built column-wise with pyarrow compute, one record batch at a time."""
    with path.open("wb") as handle:
        for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
            batch = _iso_timestamps(batch)
            parts: list[pa.Array | str] = []
            for i, (name, column) in enumerate(zip(batch.schema.names, batch.columns, strict=True)):
                parts.append(("{" if i == 0 else ",") + json.dumps(str(name)) + ":")
                parts.append(_json_values(column))
            parts.append("}\n")
            lines = pc.binary_join_element_wise(*parts, "")
            if isinstance(lines, pa.Array):  # a scalar when the table has no columns
                handle.write(_data(lines))


def _data(lines: pa.Array) -> memoryview:
    """The concatenated values of a string array without nulls, straight from its data buffer."""
    width = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    offsets = np.frombuffer(lines.buffers()[1], dtype=width)
    first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return memoryview(lines.buffers()[2])[int(first) : int(last)]


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        schema = pa.schema(
            [
                pa.field(f.name, pa.string()) if pa.types.is_timestamp(f.type) else f
                for f in table.schema
            ]
        )
        with pcsv.CSVWriter(path, schema) as writer:
            for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
                writer.write_batch(_iso_timestamps(batch))
    else:
        _write_jsonl(table, path)


def write_simulation(sim: Simulation, out_dir: Path, fmt: str = "csv") -> dict[str, Path]:
    """Write the tables of a simulation to ``out_dir`` (created if missing).

    Parameters
    ----------
    sim : Simulation
        What :func:`~automation.simulate.generate.simulate` returned.
    out_dir : pathlib.Path
        Target directory.
    fmt : {"csv", "parquet", "jsonl"}, default "csv"
        File format of the three tables.

    Returns
    -------
    dict of str to pathlib.Path
        ``events``, ``truth``, ``items`` (``<name>.<fmt>``) and ``scenarios``
        (``scenarios.json``).

    Raises
    ------
    ValidationError
        ``fmt`` is not one of :data:`FORMATS`.
    """
    fmt = _check_fmt(fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in TABLES:
        path = out / f"{name}.{fmt}"
        _write(getattr(sim, name), path, fmt)
        paths[name] = path
    meta = {"params": sim.params, "scenarios": sim.scenarios}
    paths["scenarios"] = out / "scenarios.json"
    paths["scenarios"].write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return paths


def _read(path: Path, fmt: str, table: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    if fmt == "parquet":
        return pd.read_parquet(path)
    if path.stat().st_size == 0:  # JSON Lines of an empty table: no keys to learn columns from
        return pd.DataFrame({col: [] for col in _COLUMNS[table]})
    return pd.read_json(path, orient="records", lines=True, dtype=False)


def _canonical(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    out = frame.copy()
    for col in _STRINGS[table]:
        out[col] = out[col].astype("str")
    for col in _CATEGORICAL[table]:
        if not isinstance(out[col].dtype, pd.CategoricalDtype):
            values = out[col].astype("str").where(out[col].notna())
            out[col] = values.astype(pd.CategoricalDtype(pd.Index(values.dropna().unique())))
    if "timestamp" in out:
        out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True, format="ISO8601").astype(
            "datetime64[ns, UTC]"
        )
    for col in ("quantity", "day"):
        if col in out:
            out[col] = out[col].astype("int64")
    for col in ("price", "revenue", "rating"):
        if col in out:
            out[col] = out[col].astype("float64")
    return out


def canonical_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Events read back from a file, with the canonical dtypes restored.

    String columns other than ``event_id`` become categoricals (categories in order of first
    appearance), ``timestamp`` becomes ``datetime64[ns, UTC]``, numbers ``int64``/``float64``.
    """
    return _canonical(frame, "events")


def read_simulation(out_dir: Path, fmt: str = "csv") -> Simulation:
    """Read what :func:`write_simulation` wrote (dtypes restored as in :func:`canonical_events`).

    Raises
    ------
    ValidationError
        ``fmt`` is not one of :data:`FORMATS`.
    InputError
        A table file is missing.
    """
    fmt = _check_fmt(fmt)
    out = Path(out_dir)
    tables: dict[str, pd.DataFrame] = {}
    for name in TABLES:
        path = out / f"{name}.{fmt}"
        if not path.is_file():
            raise InputError(f"{path} does not exist; write it with write_simulation(fmt={fmt!r})")
        tables[name] = _canonical(_read(path, fmt, name), name)
    meta_path = out / "scenarios.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return Simulation(
        tables["events"],
        tables["truth"],
        tables["items"],
        list(meta.get("scenarios", [])),
        dict(meta.get("params", {})),
    )
