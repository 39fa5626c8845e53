"""Shared helpers of the benchmark scripts: threads, timers, peak memory, stores, tables, probes.

Run the scripts with ``OMP_NUM_THREADS=1``: oversubscribed OpenMP/BLAS threads make k-means
about 50x slower on a 2-core machine. :func:`pin_threads` also limits the loaded thread pools to
one thread with threadpoolctl, and says so when the variable was not set.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PG_ENV = "SHOAL_TEST_DATABASE_URL"


# ------------------------------------------------------------------------------------ machine
_LIMITS: Any = None


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so ``finally`` blocks still drop schemas and temp dirs."""
    import signal

    def _stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)


def pin_threads() -> None:
    """One BLAS/OpenMP thread for the whole run (kept for the life of the process)."""
    global _LIMITS
    from threadpoolctl import threadpool_limits

    if os.environ.get("OMP_NUM_THREADS") != "1":
        log("OMP_NUM_THREADS is not 1: limiting thread pools to 1 with threadpoolctl")
    _LIMITS = threadpool_limits(limits=1)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size now, in MiB (Linux ``/proc/self/statm``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """Samples the current RSS in a background thread: the peak *during* a step and how far it
    rose above the RSS at the step's start (ru_maxrss only knows the process-wide peak)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval

    @contextlib.contextmanager
    def measure(self, into: dict[str, Any]) -> Iterator[None]:
        import threading

        start = current_rss_mb()
        peak = [start]
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval):
                peak[0] = max(peak[0], current_rss_mb())

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join()
            peak[0] = max(peak[0], current_rss_mb())
            into["rss_start_mb"] = start
            into["rss_step_peak_mb"] = peak[0]
            into["rss_step_rise_mb"] = peak[0] - start
            into["rss_mb"] = peak_rss_mb()


def blas_info() -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "num_threads", "version", "threading_layer", "prefix")
    return [{k: p.get(k) for k in keep} for p in threadpool_info()]


def machine_info() -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import sklearn

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "sklearn": sklearn.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "blas": blas_info(),
        "loadavg_start": list(os.getloadavg()),
        "git": git_revision(),
    }


def git_revision() -> str:
    """The checked-out commit, ``+dirty`` when the work tree has changes (the code moves)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{'+dirty' if dirty else ''}" if head else "unknown"


def print_machine(info: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    print(
        f"date {info['date']}  cpus {info['cpus']}  python {info['python']}  "
        f"numpy {info['numpy']}  pandas {info['pandas']}  sklearn {info['sklearn']}  "
        f"OMP_NUM_THREADS={info['OMP_NUM_THREADS']}  git {info.get('git')}",
        file=out,
    )
    load = info.get("loadavg_start")
    end = info.get("loadavg_end")
    if load:
        text = f"load average (1/5/15 min) at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
        if end:
            text += f", at end {end[0]:.2f}/{end[1]:.2f}/{end[2]:.2f}"
        print(text + f" on {info['cpus']} cpus (other work on the machine skews timings)", file=out)
    for b in info["blas"]:
        print(
            f"threadpool: {b['user_api']}/{b['internal_api']} {b['version']} "
            f"threads={b['num_threads']} layer={b['threading_layer']} ({b['prefix']})",
            file=out,
        )


# -------------------------------------------------------------------------------------- timing
class Stopwatch:
    """Named laps: ``with sw.lap("name"): ...``; also records peak RSS after each lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.rss: dict[str, float] = {}

    @contextlib.contextmanager
    def lap(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
            self.rss[name] = peak_rss_mb()


def log(msg: str) -> None:
    """Progress to stderr (stdout carries the tables or the JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- probe
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


# -------------------------------------------------------------------------------------- stores
def pg_url_arg(value: str | None) -> str | None:
    url = value if value is not None else os.environ.get(PG_ENV)
    return url or None


def _sqlalchemy_pg(url: str) -> str:
    from automation.config import normalise_database_url

    return normalise_database_url(url)


def with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def pg_schema(url: str, prefix: str = "bench") -> Iterator[tuple[str, str]]:
    """A fresh schema ``bench_xxx``: yields (schema, URL with search_path); dropped afterwards."""
    from sqlalchemy import create_engine, text

    base = _sqlalchemy_pg(url)
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield schema, with_search_path(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextlib.contextmanager
def sqlite_file() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


def psycopg_dsn(sqlalchemy_url: str) -> str:
    """The libpq form of a ``postgresql+psycopg://`` URL (for direct psycopg connections)."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


# -------------------------------------------------------------------------------------- output
def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--pg",
        default=None,
        help=f"PostgreSQL URL (default: ${PG_ENV}; without either the PostgreSQL part is skipped)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable results only")
    return p


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: list[str], rows: list[list[Any]], out: Any = None) -> None:
    out = out or sys.stdout
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print(line(headers), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print(line(r), file=out)


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def dump_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=2, default=str))
