"""Declarative base and the portable column types shared by every model."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, DateTime, LargeBinary, MetaData, TypeDecorator
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeEngine

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class EventId(TypeDecorator[bytes]):
    """A 16-byte event id: native ``uuid`` on PostgreSQL, a 16-byte BLOB on SQLite.

    Ids derived from a row are time-prefixed (48 bits of milliseconds, like UUIDv7) so that bulk
    inserts append to the right edge of the unique index instead of scattering across it.
    """

    impl = LargeBinary(16)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=False))
        return dialect.type_descriptor(LargeBinary(16))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "postgresql":
            return value.hex() if isinstance(value, bytes) else str(value)
        return bytes.fromhex(value.replace("-", "")) if isinstance(value, str) else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return bytes.fromhex(value.replace("-", ""))
        return bytes(value)


UTCDateTime = DateTime(timezone=True)
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
