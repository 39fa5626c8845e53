"""Engine from a URL, and Alembic migrations applied automatically on first use."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from automation.config import normalise_database_url
from automation.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` (a SQLAlchemy URL or a plain SQLite path)."""
    url = normalise_database_url(url)
    try:
        engine = create_engine(url, future=True)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several types for a bad URL
        raise ConfigError(f"cannot use database URL {url!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent, serialised on PostgreSQL)."""
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7406071)"))
            current = MigrationContext.configure(conn).get_current_revision()
            if current == head_revision():
                return
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise ConfigError(f"cannot open the store at {engine.url!r}: {exc.orig}") from None


def open_store(url: str) -> Engine:
    """Open the store at ``url``, applying migrations on first use."""
    engine = make_engine(url)
    upgrade(engine)
    return engine
