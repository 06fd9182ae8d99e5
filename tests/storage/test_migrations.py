"""Migrations: up to head, the same schema as storage.schema, killed half-way, newer than us, check."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection

from storage import Database, check, current_revision, head_revision, upgrade
from storage.errors import MigrationError
from storage.migrate import alembic_config
from storage.schema import TABLE_NAMES, consent_challenges, consent_records, metadata, voice_profiles
from tests.storage.conftest import start_child

HEAD = "0005_challenge_language"


async def _tables(url: str) -> set[str]:
    async with Database(url) as db, db.read() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_to_head_then_check_is_healthy(database_url: str) -> None:
    assert await upgrade(database_url) == head_revision() == HEAD
    assert await upgrade(database_url) == HEAD  # a second run is a no-op
    report = await check(database_url)
    assert report.healthy, report.problems
    assert report.problems == []
    assert report.current_revision == report.head_revision == HEAD
    assert "healthy" in report.summary()
    assert set(TABLE_NAMES) <= await _tables(database_url)


async def test_migration_creates_exactly_the_schema(database_url: str) -> None:
    await upgrade(database_url)

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with Database(database_url) as db, db.read() as conn:
        assert await conn.run_sync(diff) == []


async def test_migration_killed_half_way_is_completed_by_the_next_upgrade(
    database_url: str, subprocess_env: dict[str, str]
) -> None:
    child = await start_child("upgrade", database_url, "0001", env=subprocess_env)
    try:
        assert child.stderr is not None
        line = await asyncio.wait_for(child.stderr.readline(), timeout=60)
        assert line.decode().strip() == "migration 0001 paused", line
        # Three tables exist inside the child's uncommitted transaction at this point.
        child.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(child.wait(), timeout=30) == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
        await child.communicate()
    # Nothing of the half-done migration survived: no tables, no revision.
    assert await _tables(database_url) == set()
    report = await check(database_url)
    assert not report.healthy
    assert any("voxclone db upgrade" in p for p in report.problems)
    assert await upgrade(database_url) == HEAD
    report = await check(database_url)
    assert report.healthy, report.problems


async def test_database_newer_than_the_code_is_refused_clearly(database_url: str) -> None:
    await upgrade(database_url)
    async with Database(database_url) as db, db.write() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0042_from_the_future'"))
    with pytest.raises(MigrationError, match="does not know") as info:
        await upgrade(database_url)
    assert "DATABASE_URL" in info.value.message and "0042_from_the_future" in info.value.message
    report = await check(database_url)
    assert not report.healthy
    assert any("newer voxclone" in p for p in report.problems)
    assert await current_revision(database_url) == "0042_from_the_future"  # upgrade changed nothing


async def test_two_upgraders_at_once_both_succeed(database_url: str) -> None:
    results = await asyncio.gather(upgrade(database_url), upgrade(database_url))
    assert results == [HEAD, HEAD]
    assert (await check(database_url)).healthy


async def test_check_reports_a_missing_table(database_url: str) -> None:
    await upgrade(database_url)
    async with Database(database_url) as db, db.write() as conn:
        await conn.execute(text("DROP TABLE voice_shares"))
    report = await check(database_url)
    assert not report.healthy
    assert any("'voice_shares' is missing" in p for p in report.problems)
    assert "NOT healthy" in report.summary()


async def test_check_on_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "voxclone.db"
    report = await check(f"sqlite+aiosqlite:///{path}")
    assert not report.healthy
    assert "voxclone db upgrade" in report.problems[0]
    assert not path.parent.exists()


def _overwrite_last_page(path: Path, page: int = 4096) -> None:
    """Garble the newest page (audit rows), leaving the schema on page 1 readable."""
    data = bytearray(path.read_bytes())
    last = len(data) // page - 1
    data[last * page : (last + 1) * page] = b"\xa5" * page
    path.write_bytes(bytes(data))


async def test_check_reports_sqlite_corruption(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    async with Database(sqlite_url) as db, db.write() as conn:
        for i in range(300):  # a few pages of audit rows and index entries
            await conn.execute(
                text("INSERT INTO audit_log (guild_id, action, details, at) VALUES (:g, 'x', '{}', :at)"),
                {"g": i, "at": f"2026-11-01 12:00:{i % 60:02d}.000000"},
            )
    _overwrite_last_page(Path(sqlite_url.removeprefix("sqlite+aiosqlite:///")))
    report = await check(sqlite_url)
    assert not report.healthy
    assert any("integrity" in p and "backup" in p for p in report.problems), report.problems


async def _upgrade_to(url: str, revision: str) -> None:
    def run(conn: Connection) -> None:
        command.upgrade(alembic_config(conn), revision)
        conn.commit()

    async with Database(url, _foreign_keys=False) as db, db.engine.connect() as conn:
        await conn.run_sync(run)


async def test_0002_keeps_only_the_consent_for_the_voice_in_use(database_url: str) -> None:
    """Databases from before 0002 piled up a consent recording per re-enrolment: only the newest stays."""
    await _upgrade_to(database_url, "0001")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    record = {"statement_version": "v", "phrase": "p", "transcript": "p", "match_score": 0.0,
              "recorded_at": now, "clip_hash": "0" * 64, "recording_mime": "audio/ogg"}  # fmt: skip
    async with Database(database_url) as db, db.write() as conn:
        for user_id in (1, 2):
            await conn.execute(
                voice_profiles.insert().values(
                    guild_id=9, user_id=user_id, language="en", created_at=now, enrolled_at=now
                )
            )
        ids = {
            row.user_id: row.id
            for row in await conn.execute(select(voice_profiles.c.id, voice_profiles.c.user_id))
        }
        for n in range(4):  # member 1 enrolled four times
            await conn.execute(
                consent_records.insert().values(profile_id=ids[1], recording=b"old%d" % n, **record)
            )
        await conn.execute(consent_records.insert().values(profile_id=ids[2], recording=b"only", **record))

    assert await upgrade(database_url) == HEAD

    async with Database(database_url) as db, db.read() as conn:
        rows = await conn.execute(select(consent_records.c.profile_id, consent_records.c.recording))
        assert sorted((r.profile_id, bytes(r.recording)) for r in rows) == [
            (ids[1], b"old3"),
            (ids[2], b"only"),
        ]
    assert (await check(database_url)).healthy


async def _columns(url: str, table: str) -> set[str]:
    async with Database(url) as db, db.read() as conn:
        return {c["name"] for c in await conn.run_sync(lambda c: inspect(c).get_columns(table))}


async def test_0005_phrases_issued_before_are_english_and_downgrade_drops_the_language(
    database_url: str,
) -> None:
    await _upgrade_to(database_url, "0004_api_voices")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    async with Database(database_url) as db, db.write() as conn:
        await conn.execute(  # the columns of 0004: no language
            consent_challenges.insert().values(
                guild_id=1, user_id=2, phrase="an open english phrase", issued_at=now, expires_at=now
            )
        )
    assert await upgrade(database_url) == HEAD
    async with Database(database_url) as db, db.read() as conn:
        rows = (await conn.execute(select(consent_challenges.c.phrase, consent_challenges.c.language))).all()
    assert [tuple(r) for r in rows] == [("an open english phrase", "en")]

    await _downgrade_to(database_url, "0004_api_voices")
    assert "language" not in await _columns(database_url, "consent_challenges")
    async with Database(database_url) as db, db.read() as conn:
        phrases = (await conn.execute(text("SELECT phrase FROM consent_challenges"))).scalars().all()
    assert phrases == ["an open english phrase"]  # the rows stay, without their language
    assert await upgrade(database_url) == HEAD
    assert (await check(database_url)).healthy


async def _downgrade_to(url: str, revision: str) -> None:
    def run(conn: Connection) -> None:
        command.downgrade(alembic_config(conn), revision)
        conn.commit()

    async with Database(url, _foreign_keys=False) as db, db.engine.connect() as conn:
        await conn.run_sync(run)
