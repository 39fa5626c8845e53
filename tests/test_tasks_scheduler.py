"""Schedules: parsing, errors naming the variable, the dry run, and a background scheduler that
really runs the update job in-process within seconds."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from click.testing import CliRunner
from sqlalchemy import text

from automation.cli import main
from automation.config import Settings
from automation.errors import ConfigError
from automation.tasks.celery_app import make_celery
from automation.tasks.jobs import INGEST, REFIT
from automation.tasks.runtime import dispose_engines, engine_for
from automation.tasks.scheduler import build_scheduler, parse_schedule, run_job, schedules
from tests.test_tasks_support import day_files, private_redis, wait_for


def test_defaults() -> None:
    by_job = {s.job: s for s in schedules({})}
    assert set(by_job) == {"update", "drift_check", "refit", "campaigns", "dispatch"}
    assert by_job["campaigns"].task == "shoal.campaigns"
    assert by_job["dispatch"].value == "interval:30"
    assert by_job["update"].value == "interval:300"
    assert isinstance(by_job["update"].trigger, IntervalTrigger)
    assert by_job["update"].trigger.interval.total_seconds() == 300
    assert by_job["update"].expires == 300
    assert by_job["drift_check"].task == "shoal.drift_check"
    refit = by_job["refit"].trigger
    assert isinstance(refit, CronTrigger)
    after = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert refit.get_next_fire_time(None, after) == datetime(2024, 5, 2, 3, 0, tzinfo=UTC)


def test_interval_and_cron_values() -> None:
    trigger, expires = parse_schedule("SHOAL_SCHEDULE_UPDATE", " interval:2.5 ")
    assert isinstance(trigger, IntervalTrigger) and trigger.interval.total_seconds() == 2.5
    assert expires == 2.5
    # Crontab weekdays: 0 and 7 are Sunday, 1-5 Monday to Friday (APScheduler 3 counts from
    # Monday; the parser translates).
    sunday, _ = parse_schedule("SHOAL_SCHEDULE_REFIT", "cron:30 4 * * 0")
    monday = datetime(2024, 5, 6, 0, 0, tzinfo=UTC)  # a Monday
    assert sunday is not None
    assert sunday.get_next_fire_time(None, monday) == datetime(2024, 5, 12, 4, 30, tzinfo=UTC)
    seven, _ = parse_schedule("SHOAL_SCHEDULE_REFIT", "cron:30 4 * * 7")
    assert seven is not None and seven.get_next_fire_time(None, monday) == datetime(
        2024, 5, 12, 4, 30, tzinfo=UTC
    )
    weekdays, _ = parse_schedule("SHOAL_SCHEDULE_REFIT", "cron:*/15 9-17 * * 1-5")
    saturday = datetime(2024, 5, 11, 0, 0, tzinfo=UTC)
    assert weekdays is not None
    assert weekdays.get_next_fire_time(None, saturday) == datetime(2024, 5, 13, 9, 0, tzinfo=UTC)
    every_day, _ = parse_schedule("SHOAL_SCHEDULE_REFIT", "cron:0 3 * * 0-6")
    assert every_day is not None
    assert every_day.get_next_fire_time(None, saturday) == datetime(2024, 5, 11, 3, tzinfo=UTC)
    other_days, _ = parse_schedule("SHOAL_SCHEDULE_REFIT", "cron:0 3 * * */2")  # Sun, Tue, ..
    assert other_days is not None
    assert other_days.get_next_fire_time(None, monday) == datetime(2024, 5, 7, 3, tzinfo=UTC)
    assert parse_schedule("SHOAL_SCHEDULE_DRIFT", "off") == (None, None)


@pytest.mark.parametrize(
    "value",
    [
        "every:5",
        "interval:",
        "interval:soon",
        "interval:0",
        "interval:-3",
        "interval:nan",
        "cron:0 3 * *",
        "cron:61 3 * * *",
        "cron:0 25 * * *",
        "cron:0 3 * * 9",
        "cron:0 3 * * 5-1",
        "cron:0 3 * * 1-",
        "",
        "300",
    ],
)
def test_invalid_values_name_the_variable_and_value(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_schedule("SHOAL_SCHEDULE_UPDATE", value)
    assert "SHOAL_SCHEDULE_UPDATE" in str(err.value) and repr(value) in str(err.value)


def test_dry_run_prints_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_BROKER_URL", raising=False)
    monkeypatch.setenv("SHOAL_SCHEDULE_DRIFT", "off")
    monkeypatch.setenv("SHOAL_SCHEDULE_UPDATE", "interval:60")
    for flag in ("--dry-run", "--json"):
        result = CliRunner().invoke(main, ["scheduler", flag])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["mode"] == "in-process"
        jobs = {j["job"]: j for j in data["jobs"]}
        assert jobs["update"]["schedule"] == "interval:60" and jobs["update"]["next_run"]
        assert jobs["drift_check"]["trigger"] == "off"
        assert jobs["refit"]["task"] == "shoal.refit"


def test_invalid_schedule_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_SCHEDULE_REFIT", "cron:every night")
    result = CliRunner().invoke(main, ["scheduler", "--dry-run"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "config_error"
    monkeypatch.setenv("SHOAL_SCHEDULE_REFIT", "daily")
    result = CliRunner().invoke(main, ["scheduler"])
    assert result.exit_code == 1
    assert result.output.startswith("shoal: error: SHOAL_SCHEDULE_REFIT='daily'")


def test_scheduler_jobs_follow_the_environment() -> None:
    settings = Settings.from_env({"SHOAL_BROKER_URL": "redis://127.0.0.1:1/0"})
    env = {
        "SHOAL_SCHEDULE_UPDATE": "interval:1",
        "SHOAL_SCHEDULE_REFIT": "off",
        "SHOAL_SCHEDULE_DISPATCH": "off",
    }
    sched = build_scheduler(settings, background=True, env=env)
    assert {j.id for j in sched.get_jobs()} == {"update", "drift_check", "campaigns"}


def test_background_scheduler_runs_the_update_in_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shoal.db'}"
    settings = Settings.from_env({"SHOAL_DATABASE_URL": url})
    app = make_celery(settings, {})
    days = day_files(tmp_path / "days")
    app.tasks[INGEST].apply_async(kwargs={"paths": [str(p) for p in days[:6]]}).get()
    app.tasks[REFIT].apply_async(kwargs={"k": 3}).get()
    app.tasks[INGEST].apply_async(kwargs={"paths": [str(p) for p in days[6:8]]}).get()
    engine = engine_for(url)

    def updates() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM segmentations WHERE kind = 'update'")
                ).scalar_one()
            )

    assert updates() == 0
    env = {
        "SHOAL_SCHEDULE_UPDATE": "interval:1",
        "SHOAL_SCHEDULE_DRIFT": "off",
        "SHOAL_SCHEDULE_REFIT": "off",
        "SHOAL_SCHEDULE_CAMPAIGNS": "off",
        "SHOAL_SCHEDULE_DISPATCH": "off",
    }
    sched = build_scheduler(settings, background=True, env=env, app=app)
    started = time.monotonic()
    sched.start()
    try:
        wait_for("a scheduled update", updates, timeout=20, every=0.1)
    finally:
        sched.shutdown(wait=True)
        dispose_engines()
    assert time.monotonic() - started < 20
    assert updates() == 1  # later runs found nothing pending


def test_with_a_broker_a_job_publishes_a_message_that_expires() -> None:
    with private_redis() as broker:
        env = {"SHOAL_QUEUE": "sched-test"}
        app = make_celery(Settings.from_env({"SHOAL_BROKER_URL": broker}), env)
        try:
            task_id = run_job(app, "shoal.update", 300.0)
            client = redis.Redis.from_url(broker)
            raw = client.lrange("sched-test", 0, -1)
            client.close()
        finally:
            app.close()
    assert task_id is not None and len(raw) == 1
    headers = json.loads(raw[0])["headers"]
    assert headers["id"] == task_id and headers["task"] == "shoal.update"
    assert headers["expires"] is not None
