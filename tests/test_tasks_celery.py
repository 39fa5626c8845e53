"""Celery app and tasks without a broker (in-process, on SQLite): configuration, idempotency,
retries on transient errors only, JSON results, and the worker/scheduler commands' errors."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

import automation.api
from automation.cli import main
from automation.config import Settings
from automation.errors import ConfigError, InputError
from automation.tasks import celery_app
from automation.tasks.celery_app import ShoalCelery, make_celery
from automation.tasks.jobs import DRIFT_CHECK, INGEST, REFIT, TASK_NAMES, UPDATE, enqueue
from automation.tasks.runtime import DatabaseError, dispose_engines
from tests.test_tasks_support import day_files


@pytest.fixture
def eager(sqlite_url: str) -> Iterator[ShoalCelery]:
    app = make_celery(Settings.from_env({"SHOAL_DATABASE_URL": sqlite_url}), env={})
    yield app
    dispose_engines()


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return day_files(tmp_path_factory.mktemp("days"))


def _count(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_with_a_broker_messages_are_acknowledged_late_and_nothing_connects() -> None:
    env = {"SHOAL_VISIBILITY_TIMEOUT": "42", "SHOAL_QUEUE": "shop-a"}
    # Port 1 has nothing listening: making the app must not try to connect.
    settings = Settings.from_env({"SHOAL_BROKER_URL": "redis://127.0.0.1:1/3"})
    app = make_celery(settings, env)
    conf = app.conf
    assert not app.eager
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 42
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_default_queue == "shop-a"
    assert conf.result_backend == "redis://127.0.0.1:1/3"
    assert set(TASK_NAMES) <= set(app.tasks)
    default = make_celery(settings, {})
    assert default.conf.task_default_queue == "shoal"
    assert default.conf.broker_transport_options["visibility_timeout"] == 3600


def test_without_a_broker_tasks_run_in_process(eager: ShoalCelery) -> None:
    assert eager.eager and eager.conf.task_always_eager


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_bad_visibility_timeout_names_the_variable(value: str) -> None:
    settings = Settings.from_env({"SHOAL_BROKER_URL": "redis://127.0.0.1:1/0"})
    with pytest.raises(ConfigError, match="SHOAL_VISIBILITY_TIMEOUT"):
        make_celery(settings, {"SHOAL_VISIBILITY_TIMEOUT": value})


def test_module_app_is_made_on_first_access(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SHOAL_QUEUE", "lazy")
    celery_app.default_app.cache_clear()
    try:
        app = celery_app.app
        assert app is celery_app.celery
        assert app.conf.task_default_queue == "lazy"
    finally:
        celery_app.default_app.cache_clear()
    with pytest.raises(AttributeError):
        _ = celery_app.nothing_here


def test_ingest_and_refit_in_process_are_idempotent_by_task_id(
    eager: ShoalCelery, sqlite_url: str, days: list[Path]
) -> None:
    paths = [str(p) for p in days[:6]]
    first = eager.tasks[INGEST].apply_async(kwargs={"paths": paths}, task_id="ingest-1").get()
    assert first["status"] == "done" and first["accepted"] > 0
    again = eager.tasks[INGEST].apply_async(kwargs={"paths": paths}, task_id="ingest-1").get()
    assert again["status"] == "already_done" and again["accepted"] == first["accepted"]
    other = eager.tasks[INGEST].apply_async(kwargs={"paths": paths}, task_id="ingest-2").get()
    assert other["status"] == "done" and other["accepted"] == 0  # event ids dedupe
    n_events = _count(sqlite_url, "SELECT count(*) FROM events")
    assert n_events == first["accepted"]

    refit = eager.tasks[REFIT].apply_async(kwargs={"k": 3}, task_id="refit-1").get()
    assert refit["status"] == "done" and refit["k"] == 3
    json.dumps(refit)  # JSON-safe
    twice = eager.tasks[REFIT].apply_async(kwargs={"k": 3}, task_id="refit-1").get()
    assert twice["status"] == "already_done"
    assert _count(sqlite_url, "SELECT count(*) FROM segmentations") == 1
    assert _count(sqlite_url, "SELECT count(*) FROM task_runs WHERE key = 'refit-1'") == 1
    # A new task id is a new refit.
    assert enqueue(eager, REFIT, {"k": 3}, task_id="refit-2") == "refit-2"
    assert _count(sqlite_url, "SELECT count(*) FROM segmentations") == 2


def _flaky(monkeypatch: pytest.MonkeyPatch, errors: list[BaseException]) -> list[int]:
    calls: list[int] = []
    real = automation.api.ingest

    def ingest(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(automation.api, "ingest", ingest)
    return calls


def test_transient_database_errors_are_retried(
    eager: ShoalCelery, days: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    lost = sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    invalidated = sa_exc.DBAPIError(
        "SELECT 1", {}, Exception("connection reset"), connection_invalidated=True
    )
    calls = _flaky(monkeypatch, [lost, invalidated])
    out = eager.tasks[INGEST].apply_async(kwargs={"paths": [str(days[0])]}).get()
    assert out["status"] == "done" and len(calls) == 3


def test_retries_stop_after_five(
    eager: ShoalCelery, days: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    lost = sa_exc.OperationalError("SELECT 1", {}, Exception("could not connect"))
    calls = _flaky(monkeypatch, [lost] * 10)
    with pytest.raises(sa_exc.OperationalError):
        eager.tasks[INGEST].apply_async(kwargs={"paths": [str(days[0])]}).get()
    assert len(calls) == 6  # the first run and five retries


def test_domain_and_programming_errors_are_not_retried(
    eager: ShoalCelery, days: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _flaky(monkeypatch, [InputError("nope.csv: no such file")])
    with pytest.raises(InputError):
        eager.tasks[INGEST].apply_async(kwargs={"paths": [str(days[0])]}).get()
    assert len(calls) == 1
    bug = sa_exc.ProgrammingError("SELECT nope", {}, Exception("syntax error"))
    calls = _flaky(monkeypatch, [bug])
    with pytest.raises(sa_exc.ProgrammingError):
        eager.tasks[INGEST].apply_async(kwargs={"paths": [str(days[0])]}).get()
    assert len(calls) == 1


def test_worker_needs_a_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_BROKER_URL", raising=False)
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1
    assert result.output.startswith("shoal: error: SHOAL_BROKER_URL is not set")
    assert len(result.output.strip().splitlines()) == 1
    as_json = CliRunner().invoke(main, ["worker", "--json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"] == "config_error"


def test_worker_and_scheduler_help() -> None:
    for name in ("worker", "scheduler"):
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "--json" in result.output
    assert "--concurrency" in CliRunner().invoke(main, ["worker", "--help"]).output
    assert "--dry-run" in CliRunner().invoke(main, ["scheduler", "--help"]).output


def test_update_in_process_is_idempotent_and_reports_nothing_pending(
    eager: ShoalCelery, sqlite_url: str, days: list[Path]
) -> None:
    skipped = eager.tasks[UPDATE].apply_async().get()
    assert skipped["status"] == "skipped"
    eager.tasks[INGEST].apply_async(kwargs={"paths": [str(p) for p in days[:6]]}).get()
    eager.tasks[REFIT].apply_async(kwargs={"k": 3}).get()
    eager.tasks[INGEST].apply_async(kwargs={"paths": [str(p) for p in days[6:8]]}).get()
    first = eager.tasks[UPDATE].apply_async(task_id="update-1").get()
    assert first["status"] == "done" and first["events"] > 0
    again = eager.tasks[UPDATE].apply_async(task_id="update-1").get()
    assert again["status"] == "already_done" and again["version"] == first["version"]
    idle = eager.tasks[UPDATE].apply_async(task_id="update-2").get()
    assert idle["status"] == "nothing_pending"
    assert _count(sqlite_url, "SELECT count(*) FROM segmentations WHERE kind = 'update'") == 1
    drift = eager.tasks[DRIFT_CHECK].apply_async().get()
    assert drift["status"] == "done" and isinstance(drift["refit_needed"], bool)
    json.dumps([first, again, idle, drift])


def test_drift_enqueues_one_refit_however_often_it_is_seen(
    eager: ShoalCelery, sqlite_url: str, days: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import automation.segments.update as update_module

    eager.tasks[INGEST].apply_async(kwargs={"paths": [str(p) for p in days[:6]]}).get()
    base = eager.tasks[REFIT].apply_async(kwargs={"k": 3}).get()["version"]
    eager.tasks[INGEST].apply_async(kwargs={"paths": [str(days[6])]}).get()
    real_update = update_module.run_update

    def drifting_update(*args: Any, **kwargs: Any) -> Any:
        result = real_update(*args, **kwargs)
        if result is not None:
            result.refit_recommended = True
        return result

    monkeypatch.setattr(update_module, "run_update", drifting_update)
    out = eager.tasks[UPDATE].apply_async().get()
    assert out["refit_recommended"] and out["refit_task_id"] == f"drift-refit-{base}"
    refits = "SELECT count(*) FROM segmentations WHERE kind = 'refit'"
    assert _count(sqlite_url, refits) == 2  # the refit ran at once, in-process
    # Every later sighting of the same drift maps to the same refit: nothing runs twice.
    monkeypatch.setattr(
        update_module,
        "check_drift",
        lambda engine: update_module.DriftReport(True, base, []),
    )
    for _ in range(2):
        seen = eager.tasks[DRIFT_CHECK].apply_async().get()
        assert seen["refit_task_id"] == f"drift-refit-{base}"
    assert _count(sqlite_url, refits) == 2
    runs = f"SELECT count(*) FROM task_runs WHERE key = 'drift-refit-{base}'"
    assert _count(sqlite_url, runs) == 1


def test_sqlite_errors_are_retried_only_when_about_locking(
    eager: ShoalCelery, days: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    calls = _flaky(monkeypatch, [locked])
    assert eager.tasks[INGEST].apply_async(kwargs={"paths": [str(days[0])]}).get()
    assert len(calls) == 2
    missing = sa_exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))
    calls = _flaky(monkeypatch, [missing])
    with pytest.raises(DatabaseError, match="no such table"):
        eager.tasks[INGEST].apply_async(kwargs={"paths": [str(days[0])]}).get()
    assert len(calls) == 1
