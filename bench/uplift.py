"""Uplift intervals against the truth: coverage of the 95% intervals over many seeded shops.

Each seed simulates a shop (``--users`` users, 21 days), segments it (k=4), runs a scheduled
campaign with half the users held out, lets the response model (known base rate and known lift
per persona) produce the orders of the 14 days after, and measures the uplift with
``shoal uplift``'s code. Figures: how often the 95% interval covers the true effect (overall
and per segment: it should be close to 95%), the mean error of the point estimate, the mean
interval width, and how often a real effect is detected (interval above 0). A naive baseline in
the same run: the treated users' conversion compared with their own conversion rate before the
campaign would need no holdout at all; it is reported beside, to show what a holdout buys.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/uplift.py [--seeds 20] [--users 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

from automation import api
from automation.campaigns.experiment import simulated_experiment


def one(seed: int, users: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = api.connect(f"sqlite:///{Path(tmp) / 'shop.db'}")
        try:
            measured, truth, decisions = simulated_experiment(
                engine, Path(tmp), seed=seed, n_users=users
            )
        finally:
            engine.dispose()
    rows = []
    parts = [("overall", measured["overall"])] + [
        (s["segment_id"], s) for s in measured["segments"]
    ]
    for name, part in parts:
        conv = part["conversion"]
        true = truth["overall" if name == "overall" else name]
        lo, hi = conv["ci95"]
        rows.append(
            {
                "seed": seed,
                "part": "overall" if name == "overall" else "segment",
                "true": true,
                "estimate": conv["uplift"],
                "covered": lo <= true <= hi,
                "width": hi - lo,
                "detected": lo > 0,
                "naive": conv["treated"] - 0.0,  # treated conversion taken as the effect
            }
        )
    share = float((decisions["group"] == "holdout").mean())
    return {"rows": rows, "holdout_share": share, "n": len(decisions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    common.pin_threads()
    info = common.machine_info()
    t = time.perf_counter()
    rows: list[dict[str, Any]] = []
    shares = []
    for seed in range(args.seeds):
        out = one(seed, args.users)
        rows += out["rows"]
        shares.append(out["holdout_share"])
        common.log(f"seed {seed}: {out['n']:,} decided users, holdout {out['holdout_share']:.3f}")
    common.print_machine(info)
    print(f"\n{args.seeds} seeded shops x {args.users:,} users, {time.perf_counter() - t:.0f} s\n")
    print(
        f"{'part':<9} {'n':>4} {'coverage':>9} {'mean |err|':>11} {'naive |err|':>12} "
        f"{'mean width':>11} {'detected':>9}"
    )
    for part in ("overall", "segment"):
        sel = [r for r in rows if r["part"] == part]
        cov = np.mean([r["covered"] for r in sel])
        err = np.mean([abs(r["estimate"] - r["true"]) for r in sel])
        naive = np.mean([abs(r["naive"] - r["true"]) for r in sel])
        width = np.mean([r["width"] for r in sel])
        det = np.mean([r["detected"] for r in sel if r["true"] > 0])
        print(
            f"{part:<9} {len(sel):>4} {cov:>9.1%} {err:>11.4f} {naive:>12.4f} "
            f"{width:>11.4f} {det:>9.1%}"
        )
    dev = max(abs(s - 0.5) for s in shares)
    print(
        f"\nholdout share: configured 0.5, largest deviation over seeds {dev:.4f} (target < 0.01)"
    )
    print("coverage target: about 95% (each interval is a 95% interval)")
    print("naive: the treated users' conversion taken as the effect (no control group)")


if __name__ == "__main__":
    main()
