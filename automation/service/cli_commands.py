"""``shoal serve``: the HTTP service (FastAPI on uvicorn)."""

from __future__ import annotations

import inspect
import os
import secrets
from dataclasses import replace
from typing import Any

import click

from automation.cli_support import errors
from automation.config import Settings


@click.command()
@click.option(
    "--db",
    "db",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL or SQLite path (default: $SHOAL_DATABASE_URL or sqlite:///shoal.db).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes (each runs its own background loop).",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log one line per request (latencies by route are in /metrics either way).",
)
@click.option("--json", "as_json", is_flag=True, help="Print start-up errors as JSON.")
def serve(
    db: str | None, host: str, port: int, workers: int, access_log: bool, as_json: bool
) -> None:
    """Serve the API (Segment-compatible ingest, user and segment lookups, recommendations,
    campaigns, erasure, /metrics) and the dashboard at /; OpenAPI at /docs.

    Writes and admin calls need `Authorization: Bearer $SHOAL_API_TOKEN` (without it, a token
    is generated and printed); reads too with SHOAL_API_READS=token.
    """
    with errors(as_json):
        import uvicorn

        from automation.service.app import create_app
        from automation.store.db import open_store

        settings = Settings.from_env(database_url=db)
        if not settings.api_token:
            settings = replace(settings, api_token=secrets.token_urlsafe(24))
            click.echo(
                f"SHOAL_API_TOKEN is not set; the API token for this run: {settings.api_token}",
                err=True,
            )
        if workers == 1:
            uvicorn.run(
                create_app(settings),
                host=host,
                port=port,
                log_level="info",
                access_log=access_log,
            )
            return
        # Several processes: each builds its app from the environment (same store, same token).
        # The store is created or migrated here first: processes migrating a new store at once
        # collide ("table events already exists") and uvicorn restarts them without end.
        open_store(settings.database_url).dispose()
        os.environ["SHOAL_DATABASE_URL"] = settings.database_url
        os.environ["SHOAL_API_TOKEN"] = settings.api_token
        uvicorn.run(
            "automation.service.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            access_log=access_log,
            **_startup_timeout(uvicorn),
        )


STARTUP_SECONDS = 120


def _startup_timeout(uvicorn: Any) -> dict[str, Any]:
    """A worker's start-up (imports, the store opened, the key cache primed, the background
    process started) takes longer than uvicorn's default health-check timeout (5 s) on a busy
    machine, and uvicorn then kills and restarts it without end: allow ``STARTUP_SECONDS``
    where uvicorn has the setting (0.30 and later)."""
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        return {"timeout_worker_healthcheck": STARTUP_SECONDS}
    return {}
