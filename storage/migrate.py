"""Schema migrations, run programmatically (``voxclone db upgrade`` / ``db check`` and bot start-up).

:func:`upgrade` brings a database to the newest revision and :func:`check` reports whether one
is healthy: SQLite's integrity and foreign-key checks, the revision against this code's head,
and every table and column of ``storage.schema`` present.

Each migration is one transaction, and concurrent upgraders queue on a lock (a PostgreSQL
advisory lock; a lock file beside an SQLite database), so a killed ``upgrade`` or two bot
processes starting together leave a database that the next ``upgrade`` completes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from storage.checks import CheckReport, inspect_database
from storage.db import Database
from storage.errors import MigrationError
from storage.urls import parse_database_url

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
# Test hook: the revision pause_point() stops in (tests/storage/_child.py sets it in a child process).
pause_at: str | None = None
_PG_LOCK_KEY: Final = 0x766F78636C6F6E65  # "voxclone": one advisory lock for all upgraders


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the migrations inside this package (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("voxclone ships no migrations: the installation is incomplete; reinstall it.")
    return head


def known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def newer_revision_message(safe_url: str, current: str) -> str:
    return (
        f"The database in DATABASE_URL ({safe_url}) is at schema revision {current!r}, which this "
        f"version of voxclone does not know (its newest is {head_revision()!r}): a newer voxclone "
        "has upgraded it. Run that newer voxclone, or restore a backup made before the upgrade."
    )


def pause_point(revision: str) -> None:
    """Test hook: if :data:`pause_at` names this revision, announce and sleep.

    Lets a test SIGKILL ``upgrade`` deterministically in the middle of a migration (its child process
    sets :data:`pause_at`). Never set in production: no setting or variable reaches it.
    """
    if pause_at != revision:
        return
    sys.stderr.write(f"migration {revision} paused\n")
    sys.stderr.flush()
    time.sleep(600)


async def upgrade(url: str) -> str:
    """Migrate the database in ``url`` to the newest revision and return that revision.

    Raises ``StorageError`` if the database cannot be opened and ``MigrationError`` if it is newer
    than this code or a migration fails (the failed migration is rolled back).
    """
    head = head_revision()
    # The SQLite lock is taken before opening: opening writes (WAL mode, a writability check), and
    # a second upgrader doing that during the first one's migration could wait past the busy timeout.
    # Migrations run with SQLite foreign keys off: a table rebuild must not cascade (see db.py).
    async with (
        _sqlite_upgrade_lock(parse_database_url(url).sqlite_path),
        Database(url, _foreign_keys=False) as db,
        _postgres_upgrade_lock(db),
    ):
        before = await _run(db, _upgrade_sync)
    if before != head:
        log.info("database migrated from=%s to=%s url=%s", before, head, db.url.safe)
    return head


async def check(url: str) -> CheckReport:
    """Report whether the database is healthy; raises ``StorageError`` only if it cannot be opened."""
    parsed = parse_database_url(url)
    head = head_revision()
    path = parsed.sqlite_path
    if path is not None and not path.exists():
        return CheckReport(
            healthy=False,
            problems=[f"There is no database at {path} yet: run `voxclone db upgrade` to create it."],
            dialect=parsed.dialect,
            current_revision=None,
            head_revision=head,
        )
    async with Database(url) as db, db.engine.connect() as conn:
        return await conn.run_sync(inspect_database, head, known_revisions(), newer_revision_message)


async def current_revision(url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""
    async with Database(url) as db:
        return await _run(db, _current)


def _current(conn: Connection) -> str | None:
    revision = MigrationContext.configure(conn).get_current_revision()
    conn.commit()
    return revision


def _upgrade_sync(conn: Connection) -> str | None:
    before = _current(conn)
    if before is not None and before not in known_revisions():
        raise MigrationError(
            newer_revision_message(conn.engine.url.render_as_string(hide_password=True), before)
        )
    command.upgrade(alembic_config(conn), "head")
    conn.commit()  # reading the version table may have opened a transaction that is still open
    return before


async def _run(db: Database, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` on a write connection, turning driver and Alembic failures into MigrationError."""
    try:
        async with db.engine.connect() as conn:
            return await conn.run_sync(fn)
    except MigrationError:
        raise
    except (DBAPIError, CommandError) as exc:
        detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        raise MigrationError(
            f"Migrating the database in DATABASE_URL ({db.url.safe}) failed: {type(detail).__name__}: "
            f"{detail}. Each migration is one transaction, so the database is still at its last good "
            "revision: fix the cause and run `voxclone db upgrade` again."
        ) from exc


@asynccontextmanager
async def _sqlite_upgrade_lock(path: Path | None) -> AsyncIterator[None]:
    """Hold the lock file beside an SQLite database while migrating (released if the process dies).

    When the folder cannot be created or written, no lock is taken: opening the database then fails
    with the message that explains it (see ``storage.db``).
    """
    if path is None:
        yield
        return
    lock_path = path.with_name(path.name + ".migrate-lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@asynccontextmanager
async def _postgres_upgrade_lock(db: Database) -> AsyncIterator[None]:
    """Hold the one upgrade advisory lock on a PostgreSQL database while migrating."""
    if db.url.sqlite_path is not None:
        yield
        return
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
            await conn.commit()
