"""Synthetic shop at scale on PostgreSQL: Shoal's ingest and segmentation beside bare baselines.

Steps, each timed, with the peak RSS of the process after each:

1. simulate ``--users`` users over ``--days`` days and write the events to a CSV file;
2. BASELINE ingest: the same rows, already validated and keyed in memory, sent with a bare binary
   ``COPY`` (psycopg 3) into a table shaped like Shoal's ``events`` (uuid primary key); two
   encoders: an Arrow-vectorised binary encoder, and ``Copy.write_row`` with ``set_types``;
   the faster one is the strict baseline; and the bare indexed ``COPY`` of the CSV file as it
   is (``FORMAT csv``, every column of the file, ``event_id`` the primary key), the kind of
   ``COPY`` the issue measured (~184k events/s) and set its bar against (>= half its rate);
3. SHOAL ingest: ``api.ingest`` of the CSV into a fresh schema (with a per-function breakdown);
4. BASELINE features-to-segments: pandas group-by (recency, frequency, monetary, counts) +
   ``StandardScaler`` + ``KMeans(n_clusters=8, n_init=1, random_state=0)``;
5. SHOAL features-to-segments: ``api.segment(k="8")`` (with a breakdown), then ``k="auto"``.

Figures, never asserts. Needs PostgreSQL (``--pg URL`` or ``$SHOAL_TEST_DATABASE_URL``).

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/synthetic_pg.py [--users N] [--days D] [--pg URL]
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import pandas as pd
import probes
import psycopg
from bare_copy import baseline_copy, file_copy, keyed_rows
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from automation import api

TARGET_INGEST = 0.5  # Shoal events/s over the bare COPY of the CSV file, events/s: at least this
TARGET_SEGMENT = 1.0  # Shoal seconds over bare pandas + k-means seconds: at most this


def baseline_segments(ev: pd.DataFrame, k: int) -> dict[str, Any]:
    """Per-user RFM and counts with pandas, StandardScaler, KMeans(k, n_init=1)."""
    sw = common.Stopwatch()
    with sw.lap("group-by features"):
        user = ev["user_id"]
        ts = ev["timestamp"]
        at = ts.max()
        kind = ev["type"].astype("str")
        g = ev.groupby(user, observed=True, sort=False)
        first_ts = g["timestamp"].min()
        counts = pd.crosstab(user, kind).reindex(first_ts.index, fill_value=0)
        buy = kind == "purchase"
        gp = ev[buy.to_numpy()].groupby("user_id", observed=True, sort=False)
        last_buy = gp["timestamp"].max().reindex(first_ts.index)
        frequency = gp["order_id"].nunique().reindex(first_ts.index, fill_value=0)
        spent = gp["revenue"].sum().reindex(first_ts.index, fill_value=0.0)
        refunded = (
            ev[(kind == "refund").to_numpy()]
            .groupby("user_id", observed=True, sort=False)["revenue"]
            .sum()
            .reindex(first_ts.index, fill_value=0.0)
        )
        day = pd.Timedelta(days=1)
        tenure = (at - first_ts) / day
        feats = pd.DataFrame(
            {
                "recency_days": ((at - last_buy) / day).fillna(tenure),
                "frequency": frequency.astype("float64"),
                "monetary": spent - refunded,
                "tenure_days": tenure,
                "n_events": counts.sum(axis=1),
                **{f"n_{c}": counts[c] for c in ("view", "cart", "purchase") if c in counts},
            }
        )
    with sw.lap("StandardScaler"):
        X = StandardScaler().fit_transform(feats.to_numpy(dtype="float64"))
    with sw.lap("KMeans"):
        KMeans(n_clusters=k, n_init=1, random_state=0).fit(X)
    return {
        "stages": dict(sw.seconds),
        "seconds": sum(sw.seconds.values()),
        "n_users": len(feats),
        "n_features": X.shape[1],
        "rss_mb": common.peak_rss_mb(),
    }


# --------------------------------------------------------------------------------- Shoal runs
def shoal_ingest(url: str, csv_path: Path, profile: Path | None) -> dict[str, Any]:
    import automation.ingest.run as run_mod

    engine = api.connect(url)
    probe = probes.Probe()
    probe.wrap_generator_source(run_mod, "read_file", "read+parse CSV")
    probes.install_probes(probe, probes.INGEST_PROBES)
    probe.watch_sql()
    prof = cProfile.Profile() if profile else None
    try:
        marks: list[tuple[float, int]] = []
        t = time.perf_counter()
        if prof is not None:
            prof.enable()
        report = api.ingest(
            engine, [csv_path], progress=lambda n: marks.append((time.perf_counter(), n))
        )
        if prof is not None:
            prof.disable()
        wall = time.perf_counter() - t
    finally:
        probe.restore()
        engine.dispose()
    out = {
        "report": report.to_dict(),
        "seconds": report.seconds,
        "wall_seconds": wall,
        "events_per_second": report.read / report.seconds if report.seconds else None,
        "breakdown": probe.rows(0.01),
        "per_batch": _batch_rates(t, marks),
        "rss_mb": common.peak_rss_mb(),
    }
    if prof is not None and profile is not None:
        prof.dump_stats(str(profile))
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        out["cprofile_top_tottime"] = buf.getvalue()
    return out


def _batch_rates(t0: float, marks: list[tuple[float, int]]) -> dict[str, Any]:
    """Events/s of each ingest batch (from the progress callback), summarised by quarter."""
    rates, prev = [], t0
    for t, n in marks:
        rates.append((n, t - prev))
        prev = t
    if not rates:
        return {}
    q = max(1, len(rates) // 4)
    parts = {
        "first quarter": rates[:q],
        "second quarter": rates[q : 2 * q],
        "third quarter": rates[2 * q : 3 * q],
        "last quarter": rates[3 * q :],
    }
    return {
        "batches": len(rates),
        "events_per_batch": sum(n for n, _ in rates) / len(rates),
        "events_per_second": {
            name: sum(n for n, _ in part) / sum(dt for _, dt in part)
            for name, part in parts.items()
            if part and sum(dt for _, dt in part) > 0
        },
    }


def shoal_segment(url: str, k: str) -> dict[str, Any]:
    engine = api.connect(url)
    probe = probes.Probe()
    probes.install_probes(probe, probes.SEGMENT_PROBES)
    probe.watch_sql()
    try:
        t = time.perf_counter()
        result = api.segment(engine, method="kmeans", k=k, seed=0)
        wall = time.perf_counter() - t
    finally:
        probe.restore()
        engine.dispose()
    d = result.to_dict()
    return {
        "k_requested": k,
        "k": result.k,
        "n_users": result.n_users,
        "n_features": len(result.features),
        "seconds": wall,
        "timings": dict(result.timings),
        "untimed": wall - sum(result.timings.values()),
        "silhouette": d["quality"].get("silhouette"),
        "stability_ari": d["quality"].get("stability_ari"),
        "breakdown": probe.rows(0.01),
        "rss_mb": common.peak_rss_mb(),
    }


# -------------------------------------------------------------------------------------- main
def run(args: Any, pg: str) -> dict[str, Any]:
    from automation.simulate import simulate, write_simulation

    res: dict[str, Any] = {
        "machine": common.machine_info(),
        "params": {"users": args.users, "days": args.days, "seed": args.seed},
        "steps": {},
    }
    steps = res["steps"]
    mem = common.RssSampler()
    tmp = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    try:
        common.log(f"1. simulate {args.users:,} users x {args.days} days")
        m_sim: dict[str, Any] = {}
        m_csv: dict[str, Any] = {}
        with mem.measure(m_sim):
            t = time.perf_counter()
            sim = simulate(n_users=args.users, days=args.days, seed=args.seed)
            t_sim = time.perf_counter() - t
        ev = sim.events
        with mem.measure(m_csv):
            t = time.perf_counter()
            paths = write_simulation(sim, tmp, "csv")
            t_csv = time.perf_counter() - t
        csv_path = paths["events"]
        del sim
        steps["generate"] = {
            "events": len(ev),
            "simulate_seconds": t_sim,
            "write_csv_seconds": t_csv,
            "csv_mb": csv_path.stat().st_size / 2**20,
            "mem_simulate": m_sim,
            "mem_write_csv": m_csv,
        }
        common.log(f"   {len(ev):,} events, CSV {steps['generate']['csv_mb']:.0f} MiB")

        common.log("2. baseline: keyed rows + bare binary COPY")
        t = time.perf_counter()
        rows = keyed_rows(ev)
        steps["baseline_keying_seconds_untimed"] = time.perf_counter() - t
        copies = []
        with common.pg_schema(pg, "bench_base") as (_, url):
            dsn = common.psycopg_dsn(url)
            for method in args.copy_methods.split(","):
                common.log(f"   COPY via {method}")
                chunk = args.chunk if method == "arrow" else 200_000
                m: dict[str, Any] = {}
                with mem.measure(m):
                    c = baseline_copy(dsn, rows, method, chunk)
                c.update(m)
                copies.append(c)
                common.log(f"   {method}: {c['seconds']:.1f} s, {c['events_per_second']:,.0f}/s")
            common.log("   COPY of the CSV file as it is")
            m = {}
            with mem.measure(m):
                steps["file_copy"] = file_copy(dsn, csv_path)
            steps["file_copy"].update(m)
            fc = steps["file_copy"]
            common.log(f"   csv file: {fc['seconds']:.1f} s, {fc['events_per_second']:,.0f}/s")
        del rows
        best = min(copies, key=lambda c: c["seconds"])
        steps["baseline_copy"] = {"variants": copies, "best": best["method"]}

        with common.pg_schema(pg, "bench_shoal") as (schema, url):
            common.log(f"3. Shoal ingest into schema {schema}")
            with psycopg.connect(common.psycopg_dsn(url), autocommit=True) as conn:
                conn.execute("CHECKPOINT")
            m = {}
            with mem.measure(m):
                ing = shoal_ingest(url, csv_path, Path(args.cprofile) if args.cprofile else None)
            ing.update(m)
            ing["ratio_to_baseline"] = common.ratio(
                ing["events_per_second"], best["events_per_second"]
            )
            ing["ratio_to_file_copy"] = common.ratio(
                ing["events_per_second"], steps["file_copy"]["events_per_second"]
            )
            steps["shoal_ingest"] = ing
            common.log(f"   {ing['seconds']:.1f} s, {ing['events_per_second']:,.0f}/s")

            common.log("4. baseline: pandas group-by + StandardScaler + KMeans(8, n_init=1)")
            m = {}
            with mem.measure(m):
                steps["baseline_segments"] = baseline_segments(ev, 8)
            steps["baseline_segments"].update(m)
            common.log(f"   {steps['baseline_segments']['seconds']:.1f} s")
            del ev

            common.log("5. Shoal segment k=8")
            m = {}
            with mem.measure(m):
                seg = shoal_segment(url, "8")
            seg.update(m)
            seg["ratio_to_baseline"] = common.ratio(
                seg["seconds"], steps["baseline_segments"]["seconds"]
            )
            steps["shoal_segment_k8"] = seg
            common.log(f"   {seg['seconds']:.1f} s")
            if not args.skip_auto:
                common.log("5b. Shoal segment k=auto")
                m = {}
                with mem.measure(m):
                    steps["shoal_segment_auto"] = shoal_segment(url, "auto")
                steps["shoal_segment_auto"].update(m)
                common.log(f"   {steps['shoal_segment_auto']['seconds']:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["peak_rss_mb"] = common.peak_rss_mb()
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    return res


def print_report(res: dict[str, Any]) -> None:
    common.print_machine(res["machine"])
    s = res["steps"]
    p = res["params"]
    g = s["generate"]
    print(
        f"\nSynthetic shop: {p['users']:,} users x {p['days']} days (seed {p['seed']}) -> "
        f"{g['events']:,} events, CSV {g['csv_mb']:.0f} MiB"
    )
    copies = s["baseline_copy"]["variants"]
    best = next(c for c in copies if c["method"] == s["baseline_copy"]["best"])
    ing = s["shoal_ingest"]
    bseg = s["baseline_segments"]
    k8 = s["shoal_segment_k8"]
    auto = s.get("shoal_segment_auto")

    def line(label: str, sec: Any, rate: Any, ratio: Any, target: Any, m: dict[str, Any]) -> list:
        return [label, sec, rate, ratio, target, m.get("rss_step_rise_mb"), m.get("rss_mb")]

    rows: list[list[Any]] = [
        line("1. simulate", g["simulate_seconds"], None, None, None, g["mem_simulate"]),
        line("1. write CSV", g["write_csv_seconds"], None, None, None, g["mem_write_csv"]),
    ]
    for c in copies:
        tag = " (strict baseline)" if c is best else ""
        label = f"2. bare COPY, {c['method']}{tag}"
        rows.append(line(label, c["seconds"], c["events_per_second"], None, None, c))
    fc = s.get("file_copy")
    if fc:
        label = "2c. bare COPY of the CSV file (the issue's)"
        rows.append(line(label, fc["seconds"], fc["events_per_second"], None, None, fc))
    rate = ing["events_per_second"]
    if fc:
        label = "3. Shoal ingest vs the CSV file COPY"
        rows.append(
            line(label, ing["seconds"], rate, ing["ratio_to_file_copy"], f">= {TARGET_INGEST}", ing)
        )
    label = "3. Shoal ingest vs the strict baseline"
    rows.append(line(label, ing["seconds"], rate, ing["ratio_to_baseline"], "-", ing))
    label = f"4. bare pandas+KMeans(8, n_init=1), {bseg['n_features']} feats"
    rows.append(line(label, bseg["seconds"], None, None, None, bseg))
    rows.append(
        line(
            f"5. Shoal segment k=8, {k8['n_features']} feats",
            k8["seconds"],
            None,
            k8["ratio_to_baseline"],
            f"<= {TARGET_SEGMENT} (time)",
            k8,
        )
    )
    if auto:
        rows.append(
            line(
                f"5b. Shoal segment k=auto (-> k={auto['k']})",
                auto["seconds"],
                None,
                common.ratio(auto["seconds"], bseg["seconds"]),
                None,
                auto,
            )
        )
    print()
    common.print_table(
        ["step", "seconds", "events/s", "ratio", "target", "RSS rise MiB", "peak RSS MiB"],
        rows,
    )
    print(
        "ratio: ingest = Shoal events/s / bare COPY events/s (of the CSV file as it is, the "
        "issue's baseline; and of the rows validated and keyed in memory, the strict one); "
        "segments = Shoal s / bare s. "
        "RSS rise: peak RSS sampled during the step minus RSS at its start; peak RSS: ru_maxrss "
        "of the process after the step."
    )
    r = ing["report"]
    print(
        f"\nShoal ingest: read {r['read']:,}, accepted {r['accepted']:,}, duplicates "
        f"{r['duplicates']:,}, quarantined {r['quarantined']:,} {r['quarantine_reasons'] or ''}"
    )
    pb = ing.get("per_batch") or {}
    if pb:
        quarters = ", ".join(f"{k} {v:,.0f}/s" for k, v in pb["events_per_second"].items())
        print(
            f"Shoal ingest per batch: {pb['batches']} batches of ~{pb['events_per_batch']:,.0f} "
            f"events; {quarters}"
        )
    for c in copies:
        enc = (
            f", encode {c['encode_seconds']:.1f} s (overlapped)"
            if c["encode_seconds"] is not None
            else ""
        )
        print(
            f"bare COPY {c['method']}: {c['stored']:,} rows stored{enc} (timed); "
            f"untimed Python prep {c['untimed_prep_seconds']:.1f} s"
        )
    print(
        f"baseline keying (event_ids + factorize, untimed): {s['baseline_keying_seconds_untimed']:.1f} s"
    )

    print("\nBaseline features-to-segments stages")
    common.print_table(["stage", "seconds"], [[k, v] for k, v in bseg["stages"].items()])
    for seg in [k8, auto]:
        if not seg:
            continue
        print(f"\nShoal segment k={seg['k_requested']} stages (result.timings)")
        trs = [[k, v] for k, v in seg["timings"].items()]
        trs.append(["untimed (scaling, naming, ...)", seg["untimed"]])
        trs.append(["TOTAL", seg["seconds"]])
        trs.append(["users", seg["n_users"]])
        trs.append(["k", seg["k"]])
        trs.append(["silhouette", seg["silhouette"]])
        trs.append(["stability ARI", seg["stability_ari"]])
        common.print_table(["stage", "seconds"], trs)
    print(f"\npeak RSS of the process: {res['peak_rss_mb']:.0f} MiB")
    probes.print_breakdown("Shoal ingest breakdown (>= 10 ms)", ing["breakdown"], ing["seconds"])
    for seg in [k8, auto]:
        if seg:
            probes.print_breakdown(
                f"Shoal segment k={seg['k_requested']} breakdown (>= 10 ms)",
                seg["breakdown"],
                seg["seconds"],
            )
    if ing.get("cprofile_top_tottime"):
        print("\ncProfile of Shoal ingest (top by own time)")
        print(ing["cprofile_top_tottime"])


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--copy-methods",
        default="arrow,write_row",
        help="bare COPY encoders to run, comma-separated (arrow, write_row)",
    )
    parser.add_argument("--chunk", type=int, default=100_000, help="rows per Arrow COPY chunk")
    parser.add_argument("--skip-auto", action="store_true", help="skip the k=auto segmentation")
    parser.add_argument("--cprofile", default=None, help="profile Shoal's ingest into this file")
    args = parser.parse_args()
    common.pin_threads()
    common.exit_cleanly_on_sigterm()
    pg = common.pg_url_arg(args.pg)
    if pg is None:
        msg = f"no --pg URL and ${common.PG_ENV} unset: this benchmark needs PostgreSQL; skipped"
        common.log(msg)
        if args.json:
            common.dump_json({"skipped": msg})
        else:
            print(msg)
        return
    res = run(args, pg)
    if args.json:
        common.dump_json(res)
    else:
        print_report(res)


if __name__ == "__main__":
    main()
