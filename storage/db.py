"""The database handle: one async SQLAlchemy engine for SQLite (aiosqlite) or PostgreSQL (asyncpg).

``async with Database(url) as db:`` opens and probes it; ``db.write()`` / ``db.read()`` hand out a
connection in a transaction. SQLite runs in WAL with foreign keys, ``synchronous=FULL``,
``secure_delete`` and ``BEGIN IMMEDIATE`` writes (why: ``_install_sqlite_events``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage.errors import StorageError
from storage.urls import (
    DatabaseURL,
    describe_postgres_failure,
    describe_sqlite_failure,
    parse_database_url,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S: Final = 10.0  # how long an SQLite writer waits for another writer's lock
CONNECT_TIMEOUT_S: Final = 10.0  # how long to wait for a PostgreSQL server to answer
_WRITE_OPTION: Final = "voxclone_write"  # execution option: emit BEGIN IMMEDIATE on SQLite
UNAVAILABLE: Final = (
    "The voice database is unavailable right now; try again in a minute. "
    "(The bot's operator finds the reason in the log.)"
)


class Database:
    """An opened database. Use as ``async with Database(url) as db``; see the module docstring."""

    def __init__(
        self, url: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S, _foreign_keys: bool = True
    ) -> None:
        self.url: DatabaseURL = parse_database_url(url)
        self._busy_timeout_s = busy_timeout_s
        # Migrations run with foreign keys off on SQLite: rebuilding a table (Alembic batch mode)
        # drops it, and with foreign keys on that drop would cascade into its children.
        self._foreign_keys = _foreign_keys
        self._engine: AsyncEngine | None = None
        self._write_engine: AsyncEngine | None = None
        self._read_engine: AsyncEngine | None = None
        self._opened = False  # the probe succeeded: later failures are outages, not set-up errors

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        return self.url.dialect

    @property
    def engine(self) -> AsyncEngine:
        """The engine whose connections start write transactions (used by the migrations)."""
        if self._write_engine is None:
            raise RuntimeError("Database is not open: use `async with Database(url) as db`")
        return self._write_engine

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the engine and prove the database can be written; raise :class:`StorageError` if not."""
        if self._engine is not None:
            return
        if self.url.sqlite_path is not None:
            _prepare_sqlite_path(self.url.sqlite_path)
        engine = self._create_engine()
        self._engine = engine
        self._write_engine = engine.execution_options(**{_WRITE_OPTION: True})
        # PostgreSQL enforces read(): a write inside it fails instead of slipping through.
        postgres = self.dialect == "postgresql"
        self._read_engine = engine.execution_options(postgresql_readonly=True) if postgres else engine
        try:
            async with self.write() as conn:
                await conn.execute(text("SELECT 1"))
        except BaseException:
            await self.close()
            raise
        self._opened = True
        log.info("database opened dialect=%s url=%s", self.dialect, self.url.safe)

    async def close(self) -> None:
        engine, self._engine, self._write_engine, self._read_engine = self._engine, None, None, None
        self._opened = False
        if engine is not None:
            await engine.dispose()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success."""
        async with self._transaction(self.engine) as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction: a consistent snapshot that never takes the write lock."""
        if self._read_engine is None:
            raise RuntimeError("Database is not open: use `async with Database(url) as db`")
        async with self._transaction(self._read_engine) as conn:
            yield conn

    @asynccontextmanager
    async def _transaction(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        try:
            async with engine.begin() as conn:
                yield conn
        except (OperationalError, InterfaceError, OSError) as exc:
            # The database is down, locked past the busy timeout, full or gone: not a bug.
            raise self._translate(exc) from exc
        except DBAPIError as exc:
            if self._opened:
                raise  # a constraint or a statement the caller (a repository) reasons about
            raise self._translate(exc) from exc  # while opening: not a database, unreadable, ...

    def _translate(self, exc: DBAPIError | OSError) -> StorageError:
        """A StorageError for a driver failure; the details go to the log, never the SQL parameters."""
        orig: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        detail = f"{type(orig).__name__}: {orig}".strip()
        log.warning("database error dialect=%s url=%s error=%s", self.dialect, self.url.safe, detail)
        if self._opened:
            return StorageError(UNAVAILABLE)
        if self.url.sqlite_path is not None:
            return StorageError(describe_sqlite_failure(self.url.sqlite_path, str(orig)))
        return StorageError(describe_postgres_failure(self.url, detail))

    def _create_engine(self) -> AsyncEngine:
        try:
            if self.dialect == "sqlite":
                engine = create_async_engine(
                    self.url.url,
                    hide_parameters=True,
                    connect_args={"timeout": self._busy_timeout_s},
                )
                _install_sqlite_events(engine, self._busy_timeout_s, foreign_keys=self._foreign_keys)
                return engine
            return create_async_engine(
                self.url.url,
                hide_parameters=True,
                pool_pre_ping=True,
                connect_args={"timeout": CONNECT_TIMEOUT_S},
            )
        except (SQLAlchemyError, TypeError, ValueError) as exc:
            raise StorageError(
                f"DATABASE_URL {self.url.safe!r} could not be used: {exc}. Remove unknown query parameters."
            ) from None


def _prepare_sqlite_path(path: Path) -> None:
    """Create the database's folder; refuse early where SQLite would fail with a vaguer error."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"Cannot create the folder {folder} for the SQLite database in DATABASE_URL ({exc.strerror}). "
            "Create it yourself or point DATABASE_URL at a writable location."
        ) from None
    if path.is_dir():
        raise StorageError(f"DATABASE_URL points at {path}, which is a folder. Name a file inside it.")
    writable = os.access(folder, os.W_OK | os.X_OK) and (not path.exists() or os.access(path, os.W_OK))
    if not writable:
        raise StorageError(describe_sqlite_failure(path, "attempt to write a readonly database"))


def _install_sqlite_events(engine: AsyncEngine, busy_timeout_s: float, *, foreign_keys: bool) -> None:
    """Per connection: WAL, foreign keys (cascading deletes), a busy timeout, ``synchronous=FULL`` (consent
    and deletion records survive a power cut), ``secure_delete`` (deleted voices and recordings are zeroed
    in the file, not left in free pages; older copies in the WAL last until it is overwritten or removed).
    Writes begin with ``BEGIN IMMEDIATE`` (the documented pysqlite/aiosqlite pattern): the write lock is
    taken or waited for before anything is read, so two writers queue on the busy timeout instead of
    failing with "database is locked"."""
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module; `_on_begin` emits it instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL may itself wait for another process's lock.
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            mode = cursor.fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError(
                    "SQLite database from DATABASE_URL: cannot switch it to WAL mode (the file system "
                    "may not support shared memory, e.g. a network share). Keep the database on a "
                    "local disk, or use PostgreSQL."
                )
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA synchronous = FULL")
            # Deleted voices and consent recordings are overwritten in the file, not only unlinked
            # (many builds default to this; some do not).
            cursor.execute("PRAGMA secure_delete = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")
