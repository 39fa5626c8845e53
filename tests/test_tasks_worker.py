"""A real ``shoal worker`` (Redis broker, PostgreSQL store) and crashes in mid-transaction.

A task is caught in the middle of its transaction deterministically: the test holds an
EXCLUSIVE lock on a table the task writes late in its transaction (reads still pass), waits
until the worker's session has written (holds a transaction id) and waits on that lock, then
SIGKILLs the whole worker (main process and pool: a machine crash; the message comes back after
the visibility timeout) or only the pool process (the main process requeues it at once). After
the restart the task is delivered again, with the same id, and must complete; nothing may be
lost or applied twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from automation import api
from automation.config import Settings
from automation.store.db import open_store
from automation.tasks.celery_app import ShoalCelery, make_celery
from automation.tasks.jobs import INGEST, REFIT, UPDATE
from tests.test_tasks_support import (
    Worker,
    blocked_writer,
    day_files,
    private_redis,
    table_locked,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.postgres
TIMEOUT = 90.0
#: The table each task writes late in its transaction: locking it stops the task there.
LATE_WRITE = {INGEST: "batch_users", UPDATE: "feature_snapshot_deltas", REFIT: "memberships"}


@dataclass
class Cluster:
    app: ShoalCelery
    worker: Worker
    engine: Engine
    app_name: str
    files: list[Path]
    refit_ids: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)
    ingested: set[str] = field(default_factory=set)

    def kwargs(self, task: str, i: int) -> dict[str, Any]:
        if task == INGEST:  # 0: the first six days; i > 0: day 5 + i
            return {"paths": [str(p) for p in (self.files[:6] if i == 0 else [self.files[5 + i]])]}
        return {"k": 3} if task == REFIT else {}

    def send(self, task: str, i: int = 0) -> str:
        task_id = f"{task.split('.')[-1]}-{i}-{uuid.uuid4().hex[:8]}"
        self.sent.add(task_id)
        if task == REFIT:
            self.refit_ids.add(task_id)
        kwargs = self.kwargs(task, i)
        self.ingested.update(kwargs.get("paths", []))
        self.app.send_task(task, kwargs=kwargs, task_id=task_id)
        return task_id

    def result(self, task_id: str) -> dict[str, Any]:
        value = self.app.AsyncResult(task_id).get(timeout=TIMEOUT)
        assert isinstance(value, dict)
        if value.get("refit_task_id"):  # a refit the update enqueued because of drift
            self.refit_ids.add(value["refit_task_id"])
        return value

    def run(self, task: str, i: int = 0) -> dict[str, Any]:
        return self.result(self.send(task, i))

    def crash_during(self, task: str, i: int, whole_worker: bool) -> dict[str, Any]:
        """Run ``task`` and kill the worker while it is inside its transaction."""
        with table_locked(self.engine, LATE_WRITE[task]):
            task_id = self.send(task, i)

            def blocked() -> int | None:
                result = self.app.AsyncResult(task_id)
                if result.ready():  # it finished without writing that table: say what it did
                    raise AssertionError(f"{task} never blocked; it returned {result.result}")
                return blocked_writer(self.engine, self.app_name)

            wait_for(f"{task} to block inside its transaction", blocked, timeout=TIMEOUT)
            if whole_worker:
                self.worker.kill()
            else:
                self.worker.kill_child()
        if whole_worker:
            self.worker.start()
        return self.result(task_id)


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    with private_redis() as broker:
        app_name = f"shoalw_{uuid.uuid4().hex[:10]}"
        env = worker_env(pg_url, broker, app_name)
        app = make_celery(Settings.from_env(env), env)
        worker = Worker(env, tmp_path / "worker.log")
        engine = open_store(pg_url)
        try:
            yield Cluster(app, worker, engine, app_name, day_files(tmp_path / "days", days=16))
        finally:
            worker.kill()
            if worker.log.exists():  # shown by pytest when the test failed
                print(worker.log.read_text(errors="replace")[-8000:])
            app.close()
            engine.dispose()


def _rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)).all())


def check_consistency(c: Cluster, tmp_path: Path) -> None:
    """Nothing lost, nothing applied twice."""
    for task_id in sorted(c.refit_ids):  # refits enqueued by updates finish first
        c.result(task_id)
    ref = api.connect(f"sqlite:///{tmp_path / 'reference.db'}")
    api.ingest(ref, sorted(c.ingested))
    totals = "SELECT count(*), (SELECT sum(n_events) FROM user_stats) FROM events"
    assert _rows(c.engine, totals) == _rows(ref, totals)  # every event once, aggregates once
    ref.dispose()
    (batch_events,) = _rows(c.engine, "SELECT sum(n_events) FROM batch_users")[0]
    assert batch_events == _rows(c.engine, "SELECT count(*) FROM events")[0][0]

    # task_runs: each key once (primary key) and every task that was sent is there.
    runs = {r.key: r.task for r in _rows(c.engine, "SELECT key, task FROM task_runs")}
    assert c.sent | c.refit_ids <= set(runs)
    refit_runs = {k for k, t in runs.items() if t == "refit"}
    versions = _rows(
        c.engine,
        "SELECT id, kind, parent_id, last_batch_id, is_current FROM segmentations ORDER BY id",
    )
    refits = [v for v in versions if v.kind == "refit"]
    assert len(refits) == len(refit_runs) == len(c.refit_ids)

    # Each ingest batch is folded into exactly one version.
    by_id = {v.id: v for v in versions}
    updates = [v for v in versions if v.kind == "update"]
    lasts = [v.last_batch_id for v in updates]
    assert lasts == sorted(set(lasts)), f"update versions' last batches not increasing: {lasts}"
    batches = [r[0] for r in _rows(c.engine, "SELECT DISTINCT batch_id FROM batch_users")]
    (current,) = [v for v in versions if v.is_current]
    for b in batches:
        covering = [u for u in updates if by_id[u.parent_id].last_batch_id < b <= u.last_batch_id]
        assert len(covering) <= 1, f"batch {b} folded by versions {[u.id for u in covering]}"
        if not covering:
            assert any(r.last_batch_id >= b for r in refits), f"batch {b} never folded"
    assert max(batches) <= current.last_batch_id


def test_worker_runs_ingest_refit_update_and_ignores_redelivery(cluster: Cluster) -> None:
    c = cluster
    c.worker.start()
    first = c.run(INGEST, 0)
    assert first["status"] == "done" and first["accepted"] > 0
    refit = c.run(REFIT)
    assert refit["status"] == "done" and refit["k"] == 3
    c.run(INGEST, 1)
    update = c.run(UPDATE)
    assert update["status"] in ("done", "nothing_pending")
    # The same message delivered twice (same task id) changes nothing the second time.
    c.app.AsyncResult(refit["task_id"]).forget()  # so that .get() waits for the new run
    c.app.send_task(REFIT, kwargs={"k": 3}, task_id=refit["task_id"])
    assert c.result(refit["task_id"])["status"] == "already_done"
    for task_id in sorted(c.refit_ids):  # and any refit an update enqueued on drift
        c.result(task_id)
    n_refits = _rows(c.engine, "SELECT count(*) FROM segmentations WHERE kind = 'refit'")
    assert n_refits[0][0] == len(c.refit_ids)


def crash_cycles(c: Cluster, n: int, tmp_path: Path) -> None:
    c.worker.start()
    c.run(INGEST, 0)
    c.run(REFIT)
    plan = [INGEST, UPDATE, REFIT]
    for cycle in range(n):
        day = 1 + cycle % (len(c.files) - 6)
        victim = plan[cycle % 3]
        whole = cycle % 2 == 0
        if victim != INGEST:
            c.run(INGEST, day)
        out = c.crash_during(victim, day, whole_worker=whole)
        # "done", not "already_done": the crashed attempt committed nothing, not even its key.
        assert out["status"] == "done", out
        if victim == INGEST:
            assert out["accepted"] > 0  # its rolled-back events went in on redelivery
        elif victim == UPDATE:
            assert out["version"] is not None and out["events"] > 0
        c.run(UPDATE)
    c.run(UPDATE)
    check_consistency(c, tmp_path)


def test_crash_mid_transaction_of_each_task(cluster: Cluster, tmp_path: Path) -> None:
    """Three cycles: ingest (whole worker killed), update (pool process), refit (whole)."""
    crash_cycles(cluster, 3, tmp_path)


@pytest.mark.slow
def test_crash_mid_transaction_ten_times(cluster: Cluster, tmp_path: Path) -> None:
    """Ten kill/restart cycles over ingest, update and refit, alternating a crash of the whole
    worker (redelivery after the visibility timeout) and of the pool process (requeued at
    once): 40-55 s on two cores, most of it the five visibility timeouts."""
    crash_cycles(cluster, 10, tmp_path)
