"""``shoal evaluate``: every model on a time split, tuned on a validation window before it.

1. Events before ``split_at`` train, with segments as of that date (fitted in memory, nothing is
   stored); the test is every purchase from ``split_at`` on by users with history before it.
2. The validation window is the ``val_days`` before the split (default: as long as the test
   window, between 14 and 90 days): each model's parameters are chosen there
   (:mod:`automation.recommend.tuning`), with segments as of the validation split. The test window
   is never looked at until each model's parameters are fixed.
3. Each model is refitted on everything before the split with its chosen parameters and scored
   under both protocols (:mod:`automation.recommend.splits`): recall, NDCG, MAP and hit rate at K,
   catalogue coverage and novelty, for all users, cold users (at most two orders before the
   split) and per segment.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from automation.errors import EmptyStoreError, ValidationError
from automation.recommend.base import Recommender, Rules
from automation.recommend.metrics import coverage, novelty, ranking_metrics
from automation.recommend.registry import MODELS, make_recommender
from automation.recommend.splits import PROTOCOLS, SplitData, make_split
from automation.recommend.store import read_events, read_items, segments_as_of
from automation.recommend.tuning import Tuned, tune

DEFAULT_MODELS = ("popularity", "segment-popularity", "item-knn", "als", "hybrid")
Progress = Callable[[str], None]
TINY = pd.Timedelta(microseconds=1)


@dataclass
class EvaluationReport:
    """Everything ``shoal evaluate --json`` prints."""

    split_at: pd.Timestamp
    k: int
    results: list[dict[str, Any]]
    by_segment: list[dict[str, Any]]
    tuned: list[Tuned]
    validation: dict[str, Any]
    segments: dict[str, Any]
    seconds: float = 0.0
    fitted: dict[str, Recommender] = field(default_factory=dict, repr=False)
    test_split: SplitData | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``shoal evaluate --json`` prints."""
        return {
            "split_at": self.split_at.isoformat(),
            "k": self.k,
            "results": self.results,
            "by_segment": self.by_segment,
            "validation": self.validation,
            "tuned": [
                {
                    "model": t.model,
                    "protocol": t.protocol,
                    "params": t.params,
                    "objective": round(t.objective, 6),
                    "tried": t.tried,
                }
                for t in self.tuned
            ],
            "segments": self.segments,
            "seconds": round(self.seconds, 1),
        }

    def row(self, model: str, protocol: str, users: str) -> dict[str, Any]:
        """The result row of one model, protocol and user group."""
        for r in self.results:
            if (r["model"], r["protocol"], r["users"]) == (model, protocol, users):
                return r
        raise KeyError((model, protocol, users))


def parse_time(value: datetime | str | pd.Timestamp, name: str = "split_at") -> pd.Timestamp:
    """A time in UTC (a bare date is the start of that day)."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValidationError(f"{name}={value!r} should be a date or an ISO 8601 time") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def evaluate(
    engine: Engine,
    split_at: datetime | str | pd.Timestamp,
    k: int = 10,
    models: Sequence[str] = DEFAULT_MODELS,
    val_days: float | None = None,
    segment_k: str | int = "auto",
    seed: int = 0,
    rules: Rules | None = None,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Tune every model on the validation window, then score it on the test window."""
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    if k < 1:
        raise ValidationError(f"k={k} should be >= 1")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValidationError(f"model={unknown[0]!r} should be one of {sorted(MODELS)}")
    at = parse_time(split_at)
    with engine.connect() as conn:
        events = read_events(conn)
        items = read_items(conn)
    if events.empty:
        raise EmptyStoreError("the store has no item events: run `shoal ingest FILE` first")
    times = pd.to_datetime(events["timestamp"], utc=True, format="ISO8601")
    first, last = times.min(), times.max()
    if not first < at <= last:
        raise ValidationError(
            f"split_at={at.isoformat()} should lie between the first ({first.isoformat()}) and "
            f"the newest event ({last.isoformat()})"
        )
    test_days = (last - at).total_seconds() / 86_400.0
    days = float(val_days) if val_days is not None else float(np.clip(np.ceil(test_days), 14, 90))
    if days <= 0:
        raise ValidationError(f"val_days={val_days} should be > 0")
    val_at = at - pd.Timedelta(days=days)
    if val_at <= first:
        raise ValidationError(
            f"val_days={days:g}: the validation split {val_at.isoformat()} is before the first "
            "event; choose a later split_at or fewer val_days"
        )
    rules = rules or Rules()
    say(f"segments as of {val_at.date()} and {at.date()}")
    seg_val = segments_as_of(engine, val_at - TINY, segment_k, seed)
    seg_test = segments_as_of(engine, at - TINY, segment_k, seed)
    val = make_split(events, items, val_at, seg_val, end=at)
    test = make_split(events, items, at, seg_test)
    results: list[dict[str, Any]] = []
    by_segment: list[dict[str, Any]] = []
    tuned_all: list[Tuned] = []
    fitted: dict[str, Recommender] = {}
    als_tuned: dict[str, Tuned] | None = None
    ordered = sorted(models, key=lambda m: m == "hybrid")  # the hybrid reuses ALS's settings
    for name in ordered:
        say(f"tuning {name} on the validation window")
        tuned = tune(name, val, k, rules, seed, say, als_tuned)
        if name == "als":
            als_tuned = tuned
        cache: dict[str, Recommender] = {}
        for proto in PROTOCOLS:
            chosen = tuned[proto]
            tuned_all.append(chosen)
            key = json.dumps(chosen.params, sort_keys=True, default=str)
            if key not in cache:
                say(f"fitting {name} {chosen.params} before {at.date()}")
                cache[key] = make_recommender(name, rules, seed, **chosen.params).fit(test.train)
            model = cache[key]
            fitted[f"{name}/{proto}"] = model
            rows, seg_rows = score_model(model, test, proto, k)
            results.extend(rows)
            by_segment.extend(seg_rows)
    return EvaluationReport(
        split_at=at,
        k=k,
        results=results,
        by_segment=by_segment,
        tuned=tuned_all,
        validation={
            "split_at": val_at.isoformat(),
            "end": at.isoformat(),
            "days": round(days, 2),
            "users": {p: int(len(val.protocol(p).rows)) for p in PROTOCOLS},
            "cold_users": {p: int(val.protocol(p).cold.sum()) for p in PROTOCOLS},
        },
        segments={"test": seg_test.source, "validation": seg_val.source, "names": seg_test.names},
        seconds=time.perf_counter() - t0,
        fitted=fitted,
        test_split=test,
    )


def score_model(
    model: Recommender, split: SplitData, protocol: str, k: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for all and cold users (and per segment) of a fitted model on a split's test data."""
    data = split.protocol(protocol)
    recs, _ = model.recommend_indices(data.rows, k, filter_seen=protocol == "new-items")
    scores = ranking_metrics(recs, data.truth, k)
    train = split.train
    buyers = np.asarray((train.purchases() > 0).sum(axis=0)).ravel().astype(np.float64)
    n_products = int(train.catalogue.is_product.sum())

    def summary(mask: np.ndarray) -> dict[str, Any]:
        means = scores.mean(mask)
        return {
            "n_users": int(mask.sum()),
            **{m: _round(v) for m, v in means.items()},
            "coverage": _round(coverage(recs[mask], k, n_products)),
            "novelty": _round(novelty(recs[mask], k, buyers, train.n_users)),
        }

    every = np.ones(len(data.rows), dtype=bool)
    rows = [
        {"model": model.name, "protocol": protocol, "users": group, **summary(mask)}
        for group, mask in (("all", every), ("cold", data.cold))
    ]
    names = train.segment_names
    seg_rows = [
        {
            "model": model.name,
            "protocol": protocol,
            "segment": seg,
            "segment_name": names.get(seg, seg),
            **summary(data.segments == seg),
        }
        for seg in sorted({s for s in data.segments.tolist() if s})
    ]
    return rows, seg_rows


def _round(v: float) -> float | None:
    return None if v != v else round(float(v), 6)
