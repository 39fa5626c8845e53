"""Recommendations on Online Retail: every model, both protocols, two time splits, one run.

For each split (default 2011-09-01 and 2011-11-01), ``automation.recommend.evaluate.evaluate``
trains on the events before the split (segments as of that date, fitted in memory), tunes every
model on the validation window before the split, and scores it on the purchases after it:
NDCG, recall, MAP and hit rate at K, coverage and novelty, for all users and for cold users (at
most two orders before the split), under the ``repeat`` and ``new-items`` protocols. The
baselines (popularity, segment popularity, item-kNN, ALS) run in the same process as the hybrid.

Then the verdict the recommendations issue asks for: does the hybrid beat the best baseline on
NDCG@10 for all users (each split, each protocol), and by at least 10% for cold users? And an
ablation of the hybrid on the test window (each component's weight set to zero in the tuned
model, nothing refitted or re-tuned), to show where its gain comes from.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/recommend.py [--splits 2011-09-01,2011-11-01]
        [--k 10] [--db URL] [--markdown] [--json]

Without ``--db`` the bundled Online Retail file is ingested into a temporary SQLite store.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import common

from automation import api
from automation.recommend.evaluate import EvaluationReport, evaluate, score_model
from automation.recommend.hybrid import HybridRecommender

BASELINES = ("popularity", "segment-popularity", "item-knn", "als")
MODELS = (*BASELINES, "content", "ease", "hybrid")  # content, ease: reported, not baselines
METRICS = ("ndcg", "recall", "map", "hit_rate", "coverage", "novelty")
ABLATIONS: dict[str, dict[str, Any]] = {
    "no segment information (every user segmentless)": {},
    "no segment prior (w_segment, gamma)": {"w_segment": 0.0, "gamma": 0.0},
    "no blend of their own for cold customers (cold)": {"cold": None},
    "no learned re-ranker": {"rerank": "none"},
    "no early-orders prior": {"w_early": 0.0},
    "no segment trend": {"w_segtrend": 0.0},
    "no segment repeat rates (w_segrepeat)": {"w_segrepeat": 0.0},
    "no content": {"w_content": 0.0},
    "no basket": {"w_basket": 0.0},
    "no EASE": {"w_ease": 0.0},
    "no next-basket": {"w_next": 0.0},
    "no co-purchase kNN": {"w_cf": 0.0},
    "no trend": {"w_trend": 0.0},
    "no repeat": {"w_repeat": 0.0},
    "no ALS": {"w_als": 0.0},
    "no history weighting (shrink 0)": {"shrink": 0.0},
}


def verdict(report: EvaluationReport) -> list[dict[str, Any]]:
    """Hybrid against the best baseline of the same run, per protocol and user group."""
    out = []
    for proto in ("repeat", "new-items"):
        for users in ("all", "cold"):
            base = max(
                (report.row(m, proto, users) for m in BASELINES), key=lambda r: r["ndcg"] or 0
            )
            hyb = report.row("hybrid", proto, users)
            gain = (hyb["ndcg"] / base["ndcg"] - 1) if base["ndcg"] else None
            need = 0.10 if users == "cold" else 0.0
            ease = next(
                (
                    r["ndcg"]
                    for r in report.results
                    if (r["model"], r["protocol"], r["users"]) == ("ease", proto, users)
                ),
                None,
            )
            out.append(
                {
                    "protocol": proto,
                    "users": users,
                    "n_users": hyb["n_users"],
                    "hybrid": hyb["ndcg"],
                    "best_baseline": base["model"],
                    "baseline": base["ndcg"],
                    "gain": gain,
                    "target": need,
                    "met": gain is not None and gain > need - 1e-12 and hyb["ndcg"] > base["ndcg"],
                    "ease": ease,
                    "vs_ease": (hyb["ndcg"] / ease - 1) if ease else None,
                }
            )
    return out


def ablation(report: EvaluationReport) -> list[dict[str, Any]]:
    """NDCG of the tuned hybrid with one part switched off (test window; no refit)."""
    rows = []
    split = report.test_split
    assert split is not None
    for proto in ("repeat", "new-items"):
        model = report.fitted[f"hybrid/{proto}"]
        assert isinstance(model, HybridRecommender)
        saved = dict(model.params)
        cold = saved.get("cold") or {}
        for label, change in {"tuned hybrid": {}, **ABLATIONS}.items():
            if change and all(saved.get(k) == cold.get(k, v) == v for k, v in change.items()):
                continue  # already off in the tuned model
            if cold and "cold" not in change:  # off for cold customers too
                change = {**change, "cold": {**cold, **{k: change[k] for k in change if k in cold}}}
            ctx = model.context
            segment_ids = ctx.segment_ids
            if label.startswith("no segment information"):
                ctx.segment_ids = segment_ids[:0]  # every user read as segmentless
            model.params.update(change)
            try:
                scored, _ = score_model(model, split, proto, report.k)
            finally:
                ctx.segment_ids = segment_ids
                model.params.clear()
                model.params.update(saved)
            by_group = {r["users"]: r["ndcg"] for r in scored}
            rows.append({"protocol": proto, "variant": label, **by_group})
    return rows


def latency(report: EvaluationReport, n_requests: int = 500) -> dict[str, Any]:
    """Single requests (``recommend(user_id, n=10)`` with reasons) and one batch of every user,
    on the tuned hybrid of the new-items protocol."""
    import numpy as np

    model = report.fitted["hybrid/new-items"]
    users = model.context.user_ids
    rng = np.random.default_rng(0)
    picks = rng.choice(len(users), size=min(n_requests, len(users)), replace=False)
    model.context.user_index()  # the id -> row map is built once per process
    times, cpu = [], []
    for u in picks.tolist():
        t, c = time.perf_counter(), time.thread_time()
        model.recommend(str(users[u]), n=10)
        cpu.append(time.thread_time() - c)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    model.recommend_indices(np.arange(len(users)), 10)
    batch = time.perf_counter() - t
    ms, cpu_ms = np.array(times) * 1000, np.array(cpu) * 1000
    return {
        "requests": len(times),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu_p50_ms": float(np.percentile(cpu_ms, 50)),
        "cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
        "batch_users": len(users),
        "batch_seconds": batch,
    }


def split_payload(rep: EvaluationReport) -> dict[str, Any]:
    """The JSON of one split: ``shoal evaluate``'s document, the verdict, ablation and latency."""
    return {
        **rep.to_dict(),
        "verdict": verdict(rep),
        "ablation": ablation(rep),
        "latency": latency(rep),
    }


def split_section(rep: EvaluationReport) -> list[str]:
    """The README lines of one split: the table, the verdict, the ablation, the tuned hybrid and
    its latency (also used by ``bench/recommend_public.py``)."""
    val = rep.validation
    lines = [
        "",
        f"### Split {rep.split_at.date()} (validation {val['split_at'][:10]} .. {val['end'][:10]})",
        "",
        "| model | protocol | users | n | NDCG | recall | MAP | hit rate | coverage | novelty |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep.results:
        cells = " | ".join(common.fmt(r[m], 4) for m in METRICS)
        lines.append(
            f"| {r['model']} | {r['protocol']} | {r['users']} | {r['n_users']:,} | {cells} |"
        )
    lines += [
        "",
        "| protocol | users | hybrid | best baseline | gain | target | met | EASE alone | vs EASE |",
    ]
    lines.append("|---|---|---:|---|---:|---:|---|---:|---:|")
    for v in verdict(rep):
        gain = f"{100 * v['gain']:+.1f}%" if v["gain"] is not None else "-"
        vs = f"{100 * v['vs_ease']:+.1f}%" if v["vs_ease"] is not None else "-"
        lines.append(
            f"| {v['protocol']} | {v['users']} | {v['hybrid']:.4f} | {v['best_baseline']} "
            f"{v['baseline']:.4f} | {gain} | >= {100 * v['target']:.0f}% | "
            f"{'yes' if v['met'] else 'no'} | {common.fmt(v['ease'], 4)} | {vs} |"
        )
    lines += ["", "Hybrid ablation (NDCG, test window, tuned model with one part off):", ""]
    lines += ["| protocol | variant | all | cold |", "|---|---|---:|---:|"]
    for a in ablation(rep):
        lines.append(
            f"| {a['protocol']} | {a['variant']} | {common.fmt(a.get('all'), 4)} | "
            f"{common.fmt(a.get('cold'), 4)} |"
        )
    tuned = {f"{t.model}/{t.protocol}": t.params for t in rep.tuned if t.model == "hybrid"}
    lines += ["", "Tuned hybrid: " + "; ".join(f"{k} `{v}`" for k, v in tuned.items())]
    lat = latency(rep)
    lines += [
        "",
        f"Latency of the tuned hybrid: single request (top 10 with reasons) p50 "
        f"{lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms (CPU {lat['cpu_p50_ms']:.1f} / "
        f"{lat['cpu_p99_ms']:.1f} ms) over {lat['requests']} users; "
        f"top 10 for all {lat['batch_users']:,} users in one batch {lat['batch_seconds']:.2f} s.",
    ]
    return lines


def markdown(reports: list[EvaluationReport], seconds: float) -> str:
    lines = ["## Recommendations", ""]
    lines.append(
        "`bench/recommend.py`: Online Retail (bundled), every model tuned on a validation window "
        "before each split (`shoal evaluate`), scored on the purchases after it; K = "
        f"{reports[0].k}. Cold users: at most two orders before the split. Measured on this "
        f"2-core machine in {seconds:.0f} s for both splits."
    )
    for rep in reports:
        lines += split_section(rep)
    return "\n".join(lines) + "\n"


def print_split(rep: EvaluationReport) -> None:
    """One split's tables on the console (also used by ``bench/recommend_public.py``)."""
    print(f"\nsplit {rep.split_at.date()}, K={rep.k} ({rep.seconds:.0f} s)")
    common.print_table(
        ["model", "protocol", "users", "n", *METRICS],
        [
            [r["model"], r["protocol"], r["users"], r["n_users"], *(r[m] for m in METRICS)]
            for r in rep.results
        ],
    )
    print()
    common.print_table(
        ["protocol", "users", "hybrid", "best baseline", "ndcg", "gain", "met"],
        [
            [
                v["protocol"],
                v["users"],
                v["hybrid"],
                v["best_baseline"],
                v["baseline"],
                f"{100 * v['gain']:+.1f}%" if v["gain"] is not None else "-",
                "yes" if v["met"] else "no",
            ]
            for v in verdict(rep)
        ],
    )
    print()
    common.print_table(
        ["protocol", "hybrid variant", "ndcg all", "ndcg cold"],
        [[a["protocol"], a["variant"], a["all"], a["cold"]] for a in ablation(rep)],
    )
    print(f"\nlatency: {latency(rep)}")


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--splits", default="2011-09-01,2011-11-01")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--db", default=None, help="a store with Online Retail already ingested")
    p.add_argument("--markdown", action="store_true", help="print the README section")
    args = p.parse_args()
    common.pin_threads()
    reports = []
    t0 = time.perf_counter()
    with common.sqlite_file() as tmp:
        url = args.db or tmp
        engine = api.connect(url)
        if args.db is None:
            common.log("ingesting the bundled Online Retail file")
            api.ingest(engine, [api.BUNDLED_ONLINE_RETAIL], preset="online-retail")
        t_ingest = time.perf_counter() - t0
        for split in args.splits.split(","):
            common.log(f"evaluating split {split}")
            reports.append(
                evaluate(engine, split, args.k, MODELS, progress=lambda m: common.log(f"  {m}"))
            )
        engine.dispose()
    seconds = time.perf_counter() - t0 - t_ingest
    if args.json:
        common.dump_json(
            {
                "splits": [split_payload(r) for r in reports],
                "seconds": seconds,
            }
        )
        return
    if args.markdown:
        sys.stdout.write(markdown(reports, seconds))
        return
    for rep in reports:
        print_split(rep)
    print(f"\n{seconds:.0f} s for {len(reports)} splits (ingest excluded)")


if __name__ == "__main__":
    main()
