"""Column types shared by the schema and the migrations: UTC timestamps and 64-bit surrogate keys.

SQLite has no time zone type, so :class:`UTCDateTime` stores naive UTC there and gives every
value back as an aware ``datetime`` in UTC on both databases. Naive datetimes are refused on the
way in: a timestamp whose zone is unknown would make retention and expiry silently wrong.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

# Discord snowflakes are 64-bit. A surrogate primary key must be plain INTEGER on SQLite to be
# the autoincrementing rowid; PostgreSQL gets BIGINT (bigserial).
SurrogateKey: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp (``timestamptz`` on PostgreSQL, ISO text on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (e.g. datetime.now(UTC))")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite compares the stored text: keep one zone and one format so '<' is chronological.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, aware, in UTC (the one clock the repositories use by default)."""
    return datetime.now(UTC)
