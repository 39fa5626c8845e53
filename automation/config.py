"""Settings, read from the environment once at the public boundary (never at import).

Every key:

``SHOAL_DATABASE_URL``
    SQLAlchemy URL of the store. A plain path means a SQLite file; ``postgresql://`` URLs use the
    psycopg 3 driver the project ships. Default ``sqlite:///shoal.db``.
``SHOAL_BROKER_URL``
    Celery broker for the background workers (from the dynamic-segmentation issue on). Empty means
    tasks run in-process.
``SHOAL_INGEST_BLOCK_MB``
    Megabytes of CSV read per ingest batch (default 32, about 300,000 events): bounds memory on
    large files (about 0.4 GB per batch; the ingest holds up to three at once: one loading, two
    being prepared).
``SHOAL_INGEST_BLOCKS_PER_COMMIT``
    Batches per transaction (default 32): their running aggregates are folded once, at the end.
``SHOAL_FUTURE_TOLERANCE_HOURS``
    How far past the wall clock an event timestamp may lie before it is quarantined (default 24).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from automation.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///shoal.db"


def normalise_database_url(url: str) -> str:
    """Turn what a user typed into a SQLAlchemy URL.

    >>> normalise_database_url("shop.db")
    'sqlite:///shop.db'
    >>> normalise_database_url("postgresql://me@localhost:5432/shop")
    'postgresql+psycopg://me@localhost:5432/shop'
    """
    url = url.strip()
    if not url:
        raise ConfigError("database URL is empty")
    if "://" not in url:
        return f"sqlite:///{Path(url)}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def _int_env(env: dict[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} should be an integer") from None


def _choice(env: dict[str, str], key: str, allowed: tuple[str, ...], default: str) -> str:
    raw = (env.get(key) or default).strip().lower()
    if raw not in allowed:
        raise ConfigError(f"{key}={raw!r} should be one of {', '.join(allowed)}")
    return raw


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = ""
    ingest_block_mb: int = 32
    ingest_blocks_per_commit: int = 32
    future_tolerance_hours: int = 24
    smtp_url: str = "smtp://127.0.0.1:1025"
    email_address: str = "{user_id}@customers.example.com"
    api_token: str = ""
    api_reads: str = "open"
    pseudonym_key: str = ""
    fold_seconds: float = 1.0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        e = dict(os.environ if env is None else env)
        values: dict[str, object] = {
            "database_url": normalise_database_url(
                e.get("SHOAL_DATABASE_URL") or DEFAULT_DATABASE_URL
            ),
            "broker_url": e.get("SHOAL_BROKER_URL", ""),
            "ingest_block_mb": _int_env(e, "SHOAL_INGEST_BLOCK_MB", 32),
            "ingest_blocks_per_commit": _int_env(e, "SHOAL_INGEST_BLOCKS_PER_COMMIT", 32),
            "future_tolerance_hours": _int_env(e, "SHOAL_FUTURE_TOLERANCE_HOURS", 24),
            "smtp_url": e.get("SHOAL_SMTP_URL") or cls.smtp_url,
            "email_address": e.get("SHOAL_EMAIL_ADDRESS") or cls.email_address,
            "api_token": e.get("SHOAL_API_TOKEN", ""),
            "api_reads": _choice(e, "SHOAL_API_READS", ("open", "token"), "open"),
            "pseudonym_key": e.get("SHOAL_PSEUDONYM_KEY", ""),
            "fold_seconds": float(_int_env(e, "SHOAL_FOLD_MS", 1000)) / 1000.0,
        }
        for key, value in overrides.items():
            if value is not None:
                values[key] = normalise_database_url(str(value)) if key == "database_url" else value
        return cls(**values)  # type: ignore[arg-type]
