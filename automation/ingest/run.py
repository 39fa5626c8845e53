"""``shoal ingest``: files in, accounted for to the row (read = accepted + duplicates + quarantined)."""

from __future__ import annotations

import functools
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, text

from automation.config import Settings
from automation.errors import EmptyInputError
from automation.features.partials import Window
from automation.ingest.keys import KeyCache
from automation.ingest.load import (
    Prepared,
    load_batch,
    open_window,
    prepare_batch,
    store_quarantine,
)
from automation.ingest.mapping import ColumnPlan, parse_pairs, plan_columns, preset_named
from automation.ingest.pseudonym import pseudonymise
from automation.ingest.readers import RawBatch, detect_format, read_file
from automation.ingest.validate import validate
from automation.store.locks import acquire_lock

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


@dataclass
class BatchSource:
    """Where a block comes from, recorded on its ``ingest_batches`` row."""

    source: str
    preset: str | None
    mapping: dict[str, str]
    fmt: str


def _rejected_users(
    canonical: pd.DataFrame, rows: np.ndarray, n_read_rejects: int, settings: Settings
) -> pd.Series:
    """The user id of each quarantined row (None where unreadable), as the store keeps ids."""
    given = canonical["user_id"].iloc[rows].astype("str").str.strip() if len(rows) else None
    ids = pd.Series(
        [*([] if given is None else given.tolist()), *([None] * n_read_rejects)], dtype=object
    )
    ids = ids.where(ids.notna() & (ids != ""), None)
    if settings.pseudonym_key:
        ids = pseudonymise(settings.pseudonym_key, ids)
    return ids


@dataclass
class PreparedBlock:
    """A block validated and made ready to load, before any database work."""

    raw: RawBatch
    prepared: Prepared
    quarantine: dict[str, pd.Series]


def prepare_block(
    raw: RawBatch,
    plan: ColumnPlan,
    origin: BatchSource,
    settings: Settings,
    binary: bool = False,
) -> PreparedBlock:
    """Map, validate and key one block, and assemble its quarantine rows (no database work)."""
    canonical = plan.apply(raw.frame)
    now = pd.Timestamp.now(tz="UTC")
    checked = validate(
        canonical, plan.timezone, now, pd.Timedelta(hours=settings.future_tolerance_hours)
    )
    if settings.pseudonym_key:
        checked.accepted["user_id"] = pseudonymise(
            settings.pseudonym_key, checked.accepted["user_id"]
        )
    rej = checked.rejected
    q_rows = rej["row"].to_numpy()
    n_q = len(rej) + len(raw.rejects)
    quarantine: dict[str, pd.Series] = {
        "source": pd.Series([raw.source] * n_q, dtype="object"),
        "line": pd.Series(
            np.concatenate(
                [raw.lines[q_rows], np.array([r.line or -1 for r in raw.rejects], dtype=np.int64)]
            )
        ).replace(-1, pd.NA),
        "user_id": _rejected_users(canonical, q_rows, len(raw.rejects), settings),
        "reason": pd.Series([*rej["reason"], *(r.reason for r in raw.rejects)], dtype="object"),
        "detail": pd.Series([*rej["detail"], *(r.detail for r in raw.rejects)], dtype="object"),
        "raw": pd.Series(
            ["(withheld: user ids are pseudonymised)"] * n_q
            if settings.pseudonym_key
            else [*_raw_text(raw.frame, q_rows, origin.fmt), *(r.raw for r in raw.rejects)],
            dtype="object",
        ),
    }
    prepared = prepare_batch(checked.accepted, plan.non_product, binary)
    return PreparedBlock(raw, prepared, quarantine)


def commit_blocks(
    engine: Engine,
    blocks: Iterable[PreparedBlock],
    origin: BatchSource,
    progress: Progress | None = None,
    keys: KeyCache | None = None,
) -> list[IngestReport]:
    """Load prepared blocks and their quarantine rows in one transaction (a window).

    Each block's ``ingest_batches`` row is created and finished inside that transaction, under
    the ingest lock: a crash leaves no half-recorded batch, and batch ids are committed in
    order, so an update's watermark can never pass a batch that commits later. ``blocks`` may be
    a generator that prepares the next block while this one is in the database. ``keys``: the
    user and item keys known from earlier transactions (:class:`KeyCache`), updated here.
    """
    return commit_group(engine, ((block, origin) for block in blocks), progress, keys)


def commit_group(
    engine: Engine,
    blocks: Iterable[tuple[PreparedBlock, BatchSource]],
    progress: Progress | None = None,
    keys: KeyCache | None = None,
) -> list[IngestReport]:
    """:func:`commit_blocks` for blocks of different sources (each its own ``ingest_batches``
    row): the service commits the requests that arrived together in one transaction."""
    reports: list[IngestReport] = []
    keys = keys or KeyCache()
    with keys.lock:
        try:
            with engine.begin() as conn:
                acquire_lock(conn, "ingest")
                keys.check(conn)
                window = open_window(conn)
                for block, origin in blocks:
                    reports.append(_commit_one(conn, block, origin, window, keys))
                    if progress is not None:
                        progress(reports[-1].read)
                window.flush()
        except BaseException:
            keys.rollback()
            raise
    return reports


def commit_block(
    engine: Engine, block: PreparedBlock, origin: BatchSource, keys: KeyCache | None = None
) -> IngestReport:
    """Load one prepared block and its quarantine rows in one transaction."""
    return commit_blocks(engine, [block], origin, keys=keys)[0]


def _commit_one(
    conn: Connection, block: PreparedBlock, origin: BatchSource, window: Window, keys: KeyCache
) -> IngestReport:
    quarantine = block.quarantine
    n_q = len(quarantine["reason"])
    batch_id = int(
        conn.execute(
            text(
                "INSERT INTO ingest_batches (source, preset, mapping, read, accepted, "
                "duplicates, quarantined) VALUES (:s, :p, :m, 0, 0, 0, 0) RETURNING id"
            ),
            {"s": origin.source, "p": origin.preset, "m": json.dumps(origin.mapping)},
        ).scalar_one()
    )
    loaded = load_batch(conn, block.prepared, batch_id, window, keys)
    quarantine["batch_id"] = pd.Series(np.full(n_q, batch_id, dtype=np.int64))
    store_quarantine(conn, quarantine)
    report = IngestReport(
        read=block.raw.read,
        accepted=loaded.inserted,
        duplicates=loaded.duplicates,
        quarantined=n_q,
        reasons=Counter(quarantine["reason"].tolist()),
    )
    if report.read != report.accepted + report.duplicates + report.quarantined:
        raise RuntimeError(f"accounting broken in batch {batch_id}: {report.to_dict()}")
    conn.execute(
        text(
            "UPDATE ingest_batches SET read = :r, accepted = :a, duplicates = :d, "
            "quarantined = :q, finished_at = CURRENT_TIMESTAMP WHERE id = :id"
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


def ingest_batch(
    engine: Engine, raw: RawBatch, plan: ColumnPlan, origin: BatchSource, settings: Settings
) -> IngestReport:
    """Validate, load and quarantine one block in one transaction."""
    binary = engine.dialect.name == "postgresql"
    return commit_block(engine, prepare_block(raw, plan, origin, settings, binary), origin)


class _Pipeline:
    """A file's blocks, the next ones always being prepared in a helper thread.

    While a block is loaded (also across transactions), the helper reads, validates, encodes
    and groups up to ``ahead`` blocks that come after it. The pipeline owns its file's block
    iterator: work still queued when the file ends reads only that (exhausted) iterator.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        batches: Iterator[RawBatch],
        prepare: Callable[[RawBatch], PreparedBlock],
        first: RawBatch,
        ahead: int = 2,
    ) -> None:
        self.pool = pool
        self.batches = batches
        self.prepare = prepare
        self.pending: deque[Future[PreparedBlock | None]] = deque([pool.submit(prepare, first)])
        self.pending.extend(pool.submit(self._next) for _ in range(max(0, ahead - 1)))

    def _next(self) -> PreparedBlock | None:
        raw = next(self.batches, None)
        return None if raw is None else self.prepare(raw)

    @property
    def done(self) -> bool:
        return self.pending[0].result() is None

    def window(self, size: int) -> Iterator[PreparedBlock]:
        """The next ``size`` blocks (fewer at the end of the file)."""
        for _ in range(max(1, size)):
            block = self.pending[0].result()
            if block is None:
                return
            self.pending.popleft()
            self.pending.append(self.pool.submit(self._next))
            yield block


def ingest_files(
    engine: Engine,
    paths: Sequence[str | Path],
    settings: Settings,
    preset: str | None = None,
    maps: Sequence[str] = (),
    sets: Sequence[str] = (),
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest ``paths`` into the store at ``engine``; see :class:`IngestReport`.

    Two stages overlap: a helper thread reads, validates and keys block i+1 (pandas and Arrow
    release the GIL for much of it) while this thread loads block i into the database, which
    works in its own process. Blocks are committed in file order, up to
    ``settings.ingest_blocks_per_commit`` of them per transaction.
    """
    started = time.perf_counter()
    chosen = preset_named(preset)
    map_pairs = parse_pairs(maps, "--map")
    set_pairs = parse_pairs(sets, "--set")
    total = IngestReport()
    binary = engine.dialect.name == "postgresql"
    keys = KeyCache()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-ingest") as pool:
        for path in paths:
            fmt = detect_format(Path(path))
            batches = read_file(path, block_bytes=max(1, settings.ingest_block_mb) << 20)
            first = next(batches, None)
            if first is None or first.read == 0:
                raise EmptyInputError(f"{path}: no rows to ingest")
            plan = plan_columns(list(first.frame.columns), str(path), chosen, map_pairs, set_pairs)
            origin = BatchSource(str(path), preset, {**map_pairs, **set_pairs}, fmt)

            prepare = functools.partial(
                prepare_block, plan=plan, origin=origin, settings=settings, binary=binary
            )
            blocks = _Pipeline(pool, batches, prepare, first)
            while not blocks.done:
                window = blocks.window(settings.ingest_blocks_per_commit)
                for report in commit_blocks(engine, window, origin, progress, keys):
                    total.add(report)
            total.files.append(str(path))
    total.seconds = time.perf_counter() - started
    return total
