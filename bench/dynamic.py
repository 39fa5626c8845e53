"""Dynamic segmentation against ground truth: each simulator shift replayed day by day.

Per scenario (``promo``, ``churn``, ``emerging``, ``merge``, ``split`` on ``--shift``; ``none``, a
control): ingest the days before ``--warmup``, refit (``api.segment(k=--k)``), then one ingest +
``run_update`` per day. Baselines on the same daily matrices (``build_features`` + warm-up
``FeatureScaler``): daily ``KMeans`` refit (library ids), ``MiniBatchKMeans.partial_fit``, River
``STREAMKMeans`` / ``DBSTREAM`` (``learn_one`` on touched users, ``predict_one``'s nearest-centre
rule for all, vectorised and checked). Per method and day: ARI with the persona; spurious: users
whose persona never changed (shifted groups count as changed from the shift, promo's bargain
hunters too) whose segment changed, over those present both days; id change: share of ids (>= 20
members) whose majority persona changed. Shoal only: delay of the matching transition, alarms
(transitions before the shift; all, for ``none``); for a new kind of customer, the first day a
post-shift id holds most of them (and they most of it), their share in new ids at +3 d and at the
end. Figures, never asserts. Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/dynamic.py [--users N] [--days D] [--seed S] [--shoal-only] [--json]
    OMP_NUM_THREADS=1 .venv/bin/python bench/dynamic.py --scale [--pg URL]
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import pandas as pd
import probes
from river import cluster as rcluster
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import cross_val_predict

from automation import api
from automation.features.build import build_features
from automation.features.scaling import FeatureScaler
from automation.segments.update import run_update
from automation.simulate import simulate
from automation.store import snapshots

START = pd.Timestamp("2024-01-01", tz="UTC")
SCENARIOS = ("promo", "churn", "emerging", "merge", "split", "none")
METHODS = ("shoal", "kmeans_refit", "minibatch", "streamkmeans", "dbstream")
NEW_KIND = {"emerging": "emerging_gift_buyer", "split": "bargain_hunter_premium"}


# ---------------------------------------------------------------------------------- baselines
class RiverClusterer:
    """learn_one on the touched rows; assignment by predict_one's rule (nearest centre)."""

    def __init__(self, model: Any, seed: int) -> None:
        self.model, self.rng, self.mismatch = model, np.random.default_rng(seed), 0

    def __call__(self, X: np.ndarray, touched: np.ndarray) -> np.ndarray:
        for i in self.rng.permutation(np.flatnonzero(touched)):
            self.model.learn_one(dict(enumerate(X[i].tolist())))
        centers = self.model.centers
        ids = list(centers)
        if not ids:
            return np.zeros(len(X), dtype=np.int64)
        C = np.array([[centers[i][j] for j in range(X.shape[1])] for i in ids])
        d2 = (X**2).sum(1)[:, None] - 2 * X @ C.T + (C**2).sum(1)[None, :]
        out = np.asarray(ids)[d2.argmin(axis=1)]
        for r in range(min(20, len(X))):  # the vectorised rule is predict_one's
            self.mismatch += int(self.model.predict_one(dict(enumerate(X[r].tolist()))) != out[r])
        return out


def baselines(k: int, seed: int) -> dict[str, Any]:
    """Each maps (X, touched rows) to labels; the first call is the warm-up (every row)."""
    mb = MiniBatchKMeans(k, random_state=seed, batch_size=1024, n_init=3)

    def kmeans_refit(X: np.ndarray, touched: np.ndarray) -> np.ndarray:
        return KMeans(k, n_init=1, random_state=seed).fit_predict(X)

    def minibatch(X: np.ndarray, touched: np.ndarray) -> np.ndarray:
        if not hasattr(mb, "cluster_centers_"):
            mb.fit(X)
        elif touched.sum() >= k:
            mb.partial_fit(X[touched])
        return mb.predict(X)

    stream = rcluster.STREAMKMeans(chunk_size=100, n_clusters=k, halflife=0.5, sigma=1.0, seed=seed)
    # clustering_threshold 3 (scaled units): the best ARI of {2, 3, 4} at the warm-up (seed 0).
    db = rcluster.DBSTREAM(clustering_threshold=3.0, fading_factor=0.001, cleanup_interval=100)
    return {"kmeans_refit": kmeans_refit, "minibatch": minibatch,
            "streamkmeans": RiverClusterer(stream, seed), "dbstream": RiverClusterer(db, seed)}  # fmt: skip


# ---------------------------------------------------------------------------------- truth
def regimes(sim: Any, days: int, scenario: str, shift: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Persona per user (rows) and day (columns), and whether the user's regime changed."""
    t = sim.truth.assign(user_id=sim.truth["user_id"].astype(str))
    pers = t.pivot_table(index="user_id", columns="day", values="persona", aggfunc="last")
    pers = pers.reindex(columns=range(days)).ffill(axis=1)
    first = t.groupby("user_id")["persona"].first()
    changed = pers.ne(first.reindex(pers.index), axis=0) & pers.notna()
    if scenario == "promo":  # the label stays, the behaviour changes
        changed.loc[first[first == "bargain_hunter"].index, list(range(shift, days))] = True
    return pers, changed.cummax(axis=1)


def day_metrics(labels: dict[int, pd.Series], pers: pd.DataFrame, changed: pd.DataFrame,
                day: int) -> dict[str, Any]:  # fmt: skip
    cur, prev = labels[day], labels[day - 1]
    y = pers[day].reindex(cur.index)
    both = prev.index.intersection(cur.index)
    keep = both[~changed[day].reindex(both).fillna(False).to_numpy(bool)]
    a, b = _majority(prev, pers[day - 1]), _majority(cur, pers[day])
    ids = a.index.intersection(b.index)
    return {"day": day, "ari": float(adjusted_rand_score(y.astype(str), cur.astype(str))),
            "spurious": float((cur[keep] != prev[keep]).mean()) if len(keep) else 0.0,
            "id_change": float((a[ids] != b[ids]).mean()) if len(ids) else 0.0}  # fmt: skip


def _majority(lab: pd.Series, persona: pd.Series) -> pd.Series:
    """Majority persona of each id with at least 20 members."""
    frame = pd.DataFrame({"id": lab.to_numpy(), "p": persona.reindex(lab.index).to_numpy()})
    sizes = frame.groupby("id").size()
    top = frame.dropna().groupby("id")["p"].agg(lambda s: s.value_counts().index[0])
    return top[sizes.reindex(top.index) >= 20]


def new_kind(labels: dict[int, pd.Series], pers: pd.DataFrame, kind: str, shift: int,
             last: int) -> dict[str, Any]:  # fmt: skip
    """Whether the new kind of customer is held by ids that did not exist before the shift."""
    before = set(labels[shift - 1].unique())
    out: dict[str, Any] = {"own_new_day": None}
    for d in range(shift, last + 1):
        lab = labels[d]
        mine = lab[pers[d].reindex(lab.index).eq(kind).to_numpy()]
        if mine.empty:
            continue
        holder = mine.value_counts().index[0]
        purity = float((pers[d].reindex(lab.index)[lab == holder] == kind).mean())
        if out["own_new_day"] is None and holder not in before and purity > 0.5:
            out["own_new_day"] = d
        if d in (shift + 3, last):
            out["in_new_id_d3" if d == shift + 3 else "in_new_id_end"] = (
                1 - mine.isin(before).mean()
            )
    return out


def detection(scenario: str, transitions: dict[int, list[dict[str, Any]]],
              labels: dict[int, pd.Series], pers: pd.DataFrame, shift: int) -> dict[str, Any]:  # fmt: skip
    """First transition matching the injected shift, and the transitions before it (alarms)."""
    ref, p0 = labels[shift - 1], pers[shift - 1]

    def holder(persona: str) -> str:
        return str(ref[p0.reindex(ref.index).eq(persona).to_numpy()].value_counts().index[0])

    def majority(d: int, sid: str) -> str:
        top = pers[d].reindex(labels[d].index)[labels[d] == sid].value_counts()
        return str(top.index[0]) if len(top) else ""

    kinds, segs, born_kind = {
        "promo": ({"drifted"}, [holder("bargain_hunter")], "bargain_hunter"),
        "churn": ({"drifted", "retired"}, [holder("loyal_high_spender")], None),
        "emerging": (set(), [], "emerging_gift_buyer"),
        "merge": ({"merged"}, [holder("browser"), holder("refunder")], None),
        "split": (set(), [], "bargain_hunter_premium"),
    }.get(scenario, (set(), [], None))
    alarms: dict[str, int] = {}
    for d in sorted(transitions):
        for t in transitions[d]:
            hit = t["type"] in kinds and any(s in segs for s in t["segments"])
            hit = hit or (born_kind is not None and t["type"] in ("born", "split")
                          and majority(d, t["segments"][-1]) == born_kind)  # fmt: skip
            if d >= shift and hit and scenario != "none":
                return {"delay": d - shift, "transition": t["type"], "segments": t["segments"],
                        "alarms": alarms}  # fmt: skip
            if d < shift or scenario == "none":
                alarms[t["type"]] = alarms.get(t["type"], 0) + 1
    return {"delay": None, "transition": None, "segments": [], "alarms": alarms}


# ---------------------------------------------------------------------------------- replay
def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - t


def _features(engine: Any, scaler: FeatureScaler, affinity: Any) -> tuple[np.ndarray, pd.Index]:
    with engine.connect() as conn:
        table = build_features(conn, affinity_model=affinity)
    return scaler.transform(table.frame), pd.Index(table.external_ids.to_numpy(), name="user_id")


def run_scenario(name: str, args: Any, url: str, tmp: Path) -> dict[str, Any]:
    shifts = [] if name == "none" else [f"{name}@{args.shift}"]
    sim = simulate(args.users, args.days, args.seed, shifts, target_events=args.users * args.events)
    ev, day = sim.events, ((sim.events["timestamp"] - START).dt.days).to_numpy()
    pers, changed = regimes(sim, args.days, name, args.shift)
    engine = api.connect(url)
    ev[day < args.warmup].to_parquet(tmp / "warm.parquet")
    api.ingest(engine, [tmp / "warm.parquet"])
    res = api.segment(engine, k=args.k, seed=args.seed)
    with engine.connect() as conn:
        table = build_features(conn, random_state=args.seed)
    scaler, affinity = FeatureScaler().fit(table.frame), table.affinity_model
    X, users = _features(engine, scaler, affinity)
    models = {} if args.shoal_only else baselines(res.k, args.seed)
    w = args.warmup - 1
    labels: dict[str, dict[int, pd.Series]] = {m: {} for m in METHODS}
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    labels["shoal"][w] = api.assignments(engine).set_index("user_id")["segment_id"].astype(str)
    for m, model in models.items():
        labels[m][w] = pd.Series(model(X, np.ones(len(X), bool)).astype(str), index=users)
    transitions: dict[int, list[dict[str, Any]]] = {}
    for d in range(args.warmup, args.days):
        ev[day == d].to_parquet(tmp / f"d{d}.parquet")
        api.ingest(engine, [tmp / f"d{d}.parquet"])
        upd, sec = timed(run_update, engine)
        seconds["shoal"].append(sec)
        transitions[d] = upd.transitions if upd is not None else []
        labels["shoal"][d] = api.assignments(engine).set_index("user_id")["segment_id"].astype(str)
        X, users = _features(engine, scaler, affinity)
        touched = users.isin(ev.loc[day == d, "user_id"].astype(str).unique())
        for m, model in models.items():
            lab, sec = timed(model, X, touched)
            labels[m][d] = pd.Series(lab.astype(str), index=users)
            seconds[m].append(sec)
        common.log(f"{name} day {d}: update {seconds['shoal'][-1]:.2f}s, "
                   f"{[x['type'] for x in transitions[d]]}")  # fmt: skip
    _, refit_s = timed(api.segment, engine, k=str(res.k), seed=args.seed)  # on the final store
    out: dict[str, Any] = {"scenario": name, "k": res.k, "refit_s": refit_s, "events": len(ev)}
    out["methods"] = {}
    engine.dispose()
    if name == "none":  # what the features can tell at all: a supervised classifier
        y = pers[args.days - 1].reindex(users).astype(str).to_numpy()
        pred = cross_val_predict(HistGradientBoostingClassifier(random_state=0), X, y, cv=3)
        out["supervised_ari"] = adjusted_rand_score(y, pred)
        out["supervised_accuracy"] = float((pred == y).mean())
    for m in [m for m in METHODS if m == "shoal" or m in models]:
        daily = [day_metrics(labels[m], pers, changed, d) for d in range(args.warmup, args.days)]
        after = [r["ari"] for r in daily if r["day"] >= args.shift + 3]
        sp = [r["spurious"] for r in daily]
        row = {"ari_after": float(np.mean(after)), "ari_min_after": float(np.min(after)),
               "spurious_mean": float(np.mean(sp)), "spurious_max": float(np.max(sp)),
               "id_change": float(np.mean([r["id_change"] for r in daily])),
               "seconds": float(np.mean(seconds[m])), "seconds_max": float(np.max(seconds[m])),
               "daily": daily}  # fmt: skip
        if name in NEW_KIND:
            row["new_kind"] = new_kind(labels[m], pers, NEW_KIND[name], args.shift, args.days - 1)
        if isinstance(models.get(m), RiverClusterer):
            row["predict_one_mismatch"] = models[m].mismatch
        out["methods"][m] = row
    out["detection"] = detection(name, transitions, labels["shoal"], pers, args.shift)
    out["transitions"] = {d: ts for d, ts in transitions.items() if ts}
    return out


# ---------------------------------------------------------------------------------- scale
UPDATE_PROBES = [("automation.segments.update", f, f) for f in (
    "_update", "build_features", "load_stored", "_fresh_rows", "upsert", "materialise",
    "resolve", "apply_structure", "cluster_metrics", "_record", "segment_profiles",
    "save_segmentation", "write_migrations", "write_outbox", "save_state", "save_delta")]  # fmt: skip


def run_scale(args: Any, url: str, tmp: Path) -> dict[str, Any]:
    """~--scale-users users stored (2.5x simulated, 6 events each: ~40% act in 13 days)."""
    sim = simulate(int(2.5 * args.scale_users), 14, args.seed, target_events=15 * args.scale_users)
    ev, day = sim.events, ((sim.events["timestamp"] - START).dt.days).to_numpy()
    ev[day < 13].to_parquet(tmp / "warm.parquet")
    n_store = int(ev.loc[day < 13, "user_id"].nunique())
    last = ev[day == 13]
    users = last["user_id"].astype(str).unique()
    pick = np.random.default_rng(args.seed).choice(users, min(len(users), n_store // 100), False)
    last[last["user_id"].astype(str).isin(pick)].to_parquet(tmp / "day.parquet")
    engine = api.connect(url)
    out: dict[str, Any] = {"users_in_store": n_store, "touched": int(len(pick))}
    _, out["ingest_s"] = timed(api.ingest, engine, [tmp / "warm.parquet"])
    res, out["first_refit_s"] = timed(api.segment, engine, k=args.k, seed=args.seed)
    out["k"] = res.k
    api.ingest(engine, [tmp / "day.parquet"])
    probe = probes.Probe()
    probes.install_probes(probe, UPDATE_PROBES)
    upd, out["update_s"] = timed(run_update, engine)
    probe.restore()
    out["breakdown"] = probe.rows(0.01)
    out["update"] = {k: v for k, v in (upd.to_dict() if upd else {}).items() if k != "quality"}
    snapshots.forget()  # what a process that did not write the snapshot reads first
    with engine.connect() as conn:
        _, out["cold_load_s"] = timed(snapshots.load_stored, conn)
    _, out["refit_s"] = timed(api.segment, engine, k=str(res.k), seed=args.seed)
    out["ratio"] = out["update_s"] / out["refit_s"]
    engine.dispose()
    return out


# ---------------------------------------------------------------------------------- report
def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _nk(v: dict[str, Any]) -> str:
    return f"day {str(v['own_new_day']).replace('None', '-')}; {_pct(v.get('in_new_id_d3'))} / {_pct(v.get('in_new_id_end'))}"


def print_scenario(r: dict[str, Any], args: Any) -> None:
    det, nk = r["detection"], r["scenario"] in NEW_KIND
    alarms = ", ".join(f"{k} {v}" for k, v in det["alarms"].items()) or "none"
    at = "" if r["scenario"] == "none" else f"@{args.shift}"
    print(f"\n### {r['scenario']}{at}  (k={r['k']}, {r['events']:,} events; "
          f"refit on the final store {r['refit_s']:.2f} s)\n")  # fmt: skip
    if "supervised_ari" in r:
        print(f"control: every transition is an alarm: {alarms}; a supervised classifier on the same "
              f"features (3-fold CV, last day): ARI {r['supervised_ari']:.3f}, accuracy "
              f"{r['supervised_accuracy']:.1%}")  # fmt: skip
    else:
        print(f"detection: {det['transition'] or 'NOT DETECTED'} {'/'.join(det['segments'])} "
              f"after {str(det['delay']).replace('None', '-')} d; alarms before the shift: {alarms}")  # fmt: skip
    head = ["method", f"ARI d>={args.shift + 3}", "min", "spurious mean", "max", "id change",
            "s/update", "max s"] + ["new kind: own id day; in new ids d+3 / end"] * nk  # fmt: skip
    rows = [[m, v["ari_after"], v["ari_min_after"], _pct(v["spurious_mean"]),
             _pct(v["spurious_max"]), _pct(v["id_change"]), v["seconds"], v["seconds_max"]]
            + ([_nk(v["new_kind"])] if nk else []) for m, v in r["methods"].items()]  # fmt: skip
    common.print_table(head, rows)
    days = [d["day"] for d in r["methods"]["shoal"]["daily"]]
    print(f"\nper day {days[0]}..{days[-1]}: ARI (x1000) and spurious (% x10)")
    for m, v in r["methods"].items():
        print(f"  {m:13s} ARI " + " ".join(f"{1000 * d['ari']:3.0f}" for d in v["daily"]))
        print(f"  {'':13s} sp  " + " ".join(f"{1000 * d['spurious']:3.0f}" for d in v["daily"]))
    for d, ts in r["transitions"].items():
        for t in ts:
            ev = {k: v for k, v in t["evidence"].items() if k != "moved_features"}
            print(f"  day {d}: {t['type']} {'/'.join(t['segments'])} {ev}"[:400])


def print_summary(results: list[dict[str, Any]], args: Any) -> None:
    print("\n### Summary (Shoal against the best baseline of each column)\n")
    head = ["scenario", "detected", "delay d", "alarms", "ARI", "best base ARI", "spurious mean",
            "max", "base min", "id change", "base min", "s/update", "refit s"]  # fmt: skip
    rows = []
    for r in results:
        s, det = r["methods"]["shoal"], r["detection"]
        ms = {m: v for m, v in r["methods"].items() if m != "shoal"}
        best = max(ms, key=lambda m: ms[m]["ari_after"]) if ms else None
        rows.append([r["scenario"], det["transition"] or "-", det["delay"],
                     sum(det["alarms"].values()), s["ari_after"],
                     f"{ms[best]['ari_after']:.3f} ({best})" if best else "-",
                     _pct(s["spurious_mean"]), _pct(s["spurious_max"]),
                     _pct(min((v["spurious_mean"] for v in ms.values()), default=None)),
                     _pct(s["id_change"]), _pct(min((v["id_change"] for v in ms.values()), default=None)),
                     s["seconds"], r["refit_s"]])  # fmt: skip
    common.print_table(head, rows)


def print_scale(s: dict[str, Any]) -> None:
    print(f"\n### Scale: {s['users_in_store']:,} users ({s['database']}), k={s['k']}, one update "
          f"touching {s['touched']:,} users ({s['touched'] / s['users_in_store']:.1%})\n")  # fmt: skip
    common.print_table(["step", "seconds"], [
        ["ingest (13 days)", s["ingest_s"]], ["first refit", s["first_refit_s"]],
        ["update (1 day, ~1% touched)", s["update_s"]], ["full refit (same k)", s["refit_s"]],
        ["update / refit", s["ratio"]],
        ["snapshot read by another process", s.get("cold_load_s")]])  # fmt: skip
    probes.print_breakdown("update breakdown", s["breakdown"], s["update_s"])


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    for flag, default in (("--users", 20_000), ("--days", 60), ("--seed", 0), ("--shift", 35),
                          ("--warmup", 28), ("--events", 120), ("--scale-users", 1_000_000)):  # fmt: skip
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--k", default="5", help="K of the warm-up refit (auto or a number)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS)
    p.add_argument("--scale", action="store_true", help="the 1M-user update against a refit")
    p.add_argument("--shoal-only", action="store_true",
                   help="no baselines (they do not depend on Shoal's code: reuse a full run's)")  # fmt: skip
    args = p.parse_args()
    common.pin_threads()
    common.exit_cleanly_on_sigterm()
    pg = common.pg_url_arg(args.pg) if args.scale else None
    payload: dict[str, Any] = {"machine": common.machine_info(), "args": vars(args)}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-dyn-") as tmp:
        lite = contextlib.nullcontext(("", f"sqlite:///{Path(tmp) / 'scale.db'}"))
        with common.pg_schema(pg, "dyn") if pg else lite as (_, url):
            if args.scale:
                payload["scale"] = run_scale(args, url, Path(tmp)) | {"database": url.split(":")[0]}
        for name in [] if args.scale else args.scenario or SCENARIOS:
            sub = Path(tmp) / name
            sub.mkdir()
            results.append(run_scenario(name, args, f"sqlite:///{sub / 'store.db'}", sub))
    payload["machine"]["loadavg_end"] = list(os.getloadavg())
    payload["scenarios"] = results
    if args.json:
        common.dump_json(payload)
        return
    common.print_machine(payload["machine"])
    print(f"\n{args.users:,} users, {args.days} days, {args.events} events per user over the run, "
          f"seed {args.seed}, warm-up days < {args.warmup}, shift on day {args.shift}")  # fmt: skip
    for r in results:
        print_scenario(r, args)
    if results:
        print_summary(results, args)
    if "scale" in payload:
        print_scale(payload["scale"])


if __name__ == "__main__":
    main()
