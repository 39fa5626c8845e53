"""Shared helpers of the benchmark scripts: threads, timers, peak memory, stores, tables.

The per-function timing (``Probe``) lives in :mod:`probes`.

Run the scripts with ``OMP_NUM_THREADS=1``: oversubscribed OpenMP/BLAS threads make k-means
about 50x slower on a 2-core machine. :func:`pin_threads` also limits the loaded thread pools to
one thread with threadpoolctl, and says so when the variable was not set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
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
