"""Schedules (APScheduler 3.x) that enqueue the background tasks.

Each schedule is an environment variable with a value ``interval:SECONDS``,
``cron:MIN HOUR DOM MON DOW`` (standard crontab fields in UTC: day of week 0 or 7 is Sunday) or
``off``:

``SHOAL_SCHEDULE_UPDATE``  ``shoal.update`` (default ``interval:300``)
``SHOAL_SCHEDULE_DRIFT``   ``shoal.drift_check`` (default ``interval:300``)
``SHOAL_SCHEDULE_REFIT``   ``shoal.refit`` (default ``cron:0 3 * * *``)
``SHOAL_SCHEDULE_CAMPAIGNS``  ``shoal.campaigns`` (default ``interval:60``: schedule triggers)
``SHOAL_SCHEDULE_DISPATCH``   ``shoal.dispatch`` (default ``interval:30``: retries, quiet hours)

Jobs only enqueue (``apply_async``): with a broker a worker runs them; without one they run in
the scheduler's process, one at a time. Refits are also enqueued at once by ``shoal.update`` and
``shoal.drift_check`` when drift passes its bound, so the cron refit is a floor, not the only
trigger. An interval job's message expires after one interval, so a stopped worker does not
come back to a backlog of identical updates.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from automation.config import Settings
from automation.errors import ConfigError, ShoalError
from automation.tasks.celery_app import ShoalCelery, make_celery
from automation.tasks.cron import crontab_trigger
from automation.tasks.jobs import CAMPAIGNS, DISPATCH, DRIFT_CHECK, REFIT, UPDATE, enqueue

log = logging.getLogger("shoal.scheduler")

#: (job id, task, environment variable, default)
SCHEDULES: tuple[tuple[str, str, str, str], ...] = (
    ("update", UPDATE, "SHOAL_SCHEDULE_UPDATE", "interval:300"),
    ("drift_check", DRIFT_CHECK, "SHOAL_SCHEDULE_DRIFT", "interval:300"),
    ("refit", REFIT, "SHOAL_SCHEDULE_REFIT", "cron:0 3 * * *"),
    ("campaigns", CAMPAIGNS, "SHOAL_SCHEDULE_CAMPAIGNS", "interval:60"),
    ("dispatch", DISPATCH, "SHOAL_SCHEDULE_DISPATCH", "interval:30"),
)


@dataclass(frozen=True)
class Schedule:
    job: str
    task: str
    variable: str
    value: str
    trigger: IntervalTrigger | CronTrigger | None  # None: switched off
    expires: float | None  # seconds after which an enqueued message is dropped

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        nxt = None
        if self.trigger is not None:
            at = now or datetime.now(UTC)
            fire = self.trigger.get_next_fire_time(None, at)
            nxt = fire.isoformat() if fire is not None else None
        return {
            "job": self.job,
            "task": self.task,
            "variable": self.variable,
            "schedule": self.value,
            "trigger": str(self.trigger) if self.trigger is not None else "off",
            "next_run": nxt,
        }


def parse_schedule(
    variable: str, value: str
) -> tuple[IntervalTrigger | CronTrigger | None, float | None]:
    """``interval:SECONDS`` | ``cron:MIN HOUR DOM MON DOW`` | ``off`` -> (trigger, expiry)."""
    raw = value.strip()
    kind, _, spec = raw.partition(":")
    kind = kind.strip().lower()
    bad = f"{variable}={value!r} should be 'interval:SECONDS', 'cron:MIN HOUR DOM MON DOW' or 'off'"
    if kind == "off" and not spec:
        return None, None
    if kind == "interval":
        try:
            seconds = float(spec)
        except ValueError:
            raise ConfigError(bad) from None
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"{variable}={value!r}: the interval should be positive seconds")
        return IntervalTrigger(seconds=seconds, timezone=UTC), seconds
    if kind == "cron":
        fields = spec.split()
        if len(fields) != 5:
            raise ConfigError(f"{bad} (got {len(fields)} cron fields, not 5)")
        try:
            trigger = crontab_trigger(spec, "UTC")
        except (ValueError, IndexError, TypeError) as err:
            raise ConfigError(f"{variable}={value!r}: {err}") from None
        return trigger, 3600.0
    raise ConfigError(bad)


def schedules(env: Mapping[str, str] | None = None) -> list[Schedule]:
    """The three schedules from the environment (defaults where a variable is unset)."""
    e = os.environ if env is None else env
    out = []
    for job, task, variable, default in SCHEDULES:
        value = e.get(variable) or default
        trigger, expires = parse_schedule(variable, value)
        out.append(Schedule(job, task, variable, value, trigger, expires))
    return out


def run_job(app: ShoalCelery, task: str, expires: float | None) -> str | None:
    """One scheduled firing: enqueue ``task``; a domain error is logged in one line."""
    try:
        task_id = enqueue(app, task, expires=None if app.eager else expires)
    except ShoalError as err:
        log.warning("%s: %s", task, err)
        return None
    log.info("%s %s (%s)", "ran" if app.eager else "enqueued", task, task_id)
    return task_id


def build_scheduler(
    settings: Settings,
    background: bool = False,
    env: Mapping[str, str] | None = None,
    app: ShoalCelery | None = None,
) -> BaseScheduler:
    """A scheduler (blocking, or background for tests) with one job per enabled schedule."""
    celery = app or make_celery(settings, env)
    # In-process tasks run one at a time, as one worker would; enqueueing needs no more than 2.
    executor = ThreadPoolExecutor(max_workers=1 if celery.eager else 2)
    cls = BackgroundScheduler if background else BlockingScheduler
    scheduler: BaseScheduler = cls(
        executors={"default": executor},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        timezone=UTC,
    )
    for s in schedules(env):
        if s.trigger is None:
            continue
        scheduler.add_job(
            run_job,
            trigger=s.trigger,
            args=(celery, s.task, s.expires),
            id=s.job,
            name=s.task,
            replace_existing=True,
        )
    return scheduler
