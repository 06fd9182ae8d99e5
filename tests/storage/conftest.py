"""Storage fixtures: every database test runs on SQLite (a temp file) and on PostgreSQL.

PostgreSQL comes from ``VOXCLONE_TEST_POSTGRES_URL`` (``.ci/run`` starts a throwaway server and
sets it), e.g. ``postgresql+asyncpg://voxtest:secret@127.0.0.1:55432/voxtest``. Its role needs
``CREATEDB``: each test gets a fresh database ``voxtest_<random>``, dropped afterwards.
Without the variable the PostgreSQL cases fail under CI (``CI`` set) and are skipped locally.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from storage import Database, Repositories, upgrade

POSTGRES_ENV = "VOXCLONE_TEST_POSTGRES_URL"
REPO_ROOT = Path(__file__).resolve().parents[2]


def postgres_admin_url() -> str:
    """The server URL from the environment, or fail (CI) / skip (local) with the reason."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if url:
        return url
    message = (
        f"{POSTGRES_ENV} is not set: the storage suite must also run against PostgreSQL. "
        ".ci/run starts a server and sets it; locally, start one and export "
        f"{POSTGRES_ENV}=postgresql+asyncpg://USER:PASSWORD@127.0.0.1:PORT/DB (USER needs CREATEDB)."
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _asyncpg_dsn(sqlalchemy_url: str, database: str | None = None) -> str:
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def _admin_execute(admin_url: str, sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    admin = postgres_admin_url()
    name = f"voxtest_{secrets.token_hex(6)}"
    await _admin_execute(admin, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'voxclone.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (not migrated)."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated, open database of each kind."""
    await upgrade(database_url)
    async with Database(database_url) as db:
        yield db


@pytest.fixture
def repos(database: Database) -> Repositories:
    return Repositories(database)


@pytest.fixture
def subprocess_env() -> Iterator[dict[str, str]]:
    """Environment for child Python processes that import this checkout's packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    yield env


PYTHON = sys.executable


@dataclass(frozen=True)
class ChildResult:
    returncode: int
    stdout: str
    stderr: str


async def start_child(
    *args: str, env: dict[str, str], prefix: Sequence[str] = ()
) -> asyncio.subprocess.Process:
    """Start ``python -m tests.storage._child ARGS`` in this checkout (``prefix`` wraps the command)."""
    return await asyncio.create_subprocess_exec(
        *prefix,
        PYTHON,
        "-m",
        "tests.storage._child",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish_child(process: asyncio.subprocess.Process, timeout: float = 300) -> ChildResult:
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return ChildResult(process.returncode, out.decode(), err.decode())
