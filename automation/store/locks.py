"""Mutual exclusion and idempotent task records, on both databases.

``acquire_lock(conn, name)`` holds a named lock until the surrounding transaction ends: an
advisory transaction lock on PostgreSQL; on SQLite a write to the ``locks`` row, which takes the
database's write lock. Two refits (or a refit and an update) therefore never run at once.

``already_done`` / ``mark_done`` record a task's idempotency key in the same transaction as its
effects, so a task delivered twice, or retried after a crash, changes nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, text


def lock_id(name: str) -> int:
    """A PostgreSQL advisory lock key for ``name`` (64-bit BLAKE2b of it)."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def acquire_lock(conn: Connection, name: str, holder: str = "") -> None:
    """Block until this transaction holds the lock ``name`` (per database schema)."""
    if conn.dialect.name == "postgresql":
        schema = conn.execute(text("SELECT current_schema()")).scalar() or ""
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id(f"{schema}.{name}")})
    conn.execute(
        text(
            "INSERT INTO locks (name, holder, acquired_at, count) "
            "VALUES (:n, :h, CURRENT_TIMESTAMP, 1) ON CONFLICT (name) DO UPDATE SET "
            "holder = excluded.holder, acquired_at = excluded.acquired_at, "
            "count = locks.count + 1"
        ),
        {"n": name, "h": holder},
    )


def already_done(conn: Connection, key: str) -> dict[str, Any] | None:
    """The recorded result of the task run ``key``, or ``None`` if it never completed."""
    row = conn.execute(text("SELECT result FROM task_runs WHERE key = :k"), {"k": key}).first()
    if row is None:
        return None
    value = row[0]
    return json.loads(value) if isinstance(value, str) else (value or {})


def mark_done(conn: Connection, key: str, task: str, result: dict[str, Any]) -> None:
    """Record completion of ``key`` (in the caller's transaction)."""
    conn.execute(
        text("INSERT INTO task_runs (key, task, result) VALUES (:k, :t, :r)"),
        {"k": key, "t": task, "r": json.dumps(result, default=str)},
    )
