"""The store: migrations on first use, models in step with migrations, bulk helpers."""

from __future__ import annotations

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text

from automation.store.bulk import create_temp_like, read_frame, write_frame
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


def test_staging_tables_are_reused_empty_and_remade_when_needed(engine: Engine) -> None:
    def rows(conn: Connection, table: str) -> list[tuple[object, ...]]:
        return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table}"))]

    for _ in range(2):  # made, then reused: empty at the start of every transaction
        with engine.begin() as conn:
            create_temp_like(conn, "_t_stage", "a INTEGER")
            assert rows(conn, "_t_stage") == []
            write_frame(conn, "_t_stage", {"a": pd.Series([1, 2])})
            create_temp_like(conn, "_t_stage", "a INTEGER")  # twice in one transaction
            assert rows(conn, "_t_stage") == []
            write_frame(conn, "_t_stage", {"a": pd.Series([3])})
    with engine.begin() as conn:
        create_temp_like(conn, "_t_stage", "a INTEGER, b TEXT")  # other columns: made again
        write_frame(conn, "_t_stage", {"a": pd.Series([4]), "b": pd.Series(["x"])})
        assert rows(conn, "_t_stage") == [(4, "x")]
    with pytest.raises(RuntimeError), engine.begin() as conn:
        create_temp_like(conn, "_t_stage", "c INTEGER")  # made, then rolled back
        raise RuntimeError
    with engine.begin() as conn:  # whichever table the rollback left, the next use has `c`
        create_temp_like(conn, "_t_stage", "c INTEGER")
        write_frame(conn, "_t_stage", {"c": pd.Series([5])})
        assert rows(conn, "_t_stage") == [(5,)]
