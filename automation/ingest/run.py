"""``shoal ingest``: files in, accounted for to the row (read = accepted + duplicates + quarantined)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from automation.config import Settings
from automation.errors import EmptyInputError
from automation.ingest.load import load_batch, store_quarantine
from automation.ingest.mapping import ColumnPlan, parse_pairs, plan_columns, preset_named
from automation.ingest.readers import RawBatch, detect_format, read_file
from automation.ingest.validate import validate
from models import IngestBatch

Progress = Callable[[int], None]


@dataclass
class IngestReport:
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, other: IngestReport) -> None:
        self.read += other.read
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        self.reasons.update(other.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "quarantine_reasons": dict(self.reasons.most_common()),
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.read / self.seconds) if self.seconds else None,
        }


def _raw_text(frame: pd.DataFrame, rows: np.ndarray, fmt: str) -> list[str]:
    """The source rows as text: CSV-joined (quoted where needed) for CSV, JSON for the others."""
    if len(rows) == 0:
        return []
    sub = frame.iloc[rows]
    if fmt == "csv":
        joined: pd.Series | None = None
        for col in sub.columns:
            s = sub[col].astype("str").fillna("")
            quote = s.str.contains(r'[,"\n\r]', regex=True).to_numpy(dtype=bool)
            if quote.any():
                s = s.where(~quote, '"' + s.str.replace('"', '""') + '"')
            joined = s if joined is None else joined + "," + s
        assert joined is not None
        return joined.tolist()
    return [
        json.dumps({k: v for k, v in rec.items() if not _isna(v)}, default=str)
        for rec in sub.to_dict("records")
    ]


def _isna(v: object) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def ingest_batch(
    engine: Engine,
    raw: RawBatch,
    plan: ColumnPlan,
    batch_id: int,
    settings: Settings,
    fmt: str,
) -> IngestReport:
    """Validate, load and quarantine one batch in one transaction."""
    canonical = plan.apply(raw.frame)
    now = pd.Timestamp.now(tz="UTC")
    checked = validate(
        canonical, plan.timezone, now, pd.Timedelta(hours=settings.future_tolerance_hours)
    )
    rej = checked.rejected
    q_rows = rej["row"].to_numpy()
    quarantine: dict[str, pd.Series] = {
        "batch_id": pd.Series(np.full(len(rej) + len(raw.rejects), batch_id, dtype=np.int64)),
        "source": pd.Series([raw.source] * (len(rej) + len(raw.rejects)), dtype="object"),
        "line": pd.Series(
            np.concatenate(
                [raw.lines[q_rows], np.array([r.line or -1 for r in raw.rejects], dtype=np.int64)]
            )
        ).replace(-1, pd.NA),
        "reason": pd.Series([*rej["reason"], *(r.reason for r in raw.rejects)], dtype="object"),
        "detail": pd.Series([*rej["detail"], *(r.detail for r in raw.rejects)], dtype="object"),
        "raw": pd.Series(
            [*_raw_text(raw.frame, q_rows, fmt), *(r.raw for r in raw.rejects)], dtype="object"
        ),
    }
    with engine.begin() as conn:
        loaded = load_batch(conn, checked.accepted, batch_id, plan.non_product)
        store_quarantine(conn, quarantine)
        report = IngestReport(
            read=raw.read,
            accepted=loaded.inserted,
            duplicates=loaded.duplicates,
            quarantined=len(rej) + len(raw.rejects),
            reasons=Counter(quarantine["reason"].tolist()),
        )
        if report.read != report.accepted + report.duplicates + report.quarantined:
            raise RuntimeError(f"accounting broken in batch {batch_id}: {report.to_dict()}")
        conn.execute(
            text(
                "UPDATE ingest_batches SET read = read + :r, accepted = accepted + :a, "
                "duplicates = duplicates + :d, quarantined = quarantined + :q WHERE id = :id"
            ),
            {
                "r": report.read,
                "a": report.accepted,
                "d": report.duplicates,
                "q": report.quarantined,
                "id": batch_id,
            },
        )
    return report


def ingest_files(
    engine: Engine,
    paths: Sequence[str | Path],
    settings: Settings,
    preset: str | None = None,
    maps: Sequence[str] = (),
    sets: Sequence[str] = (),
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest ``paths`` into the store at ``engine``; see :class:`IngestReport`."""
    started = time.perf_counter()
    chosen = preset_named(preset)
    map_pairs = parse_pairs(maps, "--map")
    set_pairs = parse_pairs(sets, "--set")
    total = IngestReport()
    for path in paths:
        fmt = detect_format(Path(path))
        batches = read_file(path, block_bytes=max(1, settings.ingest_block_mb) << 20)
        first = next(batches, None)
        if first is None or first.read == 0:
            raise EmptyInputError(f"{path}: no rows to ingest")
        plan = plan_columns(list(first.frame.columns), str(path), chosen, map_pairs, set_pairs)
        with engine.begin() as conn:
            batch = IngestBatch(source=str(path), preset=preset, mapping={**map_pairs, **set_pairs})
            row = conn.execute(
                text(
                    "INSERT INTO ingest_batches (source, preset, mapping, read, accepted, "
                    "duplicates, quarantined) VALUES (:s, :p, :m, 0, 0, 0, 0) RETURNING id"
                ),
                {"s": batch.source, "p": batch.preset, "m": json.dumps(batch.mapping)},
            ).one()
            batch_id = int(row[0])
        for raw in _chain(first, batches):
            report = ingest_batch(engine, raw, plan, batch_id, settings, fmt)
            total.add(report)
            if progress is not None:
                progress(report.read)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE ingest_batches SET finished_at = CURRENT_TIMESTAMP WHERE id = :id"),
                {"id": batch_id},
            )
        total.files.append(str(path))
    total.seconds = time.perf_counter() - started
    return total


def _chain(first: RawBatch, rest: Any) -> Any:
    yield first
    yield from rest
