"""``shoal worker`` and ``shoal scheduler``: the background processes.

Registered on the ``shoal`` group at the end of :mod:`automation.cli`. They do not import from
``automation.cli`` (which imports this module), so the error handling is repeated here in the
same shape: a domain error is ``shoal: error: <message>`` on stderr (or one JSON object with
``--json``) and exit code 1. Celery and APScheduler are imported only when a command runs, so
``shoal --help`` stays fast.
"""

from __future__ import annotations

import json
import logging

import click

from automation.cli_support import errors
from automation.config import Settings
from automation.errors import ConfigError

LOGLEVELS = ("debug", "info", "warning", "error", "critical")


_db = click.option(
    "--db",
    "db",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL or SQLite path (default: $SHOAL_DATABASE_URL or sqlite:///shoal.db).",
)


@click.command()
@_db
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--loglevel", default="info", show_default=True, type=click.Choice(LOGLEVELS, False))
@click.option(
    "--pool",
    default="prefork",
    show_default=True,
    type=click.Choice(["prefork", "solo", "threads"]),
    help="Celery execution pool.",
)
@click.option("--json", "as_json", is_flag=True, help="Print start-up errors as JSON.")
def worker(db: str | None, concurrency: int, loglevel: str, pool: str, as_json: bool) -> None:
    """Start a Celery worker that runs ingest, update, drift-check and refit tasks.

    Needs SHOAL_BROKER_URL; tasks are acknowledged after they finish, so a message whose worker
    died is delivered again (the tasks are idempotent).
    """
    with errors(as_json):
        settings = Settings.from_env(database_url=db)
        if not settings.broker_url:
            raise ConfigError(
                "SHOAL_BROKER_URL is not set: `shoal worker` needs a broker such as "
                "redis://localhost:6379/0 (without one, tasks run in-process)"
            )
        from automation.tasks.celery_app import make_celery
        from automation.tasks.runtime import dispose_engines, engine_for

        app = make_celery(settings)
        engine_for(settings.database_url)  # fail fast, and apply migrations once
        dispose_engines()  # pool processes open their own connections
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel.upper()}",
            f"--pool={pool}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@click.command()
@_db
@click.option(
    "--dry-run", "dry_run", is_flag=True, help="Print the configured jobs as JSON and exit."
)
@click.option("--json", "as_json", is_flag=True, help="Same as --dry-run: jobs as JSON, exit.")
@click.option("--loglevel", default="info", show_default=True, type=click.Choice(LOGLEVELS, False))
def scheduler(db: str | None, dry_run: bool, as_json: bool, loglevel: str) -> None:
    """Run the APScheduler schedules that enqueue updates, drift checks and refits.

    Schedules come from SHOAL_SCHEDULE_UPDATE, SHOAL_SCHEDULE_DRIFT and SHOAL_SCHEDULE_REFIT
    ('interval:SECONDS', 'cron:MIN HOUR DOM MON DOW' in UTC, or 'off'). Without
    SHOAL_BROKER_URL the tasks run inside this process.
    """
    show = dry_run or as_json
    with errors(show):
        from automation.tasks.scheduler import build_scheduler, schedules

        settings = Settings.from_env(database_url=db)
        jobs = schedules()
        if show:
            from automation.tasks.celery_app import TaskSettings

            ts = TaskSettings.from_env(settings.broker_url)
            summary = {
                "mode": "broker" if settings.broker_url else "in-process",
                "queue": ts.queue,
                "jobs": [j.to_dict() for j in jobs],
            }
            click.echo(json.dumps(summary, indent=2))
            return
        logging.basicConfig(
            level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        if loglevel != "debug":  # APScheduler logs every run at INFO; Shoal logs its own line
            logging.getLogger("apscheduler").setLevel(logging.WARNING)
        sched = build_scheduler(settings)
    mode = "enqueueing to the broker" if settings.broker_url else "running tasks in-process"
    click.echo(f"shoal scheduler: {len(sched.get_jobs())} jobs, {mode}", err=True)
    try:
        sched.start()
    except (KeyboardInterrupt, SystemExit):
        sched.shutdown(wait=False)
