from __future__ import annotations

import pytest

from automation.config import Settings, normalise_database_url
from automation.errors import ConfigError


def test_plain_path_is_sqlite() -> None:
    assert normalise_database_url("shop.db") == "sqlite:///shop.db"


def test_plain_postgresql_url_uses_the_shipped_driver() -> None:
    url = normalise_database_url("postgresql://me@127.0.0.1:5432/test")
    assert url == "postgresql+psycopg://me@127.0.0.1:5432/test"


def test_settings_from_env_and_overrides() -> None:
    s = Settings.from_env({"SHOAL_DATABASE_URL": "x.db", "SHOAL_INGEST_BLOCK_MB": "10"})
    assert s.database_url == "sqlite:///x.db" and s.ingest_block_mb == 10
    s = Settings.from_env({}, database_url="postgres://a@b/c")
    assert s.database_url == "postgresql+psycopg://a@b/c"
    assert Settings.from_env({}).database_url == "sqlite:///shoal.db"


def test_bad_integer_setting_names_the_key() -> None:
    with pytest.raises(ConfigError, match="SHOAL_INGEST_BLOCK_MB='many'"):
        Settings.from_env({"SHOAL_INGEST_BLOCK_MB": "many"})
