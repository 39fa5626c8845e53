"""``shoal segment``: features as of a time -> scaled matrix -> K -> segments -> named, stored.

The estimators know nothing of the store; this module is the one place that joins them: it reads
features, fits, scores, names, matches ids to the previous version and saves the version with
every membership in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from automation.errors import ValidationError
from automation.features.build import FeatureTable, build_features
from automation.features.scaling import FeatureScaler
from automation.segments.naming import name_segments, segment_profiles
from automation.segments.quality import quality_report, stability_ari
from automation.segments.refit import last_finished_batch, record_refit, stored_result
from automation.segments.registry import METHODS, make_segmenter
from automation.segments.result import SegmentationResult, clean, parse_k
from automation.segments.select_k import select_k
from automation.store.locks import acquire_lock, already_done

Progress = Callable[[str], None]
K_RANGE = range(2, 11)
STABILITY_SAMPLE = 10_000
LARGE = 100_000


def run_segmentation(
    engine: Engine,
    method: str = "kmeans",
    k: str | int = "auto",
    as_of: datetime | pd.Timestamp | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    task_key: str | None = None,
) -> SegmentationResult:
    """Segment every user as of ``as_of`` and store the result as a new version (a refit).

    A refit at the newest event time joins the live lineage: its clusters are matched to the
    current segments (:func:`automation.segments.lineage.match_refit`), users who moved are
    recorded as migrations with outbox events, and the dynamic state restarts from it. A refit
    ``as_of`` an earlier time is stored as a version for time travel and analysis only.
    ``task_key`` makes the call idempotent: a key that already completed returns its result.
    """
    if method not in METHODS:
        raise ValidationError(f"method={method!r} should be one of {', '.join(METHODS)}")
    n_fixed = parse_k(k)
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with engine.connect() as conn:
        watermark = last_finished_batch(conn)
        table: FeatureTable = build_features(conn, as_of, random_state=seed)
    timings["features"] = time.perf_counter() - t0
    raw = table.frame
    n_users = len(raw)
    if n_fixed is not None and n_users < n_fixed:
        raise ValidationError(f"n_users={n_users} should be >= n_segments={n_fixed}")
    if n_users < 3:
        raise ValidationError(f"n_users={n_users} should be >= 3 to form segments")
    scaler = FeatureScaler().fit(raw)
    X = scaler.transform(raw)
    say(f"features: {n_users} users x {X.shape[1]} features")

    t1 = time.perf_counter()
    selection = None
    if n_fixed is None and method != "hdbscan":
        say("choosing K")
        sel = select_k(X, method=method, k_range=K_RANGE, random_state=seed)
        chosen = sel.best_k
        selection = {
            "best_k": sel.best_k,
            "reason": sel.reason,
            "table": clean(sel.table.to_dict("records")),
        }
    else:
        chosen = n_fixed if n_fixed is not None else 0
    timings["select_k"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    # k-means++ with one initialisation is as good as several on large data, at a quarter of the cost.
    fit_params = {"n_init": 1} if method == "kmeans" and len(X) > LARGE else {}
    model = make_segmenter(method, chosen or None, random_state=seed, **fit_params).fit(X)
    labels = model.labels_
    timings["fit"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    if selection is not None:
        row = next(r for r in selection["table"] if r["k"] == chosen)
        stab = row.get("stability_ari")
    else:
        # Bounded like select_k's: bootstrap refits on a seeded sample of at most 10,000 rows.
        rng = np.random.default_rng(seed)
        sample = (
            X
            if len(X) <= STABILITY_SAMPLE
            else X[rng.choice(len(X), STABILITY_SAMPLE, replace=False)]
        )
        stab = stability_ari(
            lambda: make_segmenter(method, chosen or None, random_state=seed, **fit_params),
            sample,
            n_bootstrap=5,
            random_state=seed,
        )
    report = quality_report(
        X,
        labels,
        model.cluster_centers_,
        scaler.features_,
        None,
        random_state=seed,
        stability_ari=stab,
    )
    profiles = segment_profiles(raw, labels)  # medians once, for the report and the names
    for label, entry in report["segments"].items():
        if label in profiles.index:
            entry["profile"] = clean({str(k): float(v) for k, v in profiles.loc[label].items()})
    outlier_share = pd.Series(model.outliers_).groupby(labels).mean().to_dict()
    rule_names = name_segments(profiles, raw, outlier_share=outlier_share)
    timings["quality"] = time.perf_counter() - t3
    overall = clean(report["overall"])

    t4 = time.perf_counter()
    with engine.begin() as conn:
        acquire_lock(conn, "segmentation", holder=task_key or "refit")
        if task_key is not None and already_done(conn, task_key) is not None:
            conn.rollback()
            return stored_result(engine, task_key)
        refit = record_refit(
            conn,
            table,
            scaler,
            X,
            labels,
            model.outliers_,
            rule_names,
            report,
            overall,
            selection,
            method,
            seed,
            model,
            task_key,
            watermark,
        )
    timings["store"] = time.perf_counter() - t4
    segs = refit.segments
    version_id = refit.version_id
    members = refit.members
    return SegmentationResult(
        version=version_id,
        method=method,
        k=len([x for x in segs if x.label >= 0]),
        as_of=table.as_of,
        n_users=n_users,
        quality=overall,
        segments=segs,
        k_selection=selection,
        features=scaler.features_,
        constant_features=scaler.constant_,
        timings=timings,
        members=raw.assign(segment_id=members["segment_id"].to_numpy()),
    )
