"""Process-level plumbing of the tasks: one engine per process and URL, transient errors,
JSON-safe results, and the ``task_runs`` records of tasks idempotent by their own means.

Nothing is opened at import; the engine cache fills on first use in each process (a prefork
pool child never uses its parent's connections, because the cache is keyed by process id).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kombu.exceptions
import psycopg
import redis.exceptions
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc

from automation.errors import ShoalError
from automation.store.db import make_engine, upgrade
from automation.store.locks import already_done


class ConnectionInvalidated(ConnectionError):
    """A database error that invalidated the connection: worth a retry on a fresh one."""


#: Errors a retry can cure: lost or refused connections, deadlocks, serialisation failures.
TRANSIENT: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.TimeoutError,
    psycopg.OperationalError,  # raised unwrapped by the bulk COPY paths
    sqlite3.OperationalError,  # "database is locked" past the busy timeout, likewise
    ConnectionError,  # includes ConnectionInvalidated, refused/reset sockets
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

_ENGINES: dict[tuple[int, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(url: str) -> Engine:
    """This process's engine for ``url``, opened (and migrated) on first use."""
    key = (os.getpid(), url)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = make_engine(url)
            try:
                # Connect once before migrating, so that an unreachable database raises the
                # (retryable) OperationalError rather than a ConfigError.
                engine.connect().close()
                upgrade(engine)
            except (sa_exc.SQLAlchemyError, ShoalError):
                engine.dispose()
                raise
            _ENGINES[key] = engine
    return engine


def dispose_engines() -> None:
    """Close this process's engines (tests, and the worker before it forks its pool)."""
    with _ENGINES_LOCK:
        for (pid, _), engine in list(_ENGINES.items()):
            if pid == os.getpid():
                engine.dispose()
        _ENGINES.clear()


class DatabaseError(ShoalError):
    """A database error no retry can cure (SQLite reports some of them as operational)."""

    code = "database_error"


_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open")


@contextmanager
def transient_errors() -> Iterator[None]:
    """Sort database errors: a connection invalidated is retryable; an SQLite "operational"
    error that is not about locking or I/O (``no such table``) is not."""
    try:
        yield
    except sqlite3.OperationalError as err:
        _raise_if_permanent(err, err)
        raise
    except sa_exc.DBAPIError as err:
        if isinstance(err.orig, sqlite3.OperationalError):
            _raise_if_permanent(err.orig, err)
        if err.connection_invalidated and not isinstance(err, sa_exc.OperationalError):
            raise ConnectionInvalidated(str(err.orig or err)) from err
        raise


def _raise_if_permanent(orig: sqlite3.OperationalError, err: BaseException) -> None:
    message = str(orig)
    if not any(word in message.lower() for word in _SQLITE_TRANSIENT):
        raise DatabaseError(f"database error: {message}") from err


def json_safe(data: Any) -> Any:
    """``data`` as plain JSON: timestamps become strings, numpy scalars numbers, NaN None."""
    return _finite(json.loads(json.dumps(data, default=_default)))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _default(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)


def recorded_result(engine: Engine, key: str) -> dict[str, Any] | None:
    """The result a completed task run ``key`` recorded, or ``None``."""
    with engine.connect() as conn:
        return already_done(conn, key)


def record_run(engine: Engine, key: str, task: str, result: Mapping[str, Any]) -> None:
    """Record ``key`` as done unless it already is (for tasks idempotent by their own means)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO task_runs (key, task, result) VALUES (:k, :t, :r) "
                "ON CONFLICT (key) DO NOTHING"
            ),
            {"k": key, "t": task, "r": json.dumps(json_safe(result))},
        )
