"""Writers (and readers, for round trips) of a :class:`~automation.simulate.generate.Simulation`.

``write_simulation`` writes ``events``, ``truth`` and ``items`` as CSV, Parquet or JSON Lines,
plus ``scenarios.json`` (the injected shifts and the run's parameters). Timestamps are UTC:
ISO 8601 with ``+00:00`` in CSV, with ``Z`` in JSON Lines (millisecond precision, which is the
simulator's resolution).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from automation.errors import InputError, ValidationError
from automation.simulate.generate import Simulation

__all__ = ["FORMATS", "canonical_events", "read_simulation", "write_simulation"]

FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl")
TABLES: tuple[str, ...] = ("events", "truth", "items")

_CATEGORICAL = {
    "events": ("user_id", "type", "item_id", "category", "session_id", "order_id"),
    "truth": ("user_id", "persona"),
    "items": (),
}
_STRINGS = {"events": ("event_id",), "truth": (), "items": ("item_id", "name", "category")}


def _check_fmt(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValidationError(f"fmt={fmt!r} should be one of {', '.join(FORMATS)}")
    return fmt


def _write(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, date_format="iso", date_unit="ms")


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


def _read(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    if fmt == "parquet":
        return pd.read_parquet(path)
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
        tables[name] = _canonical(_read(path, fmt), name)
    meta_path = out / "scenarios.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return Simulation(
        tables["events"],
        tables["truth"],
        tables["items"],
        list(meta.get("scenarios", [])),
        dict(meta.get("params", {})),
    )
