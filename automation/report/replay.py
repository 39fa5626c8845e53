"""Replay a transaction file period by period: a refit after a warm-up, then updates.

The demo replays the Online Retail year month by month so that the segments' sizes over time,
the migrations between them and the transitions can be seen, exactly as the live system would
have recorded them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text

from automation import api
from automation.ingest.run import IngestReport
from automation.segments.result import SegmentationResult


@dataclass
class Replay:
    ingest: IngestReport
    refit: SegmentationResult
    months: list[dict[str, Any]] = field(default_factory=list)
    migrations: pd.DataFrame = field(default_factory=pd.DataFrame)
    names: dict[str, str] = field(default_factory=dict)


def split_by_month(path: Path, date_column: str, out_dir: Path) -> list[tuple[str, Path]]:
    """Write the rows of ``path`` into one CSV per calendar month of ``date_column``."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    month = pd.to_datetime(frame[date_column], errors="coerce", format="ISO8601").dt.strftime(
        "%Y-%m"
    )
    month = month.fillna("unknown")  # unparseable dates still go in, to be quarantined
    out = []
    for key in sorted(month.unique()):
        target = out_dir / f"{key}.csv"
        frame[(month == key).to_numpy()].to_csv(target, index=False)
        out.append((key, target))
    return out


def replay_months(
    engine: Engine,
    path: Path,
    preset: str = "online-retail",
    date_column: str = "InvoiceDate",
    warmup: int = 3,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    before_month: Callable[[str, int], None] | None = None,
) -> Replay:
    """Ingest ``warmup`` months and refit, then ingest and update one month at a time.

    ``before_month(month, months_left)`` runs before each update (the demo loads its
    campaigns there, so the last months' segment changes trigger them).
    """
    total = IngestReport()
    with tempfile.TemporaryDirectory() as tmp:
        months = split_by_month(path, date_column, Path(tmp))
        first = [p for _, p in months[:warmup]]
        total.add(api.ingest(engine, first, preset, progress=progress))
        refit = api.segment(engine, "kmeans", "auto", None, seed)
        result = Replay(ingest=total, refit=refit)
        result.months.append(
            {
                "month": months[warmup - 1][0],
                "version": refit.version,
                "kind": "refit",
                "sizes": {s.segment_id: s.size for s in refit.segments},
                "migrations": 0,
                "transitions": [],
            }
        )
        rest = months[warmup:]
        for n, (key, file) in enumerate(rest):
            if before_month is not None:
                before_month(key, len(rest) - n)
            out = api.update(engine, [file], preset)
            total.add(_report(out["ingest"]))
            if progress is not None:
                progress(out["ingest"]["read"])
            row = {
                "month": key,
                "version": out.get("version"),
                "kind": "update",
                "sizes": out.get("sizes", {}),
                "migrations": out.get("migrations", 0),
                "transitions": out.get("transitions", []),
            }
            if "refit" in out:
                row["refit"] = out["refit"]["version"]
                row["sizes"] = {s["id"]: s["size"] for s in out["refit"]["segments"]}
            result.months.append(row)
    total.files = [str(path)]
    result.ingest = total
    result.migrations = pd.DataFrame(api.migrations(engine))
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT segment_id, name FROM segments ORDER BY segmentation_id")
        ).all()
    result.names = {str(sid): str(name) for sid, name in rows}  # the newest name wins
    return result


def _report(d: dict[str, Any]) -> IngestReport:
    from collections import Counter

    return IngestReport(
        read=d["read"],
        accepted=d["accepted"],
        duplicates=d["duplicates"],
        quarantined=d["quarantined"],
        reasons=Counter(d.get("quarantine_reasons", {})),
        seconds=d.get("seconds", 0.0),
    )


def sizes_table(replay: Replay) -> pd.DataFrame:
    """Months x segment ids: members at the end of each month."""
    rows = {m["month"]: m["sizes"] for m in replay.months}
    return pd.DataFrame.from_dict(rows, orient="index").fillna(0).astype(int)


def flow_table(replay: Replay) -> pd.DataFrame:
    """Counts of migrations from segment to segment over the replay (new users as '(new)')."""
    m = replay.migrations
    if m.empty:
        return pd.DataFrame()
    src = m["from"].fillna("(new)")
    return pd.crosstab(src, m["to"])


def replay_text(replay: Replay, names: dict[str, str]) -> str:
    sizes = sizes_table(replay)
    lines = ["Month by month (members per segment; refit after the warm-up, then updates):"]
    header = f"{'month':<8} " + " ".join(f"{c:>8}" for c in sizes.columns) + "  migrations"
    lines.append(header)
    for m in replay.months:
        vals = " ".join(f"{sizes.loc[m['month'], c]:>8,}" for c in sizes.columns)
        note = f"  {m['migrations']:>10,}"
        if m["transitions"]:
            note += "  " + "; ".join(
                f"{t['type']} {', '.join(t['segments'])}" for t in m["transitions"]
            )
        if "refit" in m:
            note += f"  (refit v{m['refit']})"
        lines.append(f"{m['month']:<8} {vals}{note}")
    lines.append("segments: " + ", ".join(f"{k} = {v}" for k, v in names.items()))
    flows = flow_table(replay)
    if not flows.empty:
        lines.append("\nMigrations between segments over the year (rows: from, columns: to):")
        lines.append(flows.to_string())
    return "\n".join(lines)
