"""Opening databases: pragmas, write locking, clear errors for bad URLs and files, two writers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from storage import Database, Repositories, check, upgrade
from storage.errors import StorageError
from storage.schema import audit_log, guild_settings, voice_shares
from tests.storage._child import OWNER, SHARED_GUILD
from tests.storage.conftest import finish_child, start_child
from tests.storage.factories import T0, enroll

SECRET = "hunter2-do-not-print"


def _assert_actionable(exc: StorageError) -> None:
    assert "DATABASE_URL" in exc.message
    assert SECRET not in exc.message
    assert SECRET not in str(exc)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"not a url at all :{SECRET}@", "is not a database URL"),
        (f"mysql+aiomysql://root:{SECRET}@db/voxclone", "does not support"),
        ("sqlite:///data/voxclone.db", "sqlite+aiosqlite://"),
        (f"postgresql://bot:{SECRET}@db/voxclone", "postgresql+asyncpg://"),
        ("sqlite+aiosqlite://", "in-memory"),
        ("sqlite+aiosqlite:///:memory:", "in-memory"),
        (f"postgresql+asyncpg://bot:{SECRET}@/voxclone", "has no host"),
    ],
)
async def test_unusable_url_is_a_clear_storage_error(url: str, expected: str) -> None:
    with pytest.raises(StorageError, match=re.escape(expected)) as info:
        Database(url)
    _assert_actionable(info.value)
    with pytest.raises(StorageError):
        await upgrade(url)
    with pytest.raises(StorageError):
        await check(url)


async def test_unreachable_postgres_names_the_variable_and_hides_the_password() -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    url = f"postgresql+asyncpg://bot:{SECRET}@127.0.0.1:9/voxclone"
    began = time.monotonic()
    with pytest.raises(StorageError, match="cannot be reached") as info:
        async with Database(url):
            pass
    assert time.monotonic() - began < 5
    _assert_actionable(info.value)
    assert "***" in info.value.message


@pytest.mark.postgres
async def test_wrong_postgres_password_says_so(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password=SECRET).render_as_string(hide_password=False)
    with pytest.raises(StorageError, match="refused the login") as info:
        await upgrade(url)
    _assert_actionable(info.value)


async def test_text_file_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("shopping list: eggs, milk\n" * 50)
    with pytest.raises(StorageError, match="is not an SQLite database") as info:
        await upgrade(f"sqlite+aiosqlite:///{path}")
    _assert_actionable(info.value)
    assert path.read_text().startswith("shopping list")  # untouched


async def test_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StorageError, match="Cannot create the folder") as info:
        async with Database(f"sqlite+aiosqlite:///{blocker / 'voxclone.db'}"):
            pass
    _assert_actionable(info.value)


def _writable_base() -> Path:
    # Not under pytest's tmp_path: its parents are private to the user running the suite.
    base = Path(tempfile.mkdtemp(prefix="voxclone-ro-"))
    base.chmod(0o755)
    (base / "data").mkdir()
    return base


def _make_read_only(folder: Path) -> None:
    for p in folder.iterdir():
        p.chmod(0o644)
    folder.chmod(0o555)


def _remove(base: Path) -> None:
    (base / "data").chmod(0o755)
    shutil.rmtree(base)


def _without_root_powers() -> list[str]:
    """A command prefix that takes away root's power to ignore file modes (it stays uid 0)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running the suite as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE"
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
async def test_read_only_folder(existing: bool, subprocess_env: dict[str, str]) -> None:
    base = _writable_base()
    try:
        url = f"sqlite+aiosqlite:///{base / 'data' / 'voxclone.db'}"
        if existing:
            await upgrade(url)
        _make_read_only(base / "data")
        child = await start_child("open", url, env=subprocess_env, prefix=_without_root_powers())
        result = await finish_child(child, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("STORAGE_ERROR "), result.stdout
        assert "DATABASE_URL" in result.stdout
        assert "read-only" in result.stdout and "writable" in result.stdout
    finally:
        _remove(base)


async def test_sqlite_connection_settings(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    async with Database(sqlite_url) as db:
        for ctx in (db.read(), db.write()):
            async with ctx as conn:
                pragmas = {
                    name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                    for name in (
                        "journal_mode",
                        "foreign_keys",
                        "synchronous",
                        "busy_timeout",
                        "secure_delete",
                    )
                }
            assert pragmas == {
                "journal_mode": "wal",
                "foreign_keys": 1,
                "synchronous": 2,
                "busy_timeout": 10000,
                "secure_delete": 1,
            }


async def test_write_takes_the_sqlite_write_lock_at_begin(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        async with Database(sqlite_url) as db:
            async with db.read():
                other.execute("BEGIN IMMEDIATE")  # a reader does not block a writer
                other.execute("ROLLBACK")
            async with db.write():
                # Nothing executed yet, and the lock is already held: BEGIN IMMEDIATE.
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()


async def test_two_processes_write_at_once(database_url: str, subprocess_env: dict[str, str]) -> None:
    await upgrade(database_url)
    async with Database(database_url) as db:
        await enroll(Repositories(db), SHARED_GUILD, OWNER)
    per_process = 200
    start_at = time.time() + 3.0  # both children are up by then
    children = [
        await start_child(
            "write", database_url, str(worker), str(per_process), str(start_at), env=subprocess_env
        )
        for worker in (1, 2)
    ]
    results = await asyncio.gather(*(finish_child(child) for child in children))
    for result in results:
        assert "locked" not in result.stderr.lower(), result.stderr
        assert result.returncode == 0, result.stderr
    seconds = [float(result.stdout.strip()) for result in results]
    print(f"2x{per_process} writes on {database_url.split(':')[0]}: {max(seconds):.2f} s")
    async with Database(database_url) as db, db.read() as conn:
        shares = await conn.scalar(select(func.count()).select_from(voice_shares))
        updates = await conn.scalar(
            select(func.count()).select_from(audit_log).where(audit_log.c.action == "settings.updated")
        )
        settings_rows = await conn.scalar(select(func.count()).select_from(guild_settings))
    assert shares == per_process  # half of each child's transactions, from both children
    assert updates == per_process
    assert settings_rows == 1


@pytest.mark.postgres
async def test_read_transactions_cannot_write_on_postgres(postgres_url: str) -> None:
    # SQLite has no read-only transactions; read() there only avoids taking the write lock.
    await upgrade(postgres_url)
    async with Database(postgres_url) as db:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            async with db.read() as conn:
                await conn.execute(guild_settings.insert().values(guild_id=1))


async def test_a_lock_held_too_long_is_an_outage_not_a_crash(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await upgrade(sqlite_url)
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///"), isolation_level=None)
    try:
        async with Database(sqlite_url, busy_timeout_s=0.2) as db:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(StorageError, match="try again in a minute") as info:
                async with db.write() as conn:
                    await conn.execute(
                        audit_log.insert().values(guild_id=1, action=SECRET, details={}, at=T0)
                    )
            other.execute("ROLLBACK")
            async with db.read():
                pass  # the database is usable again
    finally:
        other.close()
    assert SECRET not in info.value.message
    assert "locked" in caplog.text and SECRET not in caplog.text  # parameters never reach the log
