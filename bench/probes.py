"""Per-call-path timing of Shoal's batch-level functions, for the benchmarks' breakdowns.

:class:`Probe` wraps selected functions (never per-row ones) and, optionally, every SQL
statement; :func:`install_probes` wraps those of a spec that exist in this version of the code;
``INGEST_PROBES`` and ``SEGMENT_PROBES`` are the specs of the ingest and segmentation stages.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from common import log, print_table


class Probe:
    """Inclusive wall time per call path of selected functions, for a stage breakdown.

    ``wrap(owner, "name")`` replaces ``owner.name`` (a module global or a class attribute) with a
    timing wrapper; generator functions are timed per ``next``. Keys are call paths
    (``"load_batch > write_frame"``) so nested calls are told apart. With ``sql=True`` every
    statement sent through SQLAlchemy is timed too, under its first words. ``restore()`` undoes
    everything. The overhead is a few microseconds per call: only batch-level functions are
    wrapped, never per-row ones.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.samples: dict[str, list[float]] = {}
        self._patched: list[tuple[Any, str, Any]] = []
        self._sql_listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self.active = False

    @property
    def stack(self) -> list[str]:
        """The call path of the current thread (the ingest prepares blocks in a helper thread)."""
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack  # type: ignore[no-any-return]

    def _add(self, key: str, dt: float) -> None:
        with self._lock:
            self._add_locked(key, dt)

    def _add_locked(self, key: str, dt: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + dt
        self.calls[key] = self.calls.get(key, 0) + 1
        self.samples.setdefault(key, []).append(dt)

    def _enter(self, label: str) -> tuple[str, float]:
        self.stack.append(label)
        return " > ".join(self.stack), time.perf_counter()

    def _exit(self, key: str, t: float) -> None:
        self._add(key, time.perf_counter() - t)
        self.stack.pop()

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        func = original.__func__ if isinstance(original, staticmethod | classmethod) else original
        label = label or name
        probe = self

        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                it = func(*args, **kwargs)
                while True:
                    key, t = probe._enter(label)
                    try:
                        item = next(it)
                    except StopIteration:
                        probe._exit(key, t)
                        return
                    probe._exit(key, t)
                    yield item

            wrapper: Any = gen_wrapper
        else:

            @functools.wraps(func)
            def call_wrapper(*args: Any, **kwargs: Any) -> Any:
                key, t = probe._enter(label)
                try:
                    return func(*args, **kwargs)
                finally:
                    probe._exit(key, t)

            wrapper = call_wrapper
        if isinstance(original, staticmethod):
            wrapper = staticmethod(wrapper)
        elif isinstance(original, classmethod):
            wrapper = classmethod(wrapper)
        self._patched.append((owner, name, original))
        setattr(owner, name, wrapper)

    def wrap_generator_source(self, owner: Any, name: str, label: str) -> None:
        """Wrap a function that *returns* an iterator: time each ``next`` of what it returns."""
        original = getattr(owner, name)
        probe = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            it = iter(original(*args, **kwargs))

            def timed() -> Iterator[Any]:
                while True:
                    key, t = probe._enter(label)
                    try:
                        item = next(it)
                    except StopIteration:
                        probe._exit(key, t)
                        return
                    probe._exit(key, t)
                    yield item

            return timed()

        self._patched.append((owner, name, original))
        setattr(owner, name, wrapper)

    def watch_sql(self) -> None:
        from sqlalchemy import Engine, event

        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            words = " ".join(statement.split()[:3])
            conn.info.setdefault("_probe", []).append(self._enter(f"sql: {words}"))

        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            pending = conn.info.get("_probe")
            if pending:
                key, t = pending.pop()
                self._exit(key, t)

        for name, fn in (("before_cursor_execute", before), ("after_cursor_execute", after)):
            event.listen(Engine, name, fn)
            self._sql_listeners.append((Engine, name, fn))

    def restore(self) -> None:
        from sqlalchemy import event

        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()
        for target, name, fn in self._sql_listeners:
            event.remove(target, name, fn)
        self._sql_listeners.clear()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.samples.clear()
        self.stack.clear()

    def _trend(self, key: str) -> dict[str, float]:
        """Mean seconds per call over the first and the last quarter of the calls (the final
        call left out: the last block of a file is usually a short remainder)."""
        xs = self.samples.get(key, [])
        if len(xs) < 8:
            return {}
        q = len(xs) // 4
        late = xs[-q - 1 : -1]
        return {"early_mean": sum(xs[:q]) / q, "late_mean": sum(late) / len(late)}

    def rows(self, min_seconds: float = 0.0) -> list[dict[str, Any]]:
        """Breakdown rows in call-path order (parents before their children), with self time
        (inclusive time less the inclusive time of the direct children)."""
        order = {k: i for i, k in enumerate(self.seconds)}  # first-seen order
        child_sum: dict[str, float] = {}
        for k, v in self.seconds.items():
            if " > " in k:
                parent = k.rsplit(" > ", 1)[0]
                child_sum[parent] = child_sum.get(parent, 0.0) + v

        def sort_key(k: str) -> list[int]:
            parts = k.split(" > ")
            return [order.get(" > ".join(parts[: i + 1]), 0) for i in range(len(parts))]

        keys = sorted(self.seconds, key=sort_key)
        keys = [k for k in keys if self.seconds[k] >= min_seconds]
        return [
            {
                "path": k,
                "seconds": round(self.seconds[k], 4),
                "self": round(self.seconds[k] - child_sum.get(k, 0.0), 4),
                "calls": self.calls[k],
                **self._trend(k),
            }
            for k in keys
        ]


def print_breakdown(title: str, rows: list[dict[str, Any]], total: float, out: Any = None) -> None:
    """The probe's rows as an indented table; early/late: mean seconds per call over the first
    and the last quarter of the calls (8 calls or more; the final call left out)."""
    out = out or sys.stdout
    print(f"\n{title}", file=out)
    table = []
    for r in rows:
        depth = r["path"].count(" > ")
        leaf = r["path"].split(" > ")[-1]
        share = f"{100 * r['seconds'] / total:5.1f}%" if total > 0 else ""
        first = f"{r['early_mean']:.3f}" if "early_mean" in r else ""
        last = f"{r['late_mean']:.3f}" if "late_mean" in r else ""
        table.append(
            [
                "  " * depth + leaf,
                f"{r['seconds']:.3f}",
                share,
                f"{r['self']:.3f}",
                str(r["calls"]),
                first,
                last,
            ]
        )
    print_table(
        ["call path", "inclusive s", "of total", "self s", "calls", "early s/call", "late s/call"],
        table,
        out=out,
    )


# (module, attribute, label); a class attribute is given as "module:Class.attr".
INGEST_PROBES = [
    ("automation.ingest.run", "prepare_block", "prepare_block (helper thread)"),
    ("automation.ingest.run", "commit_block", "commit_block"),
    ("automation.ingest.run", "prepare_batch", "prepare_batch"),
    ("automation.ingest.mapping:ColumnPlan.apply", None, "map columns"),
    ("automation.ingest.run", "validate", "validate"),
    ("automation.ingest.run", "_raw_text", "quarantine raw text"),
    ("automation.ingest.run", "load_batch", "load_batch"),
    ("automation.ingest.run", "store_quarantine", "store_quarantine"),
    ("automation.ingest.load", "event_ids", "event_ids"),
    ("automation.ingest.keys", "upsert_keys", "upsert_keys"),
    ("automation.ingest.keys:KeyMap.keys", None, "key lookup"),
    ("automation.ingest.keys", "create_temp_like", "create temp"),
    ("automation.ingest.keys", "write_frame", "write_frame (COPY/executemany)"),
    ("automation.ingest.keys", "read_frame", "read_frame"),
    ("automation.ingest.keys", "insert_new", "insert_new (users COPY)"),
    ("automation.ingest.keys", "copy_binary", "binary COPY send"),
    ("automation.features.partials:Window.add", None, "window add"),
    ("automation.features.partials:Window.flush", None, "window flush"),
    ("automation.features.partials", "copy_binary", "partials COPY send"),
    ("automation.ingest.load", "create_temp_like", "create temp"),
    ("automation.ingest.load", "write_frame", "write_frame (COPY/executemany)"),
    ("automation.ingest.load", "encode", "binary COPY encode"),
    ("automation.ingest.load", "copy_binary", "binary COPY send"),
    ("automation.ingest.load", "read_frame", "read_frame"),
    ("automation.ingest.load", "fold_into_aggregates", "fold_into_aggregates"),
]
SEGMENT_PROBES = [
    ("automation.segments.pipeline", "last_finished_batch", "last_finished_batch"),
    ("automation.segments.pipeline", "build_features", "build_features"),
    ("automation.features.build", "latest_event_time", "latest_event_time"),
    ("automation.features.build", "read_frame", "read_frame"),
    ("automation.features.build", "_compose", "compose"),
    ("automation.features.build", "fit_affinity", "fit_affinity"),
    ("automation.features.affinity", "_category_weights", "category weights (SQL)"),
    ("automation.features.affinity", "_category_frame", "category frame (pandas)"),
    ("automation.features.affinity", "_purchases", "purchases (SQL)"),
    ("automation.features.scaling:FeatureScaler.fit", None, "scaler.fit"),
    ("automation.features.scaling:FeatureScaler.transform", None, "scaler.transform"),
    ("automation.segments.pipeline", "select_k", "select_k"),
    ("automation.segments.select_k", "cluster_metrics", "cluster_metrics"),
    ("automation.segments.select_k", "silhouette_many", "silhouette_many"),
    ("automation.segments.select_k", "stability_ari", "stability_ari"),
    ("automation.segments.base:BaseSegmenter.fit", None, "segmenter.fit"),
    ("automation.segments.base:BaseSegmenter._fit_outliers", None, "outliers"),
    ("automation.segments.kmeans:KMeansSegmenter._fit_rows", None, "KMeans"),
    ("automation.segments.base:BaseSegmenter._assign", None, "assign"),
    ("automation.segments.base:BaseSegmenter.predict", None, "predict"),
    ("automation.segments.pipeline", "stability_ari", "stability_ari"),
    ("automation.segments.pipeline", "quality_report", "quality_report"),
    ("automation.segments.quality", "cluster_metrics", "cluster_metrics"),
    ("automation.segments.quality", "silhouette_many", "silhouette_many"),
    ("automation.segments.quality", "segment_profiles", "segment_profiles"),
    ("automation.segments.pipeline", "segment_profiles", "segment_profiles"),
    ("automation.segments.pipeline", "name_segments", "name_segments"),
    ("automation.segments.pipeline", "record_refit", "record_refit"),
    ("automation.segments.refit", "resolve", "resolve previous"),
    ("automation.segments.refit", "match_refit", "match_refit"),
    ("automation.segments.refit", "save_segmentation", "save_segmentation"),
    ("automation.store.segmentations", "write_frame", "write_frame (memberships)"),
    ("automation.segments.refit", "_moves", "moves"),
    ("automation.segments.refit", "write_migrations", "write_migrations"),
    ("automation.segments.refit", "write_outbox", "write_outbox"),
    ("automation.segments.refit", "write_transitions", "write_transitions"),
    ("automation.segments.refit", "bimodality", "bimodality"),
    ("automation.segments.dynamic:DynamicSegmenter.init_from_partition", None, "dynamic init"),
    ("automation.segments.refit", "save_state", "save_state"),
    ("automation.segments.refit", "save_snapshot", "save_snapshot"),
    ("automation.store.history", "write_frame", "write_frame"),
    # older layout of the pipeline (kept so the bench also runs on earlier commits)
    ("automation.segments.pipeline", "previous_members", "previous_members"),
    ("automation.segments.pipeline", "match_segments", "match_segments"),
    ("automation.segments.pipeline", "save_segmentation", "save_segmentation"),
]


def install_probes(probe: Probe, spec: list[tuple[str, str | None, str]]) -> None:
    """Wrap each function of ``spec`` that exists (the code moves; missing ones are skipped)."""
    import importlib

    missing: list[str] = []
    for target, attr, label in spec:
        try:
            if ":" in target:
                mod_name, qual = target.split(":")
                cls_name, attr_name = qual.split(".")
                owner = getattr(importlib.import_module(mod_name), cls_name)
                if attr_name not in owner.__dict__:
                    raise AttributeError(attr_name)
                probe.wrap(owner, attr_name, label)
            else:
                assert attr is not None
                module = importlib.import_module(target)
                if not hasattr(module, attr):
                    raise AttributeError(attr)
                probe.wrap(module, attr, label)
        except (ImportError, AttributeError):
            missing.append(f"{target}.{attr}" if attr else target)
    if missing:
        log(f"probe: not in this version of the code, not timed: {', '.join(missing)}")
