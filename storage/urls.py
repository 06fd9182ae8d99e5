"""``DATABASE_URL`` parsing and the messages shown when a database cannot be opened.

Every message names ``DATABASE_URL`` and says what to do; none contains a password (URLs are
shown with the password replaced by ``***``, and a URL that cannot even be parsed is masked by
pattern before it is quoted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from storage.errors import StorageError

SQLITE_DRIVER: Final = "sqlite+aiosqlite"
POSTGRES_DRIVER: Final = "postgresql+asyncpg"
EXAMPLES: Final = (
    "sqlite+aiosqlite:///data/voxclone.db or postgresql+asyncpg://user:password@host:5432/voxclone"
)

_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


def mask_url(raw: str) -> str:
    """``raw`` with any password replaced by ``***`` (works on unparseable strings too)."""
    return _PASSWORD_IN_URL.sub(r"\1:***@", raw)


@dataclass(frozen=True)
class DatabaseURL:
    """A validated ``DATABASE_URL``: which database, and where."""

    url: URL
    dialect: Literal["sqlite", "postgresql"]
    sqlite_path: Path | None  # the file, for SQLite

    @property
    def safe(self) -> str:
        """The URL with its password hidden: the only form that goes into messages and logs."""
        return self.url.render_as_string(hide_password=True)


def parse_database_url(raw: str) -> DatabaseURL:
    """Validate ``raw``; raise :class:`StorageError` naming ``DATABASE_URL`` if it is unusable."""
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        # Not quoted: where the parse failed, a password cannot be told apart from the rest.
        raise StorageError(f"DATABASE_URL is not a database URL. Set it to {EXAMPLES}.") from None
    if url.drivername == SQLITE_DRIVER:
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            raise StorageError(
                "DATABASE_URL names an in-memory SQLite database, which would forget every voice "
                "when the bot stops. Give it a file path, e.g. sqlite+aiosqlite:///data/voxclone.db."
            )
        return DatabaseURL(url=url, dialect="sqlite", sqlite_path=Path(database))
    if url.drivername == POSTGRES_DRIVER:
        if not url.host and not url.query.get("host"):
            raise StorageError(
                f"DATABASE_URL {url.render_as_string(hide_password=True)!r} has no host. "
                f"Set it to {EXAMPLES}."
            )
        return DatabaseURL(url=url, dialect="postgresql", sqlite_path=None)
    hint = ""
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        hint = " Write sqlite+aiosqlite:// instead of sqlite:// (voxclone needs the async driver)."
    elif url.drivername.startswith(("postgresql", "postgres")):
        hint = " Write postgresql+asyncpg:// (voxclone needs the asyncpg driver)."
    raise StorageError(
        f"DATABASE_URL uses {url.drivername!r}, which voxclone does not support.{hint} Set it to {EXAMPLES}."
    )


def describe_sqlite_failure(path: Path, detail: str) -> str:
    """A sentence for an SQLite file that could not be opened, from the driver's error text."""
    lowered = detail.lower()
    if "not a database" in lowered:
        what = (
            f"{path} is not an SQLite database (or it is damaged). Point DATABASE_URL at a new file "
            "or at your voxclone database; do not reuse a file that belongs to something else."
        )
    elif "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        what = (
            f"cannot write {path}: the file or its folder is read-only for this user. Make the folder "
            "writable (SQLite also writes -wal and -shm files beside the database) or point "
            "DATABASE_URL at a writable location."
        )
    elif "locked" in lowered or "busy" in lowered:
        what = (
            f"{path} stayed locked by another process for longer than the busy timeout. Stop the other "
            "process, or use PostgreSQL in DATABASE_URL for several bot processes."
        )
    else:
        what = f"cannot open {path}. Check the path in DATABASE_URL and that the disk is not full."
    return f"SQLite database from DATABASE_URL: {what} (driver said: {detail})"


def describe_postgres_failure(url: DatabaseURL, detail: str) -> str:
    """A sentence for a PostgreSQL server that could not be reached or refused the login."""
    lowered = detail.lower()
    if "password" in lowered or "authentication" in lowered:
        what = "the server refused the login. Check the user name and password in DATABASE_URL."
    elif "does not exist" in lowered and "database" in lowered:
        name = url.url.database or "?"
        what = f"the database {name!r} does not exist. Create it (createdb {name}) or fix DATABASE_URL."
    elif "permission denied" in lowered:
        what = "the user lacks a permission it needs. Grant it, or use the database owner in DATABASE_URL."
    else:
        what = (
            "the server cannot be reached. Check that PostgreSQL is running, that host and port in "
            "DATABASE_URL are right, and that a firewall does not block the connection."
        )
    return f"PostgreSQL database DATABASE_URL={url.safe}: {what} (driver said: {detail})"
