"""Dynamic segmentation against ground truth: each simulator shift replayed day by day.

Per scenario (``promo``, ``churn``, ``emerging``, ``merge``, ``split``, each injected on
``--shift``): simulate ``--users`` over ``--days`` at ``--events`` events per user over the run,
ingest the days before ``--warmup`` and refit (``api.segment(k=--k)``), then one ingest and one
``run_update`` per day. The same daily feature matrices (``build_features`` with the warm-up
affinity model, ``FeatureScaler`` fitted at the warm-up) feed the baselines: a daily
scikit-learn ``KMeans`` refit (ids as the library gives them, same K), ``MiniBatchKMeans``
(``fit`` at the warm-up, ``partial_fit`` on the touched users each day), River's
``STREAMKMeans`` and ``DBSTREAM`` (``learn_one`` on the touched users; every user assigned by
``predict_one``'s rule, the nearest centre, vectorised and checked against ``predict_one``).

Metrics per method and day (users in the store, persona as of that day):

- ``ari``: adjusted Rand index between the assignment and the persona;
- ``spurious``: users whose persona (regime) never changed, present the day before, whose segment
  changed, over those users (a shifted group counts as changed from the shift day on; for
  ``promo`` the bargain hunters, whose label stays, count as changed too);
- ``id_change``: share of ids (>= 20 members both days) whose majority persona changed;
- detection (Shoal only: baselines emit no transitions): days from the shift to the first
  matching transition; false alarms are transitions before the shift;
- ``new id``: whether the segment holding most of the new kind of customer (emerging gift
  buyers, premium bargain hunters) is an id that did not exist before the shift.

Figures, never asserts. Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/dynamic.py [--users N] [--days D] [--seed S] [--json]
    OMP_NUM_THREADS=1 .venv/bin/python bench/dynamic.py --scale [--pg URL]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import pandas as pd
from river import cluster as rcluster
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score

from automation import api
from automation.features.build import build_features
from automation.features.scaling import FeatureScaler
from automation.segments.update import run_update
from automation.simulate import simulate

START = pd.Timestamp("2024-01-01", tz="UTC")
SCENARIOS = ("promo", "churn", "emerging", "merge", "split")
METHODS = ("shoal", "kmeans_refit", "minibatch", "streamkmeans", "dbstream")
NEW_KIND = {"emerging": "emerging_gift_buyer", "split": "bargain_hunter_premium"}
MIN_ID = 20  # members for an id to count in id stability


# ---------------------------------------------------------------------------------- baselines
class KMeansRefit:
    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seed = k, seed

    def start(self, X: np.ndarray) -> np.ndarray:
        return self.step(X, np.ones(len(X), bool))

    def step(self, X: np.ndarray, touched: np.ndarray) -> np.ndarray:
        return KMeans(self.k, n_init=1, random_state=self.seed).fit_predict(X)


class MiniBatch:
    def __init__(self, k: int, seed: int) -> None:
        self.model = MiniBatchKMeans(k, random_state=seed, batch_size=1024, n_init=3)

    def start(self, X: np.ndarray) -> np.ndarray:
        return self.model.fit(X).predict(X)

    def step(self, X: np.ndarray, touched: np.ndarray) -> np.ndarray:
        if touched.sum() >= self.model.n_clusters:
            self.model.partial_fit(X[touched])
        return self.model.predict(X)


class RiverClusterer:
    """learn_one on rows; assignment by predict_one's rule (nearest centre), vectorised."""

    def __init__(self, model: Any, seed: int) -> None:
        self.model, self.rng, self.mismatch = model, np.random.default_rng(seed), 0

    def _learn(self, X: np.ndarray) -> None:
        for i in self.rng.permutation(len(X)):
            self.model.learn_one(dict(enumerate(X[i].tolist())))

    def start(self, X: np.ndarray) -> np.ndarray:
        self._learn(X)
        return self.predict(X)

    def step(self, X: np.ndarray, touched: np.ndarray) -> np.ndarray:
        self._learn(X[touched])
        return self.predict(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
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
    return {
        "kmeans_refit": KMeansRefit(k, seed),
        "minibatch": MiniBatch(k, seed),
        "streamkmeans": RiverClusterer(
            rcluster.STREAMKMeans(chunk_size=100, n_clusters=k, halflife=0.5, sigma=1.0, seed=seed),
            seed,
        ),
        # clustering_threshold 3 (in scaled units): the best ARI of {2, 3, 4} at the warm-up.
        "dbstream": RiverClusterer(
            rcluster.DBSTREAM(clustering_threshold=3.0, fading_factor=0.001, cleanup_interval=100),
            seed,
        ),
    }


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


def day_metrics(
    labels: dict[int, pd.Series], pers: pd.DataFrame, changed: pd.DataFrame, day: int
) -> dict[str, Any]:
    cur, prev = labels[day], labels[day - 1]
    y = pers[day].reindex(cur.index)
    both = prev.index.intersection(cur.index)
    keep = both[~changed[day].reindex(both).fillna(False).to_numpy(bool)]
    return {
        "day": day,
        "ari": float(adjusted_rand_score(y.astype(str), cur.astype(str))),
        "spurious": float((cur[keep] != prev[keep]).mean()) if len(keep) else 0.0,
        "moved": float((cur[both] != prev[both]).mean()) if len(both) else 0.0,
        "id_change": _id_change(prev, cur, pers[day - 1], pers[day]),
        "n_ids": int(cur.nunique()),
    }


def _majority(lab: pd.Series, persona: pd.Series) -> pd.Series:
    frame = pd.DataFrame({"id": lab.to_numpy(), "p": persona.reindex(lab.index).to_numpy()})
    sizes = frame.groupby("id").size()
    top = frame.dropna().groupby("id")["p"].agg(lambda s: s.value_counts().index[0])
    return top[sizes.reindex(top.index) >= MIN_ID]


def _id_change(prev: pd.Series, cur: pd.Series, p_prev: pd.Series, p_cur: pd.Series) -> float:
    a, b = _majority(prev, p_prev), _majority(cur, p_cur)
    common_ids = a.index.intersection(b.index)
    return float((a[common_ids] != b[common_ids]).mean()) if len(common_ids) else 0.0


def new_kind(
    labels: dict[int, pd.Series], pers: pd.DataFrame, kind: str, shift: int, last: int
) -> dict[str, Any]:
    """Who holds the new kind of customer: a new id or an existing one; first day it is new."""
    before = set(labels[shift - 1].unique())
    first_day = None
    holder, new, share = None, False, 0.0
    for d in range(shift, last + 1):
        lab = labels[d]
        mine = lab[pers[d].reindex(lab.index).eq(kind).to_numpy()]
        if mine.empty:
            continue
        holder = mine.value_counts().index[0]
        share = float((mine == holder).mean())
        purity = float((pers[d].reindex(lab.index)[lab == holder] == kind).mean())
        new = holder not in before
        if first_day is None and new and purity > 0.5:
            first_day = d
    return {
        "holder": str(holder),
        "new_id": new,
        "share_in_holder": share,
        "own_new_day": first_day,
    }


def detection(
    scenario: str,
    transitions: dict[int, list[dict[str, Any]]],
    labels: dict[int, pd.Series],
    pers: pd.DataFrame,
    shift: int,
) -> dict[str, Any]:
    """First transition matching the injected shift, and the transitions before it (alarms)."""
    ref, p0 = labels[shift - 1], pers[shift - 1]

    def holder(persona: str) -> str:
        return str(ref[p0.reindex(ref.index).eq(persona).to_numpy()].value_counts().index[0])

    def majority(d: int, sid: str) -> str:
        lab = labels[d]
        top = pers[d].reindex(lab.index)[lab == sid].value_counts()
        return str(top.index[0]) if len(top) else ""

    targets = {
        "promo": ({"drifted"}, [holder("bargain_hunter")], "bargain_hunter"),
        "churn": ({"drifted", "retired"}, [holder("loyal_high_spender")], None),
        "emerging": (set(), [], "emerging_gift_buyer"),
        "merge": ({"merged"}, [holder("browser"), holder("refunder")], None),
        "split": (set(), [], "bargain_hunter_premium"),
    }
    kinds, segs, born_kind = targets[scenario]
    alarms: dict[str, int] = {}
    for d in sorted(transitions):
        for t in transitions[d]:
            on_target = t["type"] in kinds and any(s in segs for s in t["segments"])
            new_seg = t["segments"][-1]
            born = (
                born_kind is not None
                and t["type"] in ("born", "split")
                and majority(d, new_seg) == born_kind
            )
            if d >= shift and (on_target or born):
                return {"delay": d - shift, "transition": t["type"], "segments": t["segments"],
                        "false_alarms": alarms}  # fmt: skip
            if d < shift:
                alarms[t["type"]] = alarms.get(t["type"], 0) + 1
    return {"delay": None, "transition": None, "segments": [], "false_alarms": alarms}


# ---------------------------------------------------------------------------------- replay
def _features(engine: Any, scaler: FeatureScaler, affinity: Any) -> tuple[np.ndarray, pd.Index]:
    with engine.connect() as conn:
        table = build_features(conn, affinity_model=affinity)
    return scaler.transform(table.frame), pd.Index(table.external_ids.to_numpy(), name="user_id")


def run_scenario(name: str, args: Any, url: str, tmp: Path) -> dict[str, Any]:
    sim = simulate(args.users, args.days, args.seed, [f"{name}@{args.shift}"],
                   target_events=args.users * args.events)  # fmt: skip
    ev = sim.events
    day = ((ev["timestamp"] - START).dt.days).to_numpy()
    pers, changed = regimes(sim, args.days, name, args.shift)
    engine = api.connect(url)
    ev[day < args.warmup].to_parquet(tmp / "warm.parquet")
    api.ingest(engine, [tmp / "warm.parquet"])
    t = time.perf_counter()
    res = api.segment(engine, k=args.k, seed=args.seed)
    warm_refit = time.perf_counter() - t
    with engine.connect() as conn:
        table = build_features(conn, random_state=args.seed)
    scaler, affinity = FeatureScaler().fit(table.frame), table.affinity_model
    X, users = _features(engine, scaler, affinity)
    models = baselines(res.k, args.seed)
    w = args.warmup - 1
    labels: dict[str, dict[int, pd.Series]] = {m: {} for m in METHODS}
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    labels["shoal"][w] = api.assignments(engine).set_index("user_id")["segment_id"].astype(str)
    for m, model in models.items():
        labels[m][w] = pd.Series(model.start(X).astype(str), index=users)
    transitions: dict[int, list[dict[str, Any]]] = {}
    for d in range(args.warmup, args.days):
        ev[day == d].to_parquet(tmp / f"d{d}.parquet")
        api.ingest(engine, [tmp / f"d{d}.parquet"])
        t = time.perf_counter()
        upd = run_update(engine)
        seconds["shoal"].append(time.perf_counter() - t)
        transitions[d] = upd.transitions if upd is not None else []
        frame = api.assignments(engine)
        labels["shoal"][d] = frame.set_index("user_id")["segment_id"].astype(str)
        X, users = _features(engine, scaler, affinity)
        touched = users.isin(ev.loc[day == d, "user_id"].astype(str).unique())
        for m, model in models.items():
            t = time.perf_counter()
            labels[m][d] = pd.Series(model.step(X, touched).astype(str), index=users)
            seconds[m].append(time.perf_counter() - t)
        common.log(f"{name} day {d}: shoal {seconds['shoal'][-1]:.2f}s, "
                   f"{len(transitions[d])} transitions")  # fmt: skip
    t = time.perf_counter()
    api.segment(engine, k=str(res.k), seed=args.seed)  # a full refit on the same (final) store
    refit = time.perf_counter() - t
    engine.dispose()
    out: dict[str, Any] = {"scenario": name, "k": res.k, "warm_refit_s": warm_refit,
                           "refit_s": refit, "events": len(ev), "methods": {}}  # fmt: skip
    for m in METHODS:
        daily = [day_metrics(labels[m], pers, changed, d) for d in range(args.warmup, args.days)]
        after = [r for r in daily if r["day"] >= args.shift + 3]
        row: dict[str, Any] = {
            "ari_after": float(np.mean([r["ari"] for r in after])),
            "ari_min_after": float(np.min([r["ari"] for r in after])),
            "spurious_mean": float(np.mean([r["spurious"] for r in daily])),
            "spurious_max": float(np.max([r["spurious"] for r in daily])),
            "id_change": float(np.mean([r["id_change"] for r in daily])),
            "seconds": float(np.mean(seconds[m])),
            "seconds_max": float(np.max(seconds[m])),
            "daily": daily,
        }
        if name in NEW_KIND:
            row["new_kind"] = new_kind(labels[m], pers, NEW_KIND[name], args.shift, args.days - 1)
        if m in models and isinstance(models[m], RiverClusterer):
            row["predict_one_mismatch"] = models[m].mismatch
        out["methods"][m] = row
    out["detection"] = detection(name, transitions, labels["shoal"], pers, args.shift)
    out["transitions"] = {
        d: [(t["type"], t["segments"]) for t in ts] for d, ts in transitions.items() if ts
    }
    return out


# ---------------------------------------------------------------------------------- scale
def run_scale(args: Any, url: str, tmp: Path) -> dict[str, Any]:
    """--scale-users users; one daily update touching about 1% of them against a full refit."""
    sim = simulate(args.scale_users, 14, args.seed, target_events=args.scale_users * 6)
    ev = sim.events
    day = ((ev["timestamp"] - START).dt.days).to_numpy()
    ev[day < 13].to_parquet(tmp / "warm.parquet")
    last = ev[day == 13]
    users = last["user_id"].astype(str).unique()
    rng = np.random.default_rng(args.seed)
    n_store = ev.loc[day < 13, "user_id"].nunique()
    pick = rng.choice(users, min(len(users), n_store // 100), replace=False)
    last[last["user_id"].astype(str).isin(pick)].to_parquet(tmp / "day.parquet")
    engine = api.connect(url)
    out: dict[str, Any] = {"users_in_store": int(n_store), "touched": int(len(pick))}
    t = time.perf_counter()
    api.ingest(engine, [tmp / "warm.parquet"])
    out["ingest_s"] = time.perf_counter() - t
    t = time.perf_counter()
    res = api.segment(engine, k=args.k, seed=args.seed)
    out["first_refit_s"], out["k"] = time.perf_counter() - t, res.k
    api.ingest(engine, [tmp / "day.parquet"])
    probe = common.Probe()
    common.install_probes(probe, UPDATE_PROBES)
    t = time.perf_counter()
    upd = run_update(engine)
    out["update_s"] = time.perf_counter() - t
    probe.restore()
    out["breakdown"] = probe.rows(0.01)
    out["update"] = {k: v for k, v in (upd.to_dict() if upd else {}).items() if k != "quality"}
    t = time.perf_counter()
    api.segment(engine, k=str(res.k), seed=args.seed)
    out["refit_s"] = time.perf_counter() - t
    out["ratio"] = out["update_s"] / out["refit_s"]
    engine.dispose()
    return out


UPDATE_PROBES = [
    ("automation.segments.update", "_update", "_update"),
    ("automation.segments.update", "build_features", "build_features (touched)"),
    ("automation.segments.update", "load_snapshot", "load_snapshot"),
    ("automation.segments.update", "resolve", "resolve memberships"),
    ("automation.segments.update", "apply_structure", "apply_structure"),
    ("automation.segments.update", "_record", "_record"),
    ("automation.segments.update", "segment_profiles", "segment_profiles"),
    ("automation.segments.update", "save_segmentation", "save_segmentation"),
    ("automation.segments.update", "write_migrations", "write_migrations"),
    ("automation.segments.update", "write_outbox", "write_outbox"),
    ("automation.segments.update", "save_snapshot", "save_snapshot"),
    ("automation.segments.update", "cluster_metrics", "cluster_metrics"),
]


# ---------------------------------------------------------------------------------- report
def _f(v: Any, pct: bool = False) -> Any:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else v


def print_scenario(r: dict[str, Any], args: Any) -> None:
    det = r["detection"]
    print(f"\n== {r['scenario']}@{args.shift}  k={r['k']}  events={r['events']:,}  "
          f"refit {r['refit_s']:.2f}s (final store)")  # fmt: skip
    alarms = ", ".join(f"{k} {v}" for k, v in det["false_alarms"].items()) or "none"
    print(f"detection: {det['transition'] or 'NOT DETECTED'} {det['segments']} "
          f"delay {_f(det['delay'])} d; before the shift: {alarms}")  # fmt: skip
    head = ["method", f"ARI d>={args.shift + 3}", "min", "spurious mean", "max", "id change",
            "s/update", "max s", "new kind -> new id"]  # fmt: skip
    rows = []
    for m, v in r["methods"].items():
        nk = v.get("new_kind")
        nk_s = (
            "-"
            if nk is None
            else f"{'yes' if nk['new_id'] else 'no'} ({nk['share_in_holder']:.0%}, day {_f(nk['own_new_day'])})"
        )
        rows.append([m, v["ari_after"], v["ari_min_after"], _f(v["spurious_mean"], True),
                     _f(v["spurious_max"], True), _f(v["id_change"], True), v["seconds"],
                     v["seconds_max"], nk_s])  # fmt: skip
    common.print_table(head, rows)
    days = [d["day"] for d in r["methods"]["shoal"]["daily"]]
    print("\nARI per day (d: " + " ".join(str(d) for d in days) + ")")
    for m, v in r["methods"].items():
        print(f"  {m:13s}" + " ".join(f"{d['ari']:.3f}"[1:] for d in v["daily"]))
    print("spurious % per day")
    for m, v in r["methods"].items():
        print(f"  {m:13s}" + " ".join(f"{100 * d['spurious']:4.1f}" for d in v["daily"]))
    tr = "; ".join(f"{d}: " + ", ".join(f"{t} {'/'.join(s)}" for t, s in ts)
                   for d, ts in r["transitions"].items())  # fmt: skip
    print(f"transitions: {tr or 'none'}")


def print_summary(results: list[dict[str, Any]], args: Any) -> None:
    print("\n== summary (Shoal; best baseline by ARI)")
    head = ["scenario", "detected", "delay d", "alarms", "ARI", "best base", "ARI base",
            "spurious", "min base sp", "id change", "min base id", "new id", "s/upd", "refit s"]  # fmt: skip
    rows = []
    for r in results:
        ms = r["methods"]
        s = ms["shoal"]
        base = {m: v for m, v in ms.items() if m != "shoal"}
        best = max(base, key=lambda m: base[m]["ari_after"])
        nk = s.get("new_kind")
        rows.append([
            r["scenario"], r["detection"]["transition"] or "no", _f(r["detection"]["delay"]),
            sum(r["detection"]["false_alarms"].values()), s["ari_after"], best,
            base[best]["ari_after"], _f(s["spurious_mean"], True),
            _f(min(v["spurious_mean"] for v in base.values()), True), _f(s["id_change"], True),
            _f(min(v["id_change"] for v in base.values()), True),
            "-" if nk is None else ("yes" if nk["new_id"] else "no"), s["seconds"], r["refit_s"],
        ])  # fmt: skip
    common.print_table(head, rows)


def print_scale(s: dict[str, Any]) -> None:
    print(f"\n== scale: {s['users_in_store']:,} users in the store, k={s['k']}, "
          f"update touching {s['touched']:,} users ({s['touched'] / s['users_in_store']:.1%})")  # fmt: skip
    common.print_table(
        ["step", "seconds"],
        [["ingest (13 days)", s["ingest_s"]], ["first refit", s["first_refit_s"]],
         ["update (1 day, ~1% touched)", s["update_s"]], ["full refit (same k)", s["refit_s"]],
         ["update / refit", s["ratio"]]],
    )  # fmt: skip
    common.print_breakdown("update breakdown", s["breakdown"], s["update_s"])


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift", type=int, default=35)
    p.add_argument("--warmup", type=int, default=28)
    p.add_argument("--events", type=int, default=50, help="events per user over the run")
    p.add_argument("--k", default="5", help="K of the warm-up refit (auto or a number)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS)
    p.add_argument("--scale", action="store_true", help="the 1M-user update against a refit")
    p.add_argument("--scale-users", type=int, default=1_000_000)
    args = p.parse_args()
    common.pin_threads()
    pg = common.pg_url_arg(args.pg) if args.scale else None
    results: list[dict[str, Any]] = []
    payload: dict[str, Any] = {"machine": common.machine_info(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="shoal-dyn-") as tmp:
        if args.scale:
            if pg:
                with common.pg_schema(pg, "dyn") as (_, url):
                    payload["scale"] = run_scale(args, url, Path(tmp))
            else:
                payload["scale"] = run_scale(args, f"sqlite:///{Path(tmp) / 'scale.db'}", Path(tmp))
            payload["scale"]["database"] = "postgresql" if pg else "sqlite"
        else:
            for name in args.scenario or SCENARIOS:
                sub = Path(tmp) / name
                sub.mkdir()
                results.append(run_scenario(name, args, f"sqlite:///{sub / 'store.db'}", sub))
    payload["scenarios"] = results
    if args.json:
        common.dump_json(payload)
        return
    common.print_machine(payload["machine"])
    for r in results:
        print_scenario(r, args)
    if results:
        print_summary(results, args)
    if "scale" in payload:
        print_scale(payload["scale"])


if __name__ == "__main__":
    main()
