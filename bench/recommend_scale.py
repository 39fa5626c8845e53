"""Recommendation throughput on the synthetic store: top 10 for every user, next to ``implicit``.

The simulator (``automation.simulate``, default 1M users over 90 days, about 10M events) feeds
Shoal's own recommender data path in memory (``Interactions.from_frame``, the path that
``load_interactions`` takes from a store); the users' segments are the simulator's personas on
the last day (they stand in for ``shoal segment``'s output, which needs a store). The
segment-aware hybrid is fitted with its default parameters; its ALS component (an
``ALSRecommender``, 64 factors, ``implicit``'s solver) is the ALS row.

Then, in one process:

- **batch**: ``recommend_indices(all rows, 10)`` of Shoal's ALS and hybrid (cold-start fallback,
  business rules, deterministic top 10), and the bare baseline: ``implicit``'s own
  ``model.recommend(userids, user_items, N=10, filter_already_liked_items=True)`` over the same
  factors and the matrix ALS was fitted on, every user in one call;
- **single requests**: ``recommend(user_id, n=10)`` (with names, prices and reasons) for random
  users, p50/p99 of the wall clock and of the thread's CPU time (a request's cost without the
  wait for a core on a shared machine), beside ``implicit``'s
  ``recommend(userid, user_items[userid], N=10)``.

Everything runs on one thread (``OMP_NUM_THREADS=1``; ``implicit`` with ``num_threads=1``).
The full run takes several minutes on 2 cores: a benchmark option, never a test.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/recommend_scale.py [--users 1000000] [--days 90]
        [--seed 0] [--requests 1000] [--chunk 50000] [--check-users 5000]
        [--skip-hybrid-batch] [--markdown] [--json]
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

import common
import numpy as np

from automation.recommend.als import ALSRecommender
from automation.recommend.base import Recommender
from automation.recommend.data import Interactions
from automation.recommend.hybrid import HybridRecommender
from automation.simulate import simulate

N = 10


def build(n_users: int, days: int, seed: int) -> tuple[Interactions, dict[str, Any]]:
    """Simulated events, through ``Interactions.from_frame``, with personas as segments."""
    info: dict[str, Any] = {}
    t = time.perf_counter()
    sim = simulate(n_users=n_users, days=days, seed=seed)
    info["simulate_s"] = time.perf_counter() - t
    info["events"] = len(sim.events)
    personas = sim.persona_on(days - 1)
    cols = ["user_id", "item_id", "type", "timestamp", "order_id"]
    events = sim.events[cols]
    items = sim.items
    del sim
    gc.collect()
    t = time.perf_counter()
    inter = Interactions.from_frame(
        events,
        items,
        segments=personas,
        segment_names={p: p.replace("_", " ") for p in personas.unique()},
    )
    info["interactions_s"] = time.perf_counter() - t
    info["users"] = inter.n_users
    info["items"] = inter.n_items
    del events
    gc.collect()
    return inter, info


def fit(inter: Interactions, seed: int) -> tuple[HybridRecommender, ALSRecommender, float]:
    t = time.perf_counter()
    hybrid = HybridRecommender(random_state=seed).fit(inter)
    seconds = time.perf_counter() - t
    assert hybrid.als_ is not None
    return hybrid, hybrid.als_, seconds


def implicit_model(als: ALSRecommender) -> Any:
    """``implicit``'s own ALS object holding the fitted factors (nothing refitted)."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=als.item_factors_.shape[1], num_threads=1, random_state=0
    )
    model.user_factors = als.user_factors_
    model.item_factors = als.item_factors_
    return model


def timed(func: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = func()
    return out, time.perf_counter() - t


def percentiles(seconds: list[float], cpu: list[float] | None = None) -> dict[str, float]:
    """Wall-clock p50/p99/mean in ms and, given the thread's CPU seconds per call, the same for
    CPU (what a request costs without waiting for a core on a shared machine)."""
    ms = np.asarray(seconds) * 1000
    out = {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }
    if cpu is not None:
        c = np.asarray(cpu) * 1000
        out |= {
            "cpu_p50_ms": float(np.percentile(c, 50)),
            "cpu_p99_ms": float(np.percentile(c, 99)),
        }
    return out


def single_requests(
    hybrid: HybridRecommender, als: ALSRecommender, base: Any, user_items: Any, n: int, seed: int
) -> dict[str, dict[str, float]]:
    """p50/p99 of one user per call, the same random users for every model."""
    ctx = hybrid.context
    rng = np.random.default_rng(seed)
    picks = rng.choice(ctx.n_users, size=min(n, ctx.n_users), replace=False).tolist()
    ids = [str(ctx.user_ids[u]) for u in picks]
    ctx.user_index()  # the id -> row map is built once per process, not per request
    out: dict[str, dict[str, float]] = {}
    for label, call in (
        ("implicit", lambda k: base.recommend(picks[k], user_items[picks[k]], N=N)),
        ("als", lambda k: als.recommend(ids[k], n=N)),
        ("hybrid", lambda k: hybrid.recommend(ids[k], n=N)),
    ):
        call(0)  # warm-up
        times, cpu = [], []
        for k in range(len(picks)):
            t, c = time.perf_counter(), time.thread_time()
            call(k)
            cpu.append(time.thread_time() - c)
            times.append(time.perf_counter() - t)
        out[label] = percentiles(times, cpu)
    return out


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of items two top-N lists (rows) have in common."""
    hits = 0
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        hits += len({i for i in x if i >= 0} & {i for i in y if i >= 0})
    return hits / max(a.shape[0] * a.shape[1], 1)


def same_as_plain(als: ALSRecommender, rows: np.ndarray) -> float:
    """Share of users whose fast-path top 10 (items and scores) is exactly the plain path's
    (float64 scores of every item, rules, ``top_n``)."""
    fast_i, fast_s, _ = als._rank(rows, N, True, None, None)
    plain_i, plain_s, _ = Recommender._rank(als, rows, N, True, None, None)
    same = (fast_i == plain_i).all(axis=1) & (fast_s == plain_s).all(axis=1)
    return float(same.mean())


def batches(
    hybrid: HybridRecommender,
    als: ALSRecommender,
    base: Any,
    user_items: Any,
    args: Any,
    info: dict[str, Any],
) -> dict[str, float]:
    """Seconds for top 10 of every user, per model. The users go in chunks of ``--chunk`` and
    the models take turns on each chunk, so that a change in the machine's load (2 shared
    cores) falls on every model alike."""
    rows = np.arange(hybrid.context.n_users, dtype=np.int64)
    models = ["implicit", "als"] + ([] if args.skip_hybrid_batch else ["hybrid"])
    total = dict.fromkeys(models, 0.0)
    for lo in range(0, len(rows), args.chunk):
        r = rows[lo : lo + args.chunk]
        (b_ids, _), t = timed(
            lambda r=r: base.recommend(r, user_items[r], N=N, filter_already_liked_items=True)
        )
        total["implicit"] += t
        (a_ids, _), t = timed(lambda r=r: als.recommend_indices(r, N))
        total["als"] += t
        if lo == 0:
            info["als_overlap_with_implicit"] = overlap(a_ids, b_ids)
            info["als_fast_equals_plain"] = same_as_plain(als, r[: args.check_users])
        if "hybrid" in total:
            _, t = timed(lambda r=r: hybrid.recommend_indices(r, N))
            total["hybrid"] += t
        done = lo + len(r)
        common.log(
            f"  {done:,} users: "
            + ", ".join(
                f"{m} {v:.1f} s ({v / done * 100_000:.1f} s/100k)" for m, v in total.items()
            )
        )
    return total


def run(args: Any) -> dict[str, Any]:
    common.pin_threads()
    common.log(f"simulating {args.users:,} users over {args.days} days")
    inter, info = build(args.users, args.days, args.seed)
    common.log(
        f"{info['events']:,} events -> {info['users']:,} users x {info['items']:,} items "
        f"(simulate {info['simulate_s']:.0f} s, interactions {info['interactions_s']:.0f} s)"
    )
    hybrid, als, fit_s = fit(inter, args.seed)
    del inter
    gc.collect()
    info["fit_hybrid_s"] = fit_s
    info["rss_after_fit_mb"] = common.current_rss_mb()
    info["check_users"] = min(args.check_users, args.chunk, hybrid.context.n_users)
    common.log(f"hybrid fitted (with its ALS) in {fit_s:.0f} s")
    ctx = hybrid.context
    user_items = ctx.profile.astype(np.float32).tocsr()
    base = implicit_model(als)
    batch = batches(hybrid, als, base, user_items, args, info)
    common.log(f"single requests: {args.requests} users")
    single = single_requests(hybrid, als, base, user_items, args.requests, args.seed)
    info["rss_peak_mb"] = common.peak_rss_mb()
    return {
        "machine": common.machine_info(),
        "load_average": os.getloadavg(),
        "params": {"users": args.users, "days": args.days, "seed": args.seed, "n": N},
        "data": info,
        "batch_seconds": batch,
        "single": single,
    }


def rows_for(result: dict[str, Any]) -> list[list[Any]]:
    users = result["data"]["users"]
    batch, single = result["batch_seconds"], result["single"]
    base = batch["implicit"]
    out = []
    for label, name in (
        ("implicit", "implicit recommend (baseline)"),
        ("als", "shoal als"),
        ("hybrid", "shoal hybrid"),
    ):
        sec = batch.get(label)
        out.append(
            [
                name,
                f"{sec:.1f}" if sec is not None else "-",
                f"{sec / users * 100_000:.2f}" if sec is not None else "-",
                f"{base / sec:.2f}x" if sec else "-",
                f"{single[label]['p50_ms']:.2f}",
                f"{single[label]['p99_ms']:.2f}",
                f"{single[label]['cpu_p50_ms']:.2f}",
                f"{single[label]['cpu_p99_ms']:.2f}",
            ]
        )
    return out


HEADERS = [
    "model",
    "batch s",
    "s per 100k",
    "vs implicit",
    "p50 ms",
    "p99 ms",
    "CPU p50 ms",
    "CPU p99 ms",
]


def markdown(result: dict[str, Any]) -> str:
    d = result["data"]
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    lines = [
        f"Synthetic store: {d['users']:,} users x {d['items']:,} items, {d['events']:,} events; "
        f"simulate {d['simulate_s']:.0f} s, interactions {d['interactions_s']:.0f} s, hybrid "
        f"fit (with its ALS) {d['fit_hybrid_s']:.0f} s; peak RSS {d['rss_peak_mb']:,.0f} MiB; "
        f"load average at the end {load}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "---:|" * (len(HEADERS) - 1),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows_for(result)]
    lines += [
        "",
        f"Shoal ALS and `implicit` share {100 * d['als_overlap_with_implicit']:.1f}% of their "
        "top-10 items over the first chunk of users (`implicit` filters every item in the user's "
        "row of the matrix, views included; Shoal filters purchases, refunds and non-products). "
        f"Shoal's fast ALS path gives exactly the plain path's top 10 (items and scores) for "
        f"{100 * d['als_fast_equals_plain']:.2f}% of the first {d['check_users']:,} users.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--requests", type=int, default=1000, help="single requests per model")
    p.add_argument("--chunk", type=int, default=50_000, help="users per turn of each model")
    p.add_argument("--skip-hybrid-batch", action="store_true")
    p.add_argument(
        "--check-users", type=int, default=5000, help="users checked against the plain path"
    )
    p.add_argument("--markdown", action="store_true", help="print the README section")
    args = p.parse_args()
    result = run(args)
    if args.json:
        common.dump_json(result)
    elif args.markdown:
        sys.stdout.write(markdown(result))
    else:
        common.print_table(HEADERS, rows_for(result))
        print()
        sys.stdout.write(markdown(result))


if __name__ == "__main__":
    main()
