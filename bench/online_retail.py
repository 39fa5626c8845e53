"""Online Retail end to end: ingest, features, ``k=auto`` segmentation, per stage and per database.

Beside Shoal, in the same process, a bare pipeline on the same file: ``pandas.read_csv`` of the
gzipped CSV, drop rows without a CustomerID, a plain RFM group-by, ``StandardScaler`` and
``KMeans(n_clusters=<Shoal's k>, n_init=1)``. Figures, never asserts.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/online_retail.py [--pg URL] [--json]
"""

from __future__ import annotations

import os
import time
from typing import Any

import common
import pandas as pd
import probes
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from automation import api

DATA = api.BUNDLED_ONLINE_RETAIL
SEGMENT_STAGES = ("features", "select_k", "fit", "quality", "store")


def run_shoal(url: str, label: str, breakdown: bool) -> dict[str, Any]:
    """Connect (migrations), ingest, segment with k=auto; stage seconds and key figures."""
    common.log(f"{label}: connect + migrate")
    out: dict[str, Any] = {"database": label, "stages": {}, "rss_mb": {}}
    stages = out["stages"]
    t = time.perf_counter()
    engine = api.connect(url)
    stages["connect+migrate"] = time.perf_counter() - t
    out["rss_mb"]["connect"] = common.peak_rss_mb()
    probe = probes.Probe()
    if breakdown:
        import automation.ingest.run as run_mod

        probe.wrap_generator_source(run_mod, "read_file", "read+parse CSV")
        probes.install_probes(probe, probes.INGEST_PROBES)
        probe.watch_sql()
    try:
        common.log(f"{label}: ingest")
        t = time.perf_counter()
        report = api.ingest(engine, [DATA], preset="online-retail")
        stages["ingest"] = time.perf_counter() - t
        out["rss_mb"]["ingest"] = common.peak_rss_mb()
        out["ingest"] = report.to_dict()
        out["ingest_breakdown"] = probe.rows(0.0005) if breakdown else []
        probe.restore()
        probe.reset()
        if breakdown:
            probes.install_probes(probe, probes.SEGMENT_PROBES)
            probe.watch_sql()
        common.log(f"{label}: segment k=auto")
        t = time.perf_counter()
        result = api.segment(engine, method="kmeans", k="auto", seed=0)
        wall = time.perf_counter() - t
        out["rss_mb"]["segment"] = common.peak_rss_mb()
        out["segment_breakdown"] = probe.rows(0.0005) if breakdown else []
    finally:
        probe.restore()
        engine.dispose()
    for name in SEGMENT_STAGES:
        stages[f"segment.{name}"] = float(result.timings.get(name, 0.0))
    for name, v in result.timings.items():  # stages added to the pipeline later
        if name not in SEGMENT_STAGES:
            stages[f"segment.{name}"] = float(v)
    stages["segment.untimed (scaling, naming...)"] = wall - sum(result.timings.values())
    out["segment_seconds"] = wall
    out["total"] = stages["ingest"] + wall
    out["total_with_connect"] = out["total"] + stages["connect+migrate"]
    d = result.to_dict()
    out["result"] = {
        "k": result.k,
        "n_users": result.n_users,
        "n_features": len(result.features),
        "silhouette": d["quality"].get("silhouette"),
        "davies_bouldin": d["quality"].get("davies_bouldin"),
        "stability_ari": d["quality"].get("stability_ari"),
        "k_reason": (result.k_selection or {}).get("reason"),
        "segments": [(s["name"], s["size"]) for s in d["segments"]],
    }
    return out


def run_baseline(k: int, repeat: int) -> dict[str, Any]:
    """The best (lowest total) of ``repeat`` runs of :func:`baseline_once`."""
    runs = [baseline_once(k) for _ in range(max(1, repeat))]
    best = min(runs, key=lambda r: r["total"])
    best["repeat"] = len(runs)
    best["totals"] = [r["total"] for r in runs]
    return best


def baseline_once(k: int) -> dict[str, Any]:
    """pandas + scikit-learn with no store: read, clean, RFM, scale, k-means (n_init=1)."""
    common.log(f"baseline: read_csv + RFM + KMeans(k={k}, n_init=1)")
    sw = common.Stopwatch()
    with sw.lap("read_csv"):
        df = pd.read_csv(
            DATA, dtype={"InvoiceNo": str, "StockCode": str}, encoding_errors="replace"
        )
    n_read = len(df)
    with sw.lap("clean (drop missing CustomerID, parse dates)"):
        df = df.dropna(subset=["CustomerID"])
        df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")
        df["amount"] = df["Quantity"] * df["UnitPrice"]
    with sw.lap("RFM group-by"):
        snapshot = df["InvoiceDate"].max()
        g = df.groupby("CustomerID")
        rfm = pd.DataFrame(
            {
                "recency": (snapshot - g["InvoiceDate"].max()).dt.days,
                "frequency": g["InvoiceNo"].nunique(),
                "monetary": g["amount"].sum(),
            }
        )
    with sw.lap("StandardScaler"):
        X = StandardScaler().fit_transform(rfm.to_numpy(dtype="float64"))
    with sw.lap("KMeans"):
        km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(X)
    sil = float(silhouette_score(X, km.labels_, sample_size=min(10_000, len(X)), random_state=0))
    return {
        "stages": dict(sw.seconds),
        "total": sum(sw.seconds.values()),
        "rss_mb": common.peak_rss_mb(),
        "read": n_read,
        "n_users": len(rfm),
        "k": k,
        "n_features": X.shape[1],
        "silhouette_untimed": sil,
    }


def print_report(res: dict[str, Any]) -> None:
    common.print_machine(res["machine"])
    runs = res["shoal"]
    base = res["baseline"]
    print("\nOnline Retail (541,909 lines) -> Shoal, seconds per stage")
    stage_names: list[str] = []
    for r in runs:
        stage_names += [s for s in r["stages"] if s not in stage_names]
    rows = [[s, *(r["stages"].get(s) for r in runs)] for s in stage_names]
    rows.append(["TOTAL ingest+segment (excl. connect)", *(r["total"] for r in runs)])
    rows.append(["peak RSS MiB after run", *(r["rss_mb"]["segment"] for r in runs)])
    common.print_table(["stage", *(r["database"] for r in runs)], rows)

    print("\nKey results")
    keys = [
        ("events read", lambda r: r["ingest"]["read"]),
        ("accepted", lambda r: r["ingest"]["accepted"]),
        ("duplicates", lambda r: r["ingest"]["duplicates"]),
        ("quarantined", lambda r: r["ingest"]["quarantined"]),
        ("ingest events/s", lambda r: r["ingest"]["events_per_second"]),
        ("users", lambda r: r["result"]["n_users"]),
        ("features", lambda r: r["result"]["n_features"]),
        ("k (auto)", lambda r: r["result"]["k"]),
        ("silhouette", lambda r: r["result"]["silhouette"]),
        ("Davies-Bouldin", lambda r: r["result"]["davies_bouldin"]),
        ("stability ARI", lambda r: r["result"]["stability_ari"]),
    ]
    common.print_table(
        ["figure", *(r["database"] for r in runs)], [[n, *(f(r) for r in runs)] for n, f in keys]
    )
    for r in runs:
        print(f"  {r['database']}: {r['result']['k_reason']}")

    print(
        f"\nBaseline (same process): pandas + scikit-learn, k={base['k']}, n_init=1; best of "
        f"{base['repeat']} runs (totals: {', '.join(f'{t:.3f}' for t in base['totals'])} s)"
    )
    rows = [[s, v] for s, v in base["stages"].items()]
    rows.append(["TOTAL", base["total"]])
    rows.append(["users", base["n_users"]])
    rows.append(["features", base["n_features"]])
    rows.append(["silhouette (untimed, own RFM matrix)", base["silhouette_untimed"]])
    common.print_table(["stage", "seconds"], rows)

    print("\nShoal / baseline (time ratio; > 1 means Shoal is slower)")
    b = base["stages"]
    comparable = [
        (
            "ingest vs read_csv+clean",
            lambda r: r["stages"]["ingest"],
            b["read_csv"] + b["clean (drop missing CustomerID, parse dates)"],
        ),
        (
            "features(+scaling) vs RFM+scaler",
            lambda r: (
                r["stages"]["segment.features"]
                + r["stages"]["segment.untimed (scaling, naming...)"]
            ),
            b["RFM group-by"] + b["StandardScaler"],
        ),
        (
            "select_k+fit vs one KMeans",
            lambda r: r["stages"]["segment.select_k"] + r["stages"]["segment.fit"],
            b["KMeans"],
        ),
        ("total vs total", lambda r: r["total"], base["total"]),
    ]
    common.print_table(
        ["comparison", *(f"{r['database']} ratio" for r in runs), "baseline s"],
        [[n, *(common.ratio(f(r), den) for r in runs), den] for n, f, den in comparable],
    )
    if isinstance(res.get("postgresql"), str):
        print(f"\nPostgreSQL: {res['postgresql']}")
    print(f"\npeak RSS of the process: {res['peak_rss_mb']:.0f} MiB")
    for r in runs:
        if r.get("ingest_breakdown"):
            probes.print_breakdown(
                f"Shoal ingest breakdown ({r['database']})",
                r["ingest_breakdown"],
                r["stages"]["ingest"],
            )
        if r.get("segment_breakdown"):
            probes.print_breakdown(
                f"Shoal segment k=auto breakdown ({r['database']})",
                r["segment_breakdown"],
                r["segment_seconds"],
            )


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the per-function breakdown of Shoal"
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--baseline-repeat", type=int, default=3, help="runs of the baseline; the best is kept"
    )
    args = parser.parse_args()
    common.pin_threads()
    common.exit_cleanly_on_sigterm()
    pg = common.pg_url_arg(args.pg)
    res: dict[str, Any] = {"machine": common.machine_info(), "shoal": []}
    with common.sqlite_file() as url:
        if not args.skip_sqlite:
            res["shoal"].append(run_shoal(url, "sqlite", not args.no_breakdown))
    if pg is None:
        common.log(f"no --pg and ${common.PG_ENV} unset: PostgreSQL part skipped")
        res["postgresql"] = "skipped: no --pg URL and SHOAL_TEST_DATABASE_URL unset"
    else:
        with common.pg_schema(pg) as (schema, url):
            common.log(f"postgresql: schema {schema}")
            res["shoal"].append(run_shoal(url, "postgresql", not args.no_breakdown))
    if not res["shoal"]:
        raise SystemExit("nothing to run: --skip-sqlite without a PostgreSQL URL")
    k = int(res["shoal"][0]["result"]["k"])
    res["baseline"] = run_baseline(k, args.baseline_repeat)
    res["ratios"] = {
        r["database"]: common.ratio(r["total"], res["baseline"]["total"]) for r in res["shoal"]
    }
    res["peak_rss_mb"] = common.peak_rss_mb()
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    if args.json:
        common.dump_json(res)
    else:
        print_report(res)


if __name__ == "__main__":
    main()
