"""Helpers for the task tests (no tests here): day files, a private Redis database, a worker.

The worker is the real ``shoal worker`` command in a subprocess of its own session, so the
whole process group (main process and pool children) can be killed with SIGKILL, as a crash
would; finalizers always kill what is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

from automation.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
SHOAL = ROOT / ".venv" / "bin" / "shoal"
REDIS_ENV = "SHOAL_TEST_BROKER_URL"
CLAIM_KEY = "shoal-test:claim"


def day_files(out: Path, n_users: int = 400, days: int = 12, seed: int = 3) -> list[Path]:
    """A simulated shop split into one CSV per day (one ingest batch each)."""
    events = simulate(n_users=n_users, days=days, seed=seed).events
    day = (events["timestamp"] - events["timestamp"].min()).dt.days
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in sorted(day.unique()):
        path = out / f"day{int(d):02d}.csv"
        events[day == d].to_csv(path, index=False)
        paths.append(path)
    return paths


def wait_for(
    what: str, check: Callable[[], object], timeout: float = 60.0, every: float = 0.05
) -> object:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def private_redis() -> Iterator[str]:
    """A Redis database no other test run is using, emptied before and after.

    Databases 15 down to 1 are claimed with ``SET NX`` (expiring, in case a run dies), so
    concurrent runs never share the unacked-message bookkeeping of the Redis transport.
    """
    base = os.environ.get(REDIS_ENV, "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    token = uuid.uuid4().hex
    try:
        redis.Redis.from_url(f"{base}/0", socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as err:
        pytest.skip(f"no Redis at {base}: {err}")
    for n in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{n}")
        if client.set(CLAIM_KEY, token, nx=True, ex=1800):
            break
        client.close()
    else:
        pytest.skip("no free Redis database (1-15) for the worker tests")
    try:
        for key in client.scan_iter():
            if key != CLAIM_KEY.encode():
                client.delete(key)
        yield f"{base}/{n}"
    finally:
        client.flushdb()
        client.close()


class Worker:
    """``shoal worker`` as a subprocess in its own process group."""

    def __init__(self, env: dict[str, str], log: Path, concurrency: int = 1) -> None:
        self.env = env
        self.log = log
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None, "worker already running"
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} =====\n".encode())
            self.proc = subprocess.Popen(
                [str(SHOAL), "worker", "--concurrency", str(self.concurrency)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        start_marker = f"===== start {self.starts} ====="

        def ready() -> bool:
            tail = self.log.read_text(errors="replace").split(start_marker)[-1]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{tail}")
            return " ready." in tail

        wait_for("the worker to be ready", ready, timeout=90, every=0.1)

    def children(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool), as a machine crash would."""
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def kill_child(self) -> None:
        """SIGKILL the pool process running the task; the main process survives."""
        kids = self.children()
        assert kids, "the worker has no pool process"
        for pid in kids:
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.kill()


def worker_env(db_url: str, broker_url: str, app_name: str, **extra: str) -> dict[str, str]:
    """Environment of a worker on ``db_url``; its connections carry ``application_name``."""
    sep = "&" if "?" in db_url else "?"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SHOAL_") and k not in ("PYTEST_CURRENT_TEST",)
    }
    env.update(
        SHOAL_DATABASE_URL=f"{db_url}{sep}application_name={app_name}",
        SHOAL_BROKER_URL=broker_url,
        SHOAL_QUEUE=f"q-{app_name}",
        SHOAL_VISIBILITY_TIMEOUT="5",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@contextmanager
def table_locked(engine: Engine, table: str) -> Iterator[None]:
    """Hold an EXCLUSIVE lock on ``table`` (reads pass, writes wait) until the block ends."""
    with engine.connect() as conn:
        trans = conn.begin()
        conn.execute(text(f"LOCK TABLE {table} IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            trans.rollback()


def blocked_writer(engine: Engine, app_name: str) -> int | None:
    """Pid of a backend of ``app_name`` that has written (holds a transaction id) and now
    waits for a lock: a task in the middle of its transaction."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :a "
                "AND backend_xid IS NOT NULL AND wait_event_type = 'Lock' "
                "AND wait_event = 'relation'"
            ),
            {"a": app_name},
        ).scalar()


def backends_gone(engine: Engine, app_name: str) -> bool:
    """No session of the killed worker is left holding anything."""
    with engine.connect() as conn:
        n = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a "
                "AND backend_xid IS NOT NULL"
            ),
            {"a": app_name},
        ).scalar()
    return n == 0
