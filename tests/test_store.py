"""The store: migrations on first use, models in step with migrations, bulk helpers."""

from __future__ import annotations

import pandas as pd
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from automation.store.bulk import read_frame, write_frame
from automation.store.db import head_revision, open_store
from models import Base


def test_migrations_applied_on_first_use_and_idempotent(db_url: str) -> None:
    engine = open_store(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {
        "events",
        "users",
        "items",
        "quarantine",
        "segmentations",
        "segments",
        "memberships",
        "user_stats",
        "user_orders",
        "user_items",
    } <= tables
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    open_store(db_url).dispose()  # a second open changes nothing
    engine.dispose()


def test_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_bulk_write_and_read_round_trip(engine: Engine) -> None:
    frame = {
        "external_id": pd.Series(["a", "b,c", 'q"uote']),
    }
    with engine.begin() as conn:
        write_frame(conn, "users", frame)
        got = read_frame(
            conn, "SELECT external_id FROM users WHERE external_id <> :x ORDER BY id", {"x": "a"}
        )
        assert got["external_id"].tolist() == ["b,c", 'q"uote']
        assert conn.execute(text("SELECT COUNT(*) FROM users")).scalar() == 3
