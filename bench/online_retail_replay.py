"""The Online Retail year replayed month by month through the dynamic segmentation.

The bundled UCI Online Retail file (``automation/data/online_retail.csv.gz``, preset
``online-retail``) is cut by invoice month, lines kept as they are. The months up to
``--warmup`` (2011-03) are ingested and segmented (``api.segment(k=--k)``); then each following
month is ingested and folded in by one ``run_update``. Per month: segment sizes, migrations,
transitions, id stability (ids that survive from the month before, share of users keeping their
id) and the update's time against a full refit with the same K on a copy of the same store.

Figures, never asserts. Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/online_retail_replay.py [--k auto|N] [--json]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import pandas as pd

from automation import api
from automation.segments.update import run_update

DATA = api.BUNDLED_ONLINE_RETAIL


def month_files(tmp: Path) -> list[tuple[str, Path]]:
    """One CSV per invoice month (``YYYY-MM``), the lines as they are in the bundled file."""
    raw = pd.read_csv(DATA, dtype=str, keep_default_na=False)
    month = pd.to_datetime(raw["InvoiceDate"], errors="coerce").dt.strftime("%Y-%m")
    out = []
    for m in sorted(month.dropna().unique()):
        path = tmp / f"{m}.csv"
        raw[month == m].to_csv(path, index=False)
        out.append((m, path))
    return out


def assignments(engine: Any) -> pd.Series:
    return api.assignments(engine).set_index("user_id")["segment_id"].astype(str)


def refit_on_copy(db: Path, k: int, seed: int) -> float:
    """Seconds of a full refit with the same K on a copy of the store (the live one untouched)."""
    copy = db.with_name("refit-copy.db")
    shutil.copyfile(db, copy)
    engine = api.connect(f"sqlite:///{copy}")
    t = time.perf_counter()
    api.segment(engine, k=str(k), seed=seed)
    seconds = time.perf_counter() - t
    engine.dispose()
    copy.unlink()
    return seconds


def run(args: Any, tmp: Path) -> dict[str, Any]:
    months = month_files(tmp)
    db = tmp / "store.db"
    engine = api.connect(f"sqlite:///{db}")
    warm = [p for m, p in months if m <= args.warmup]
    t = time.perf_counter()
    api.ingest(engine, warm, preset="online-retail")
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    res = api.segment(engine, k=args.k, seed=args.seed)
    out: dict[str, Any] = {
        "warmup": args.warmup,
        "k": res.k,
        "warm_ingest_s": ingest_s,
        "warm_refit_s": time.perf_counter() - t,
        "segments": {s.segment_id: s.name for s in res.segments},
        "months": [],
    }
    before = assignments(engine)
    out["warm_sizes"] = before.value_counts().sort_index().to_dict()
    for m, path in months:
        if m <= args.warmup:
            continue
        t = time.perf_counter()
        api.ingest(engine, [path], preset="online-retail")
        ingest_s = time.perf_counter() - t
        upd = run_update(engine)
        now = assignments(engine)
        both = before.index.intersection(now.index)
        old_ids, new_ids = set(before.unique()), set(now.unique())
        row = {
            "month": m,
            "ingest_s": ingest_s,
            "update_s": upd.seconds if upd else None,
            "refit_s": refit_on_copy(db, res.k, args.seed),
            "users": len(now),
            "new_users": len(now.index.difference(before.index)),
            "touched": upd.users_touched if upd else 0,
            "migrations": upd.migrations if upd else 0,
            "kept_id": float((before[both] == now[both]).mean()) if len(both) else None,
            "ids_surviving": len(old_ids & new_ids),
            "ids_before": len(old_ids),
            "ids_new": sorted(new_ids - old_ids),
            "ids_gone": sorted(old_ids - new_ids),
            "sizes": now.value_counts().sort_index().to_dict(),
            "transitions": upd.transitions if upd else [],
        }
        out["months"].append(row)
        common.log(f"{m}: update {row['update_s']:.2f}s, refit {row['refit_s']:.2f}s, "
                   f"{row['migrations']} migrations, {[t['type'] for t in row['transitions']]}")  # fmt: skip
        before = now
    with engine.connect() as conn:
        names = conn.exec_driver_sql("SELECT segment_id, name FROM segments").all()
    out["segments"].update({str(a): str(b) for a, b in names})
    engine.dispose()
    return out


def print_report(r: dict[str, Any]) -> None:
    print(f"\nOnline Retail replay: months <= {r['warmup']} ingested ({r['warm_ingest_s']:.1f} s) "
          f"and segmented, k={r['k']} ({r['warm_refit_s']:.1f} s); then one update per month\n")  # fmt: skip
    ids = sorted({i for m in r["months"] for i in m["sizes"]} | set(r["warm_sizes"]),
                 key=lambda s: int(s.rsplit("-", 1)[-1]) if s.rsplit("-", 1)[-1].isdigit() else 0)  # fmt: skip
    print("segments: " + "; ".join(f"{i} {r['segments'].get(i, '?')}" for i in ids) + "\n")
    head = ["month", "users", "new", "touched", *ids, "migrations", "kept id", "ids kept",
            "update s", "refit s", "upd/refit"]  # fmt: skip
    rows = [["warm-up", sum(r["warm_sizes"].values()), "", "",
             *[r["warm_sizes"].get(i, "") for i in ids], "", "", "", "", "", ""]]  # fmt: skip
    for m in r["months"]:
        rows.append([m["month"], m["users"], m["new_users"], m["touched"],
                     *[m["sizes"].get(i, "") for i in ids], m["migrations"],
                     f"{100 * m['kept_id']:.1f}%", f"{m['ids_surviving']}/{m['ids_before']}",
                     m["update_s"], m["refit_s"], common.ratio(m["update_s"], m["refit_s"])])  # fmt: skip
    common.print_table(head, rows)
    print("\ntransitions:")
    for m in r["months"]:
        for t in m["transitions"]:
            ev = {k: v for k, v in t["evidence"].items() if k != "moved_features"}
            print(f"  {m['month']}: {t['type']} {'/'.join(t['segments'])} {ev}"[:300])
        if m["ids_new"] or m["ids_gone"]:
            print(f"  {m['month']}: new ids {m['ids_new']}, gone {m['ids_gone']}")
    if not any(m["transitions"] for m in r["months"]):
        print("  none")


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--k", default="auto", help="K of the warm-up refit (auto or a number)")
    p.add_argument("--warmup", default="2011-03", help="last month of the warm-up (YYYY-MM)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    common.pin_threads()
    common.exit_cleanly_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="shoal-retail-") as tmp:
        res = run(args, Path(tmp))
    payload = {"machine": common.machine_info(), "args": vars(args), "replay": res}
    if args.json:
        common.dump_json(payload)
        return
    common.print_machine(payload["machine"])
    print_report(res)


if __name__ == "__main__":
    main()
