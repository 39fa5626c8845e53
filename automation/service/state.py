"""What the service holds while it runs: the store, the settings, metrics, the recommender.

Opened in the app's lifespan, never at import. The recommender is fitted in the background
process (:mod:`automation.service.background`), never inside a request; requests read the
newest one. The background process holds a state of its own (its fold timers, its engine).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Engine

from automation.config import Settings
from automation.ingest.keys import KeyCache
from automation.service.commits import GroupCommit


class Metrics:
    """Prometheus metrics in a registry of this app (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "shoal_request_seconds",
            "HTTP request latency by route and status",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.events = Counter(
            "shoal_events_total",
            "Events received by the API, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.folds = Counter(
            "shoal_folds_total",
            "Background folds (updates) run by the service",
            registry=self.registry,
        )
        self.fold_errors = Counter(
            "shoal_fold_errors_total", "Background folds that failed", registry=self.registry
        )


@dataclass
class ServiceState:
    engine: Engine
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    token: str = ""
    recommender: Any = None  # (Recommender, SegmentMap, store mark) once fitted
    lock: threading.Lock = field(default_factory=threading.Lock)
    celery: Any = None  # the Celery app, made on first use when a broker is configured
    snapshot: Any = None  # lookup.Snapshot of the newest version, loaded by the folder
    last_ingest: float = 0.0  # monotonic time of the newest ingest request
    # In the background process: reads the API's ``last_ingest`` anew (a fold takes seconds;
    # the value copied before it would make a stream look quiet and set off a refit in it).
    ingest_clock: Callable[[], float] | None = None
    stale_since: float | None = None  # monotonic time the recommender fell behind the store
    refit_due: float | None = None  # monotonic time an update called for a segmentation refit
    last_fold: float = 0.0  # monotonic time of the last fold
    fold_seconds: float = 0.0  # how long the last fold took
    last_campaigns: float = 0.0  # monotonic time campaigns last ran in this process
    force_refit: threading.Event = field(default_factory=threading.Event)
    keys: KeyCache = field(default_factory=KeyCache)  # user/item keys known to this process
    channels: Any = None  # background.Channels: shared with the background process, if any
    reads: Engine = field(init=False)  # the engine in autocommit, for one-statement reads
    commits: GroupCommit = field(init=False)  # ingest requests' transactions, grouped

    def __post_init__(self) -> None:
        self.token = self.settings.api_token or secrets.token_urlsafe(24)
        # Single-statement reads in autocommit: psycopg otherwise sends BEGIN before the query
        # and the pool a ROLLBACK on return, three round trips for a lookup instead of one.
        self.reads = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.commits = GroupCommit(self.engine, self.keys)

    def ingested(self) -> None:
        """Events were stored: wake the background process (with a broker, also enqueue the
        workers' update)."""
        self.last_ingest = time.monotonic()
        if self.channels is not None:
            self.channels.ingested()
        self.enqueue_update()

    def enqueue_update(self) -> None:
        """With a broker, have a worker fold pending events (``shoal.update``); else nothing
        (the background loop folds them itself)."""
        if not self.settings.broker_url:
            return
        from automation.tasks.celery_app import make_celery
        from automation.tasks.jobs import UPDATE, enqueue

        if self.celery is None:
            self.celery = make_celery(self.settings)
        enqueue(self.celery, UPDATE, expires=60)
