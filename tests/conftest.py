"""Shared fixtures: a fresh store on SQLite and, where configured, on PostgreSQL.

PostgreSQL tests run against ``SHOAL_TEST_DATABASE_URL`` (``.ci/run`` sets it to the machine's
server), each in a schema of its own that is dropped afterwards; without the variable they skip
with a message saying so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from threadpoolctl import threadpool_limits

from automation.config import normalise_database_url
from automation.store.db import open_store

ROOT = Path(__file__).resolve().parent.parent
ONLINE_RETAIL = ROOT / "automation" / "data" / "online_retail.csv.gz"
PG_ENV = "SHOAL_TEST_DATABASE_URL"


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> Iterator[None]:
    # Oversubscribed BLAS/OpenMP threads are 50x slower on 2 cores.
    with threadpool_limits(limits=1):
        yield


def pg_base_url() -> str | None:
    url = os.environ.get(PG_ENV)
    return normalise_database_url(url) if url else None


def _pg_schema_url(schema: str) -> str:
    base = pg_base_url()
    assert base is not None
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def _pg_store() -> Iterator[str]:
    base = pg_base_url()
    if base is None:
        pytest.skip(f"{PG_ENV} is not set: PostgreSQL tests skipped")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _pg_store()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shoal.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL on each database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shoal.db'}"
    else:
        yield from _pg_store()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = open_store(db_url)
    yield eng
    eng.dispose()
