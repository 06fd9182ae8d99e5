"""A separate OS process for the storage tests: ``python -m tests.storage._child COMMAND URL ...``.

- ``upgrade URL [REVISION]``: run the migrations, pausing inside REVISION when given
  (``storage.migrate.pause_at``: the killed-migration test SIGKILLs it there).
- ``write URL WORKER N START_AT``: wait until the epoch time START_AT, then make N write
  transactions through the repositories, alternating an upsert of one shared guild-settings row
  and a voice share (which reads the owner's profile before it writes: the pattern that fails
  with "database is locked" under a deferred BEGIN). Prints the seconds it took; any exception
  ends the process non-zero with its message on stderr. The test enrolls OWNER first.
- ``open URL``: open the database and report the StorageError message (read-only folder test).
"""

from __future__ import annotations

import asyncio
import sys
import time

from storage import Database, Repositories, migrate, upgrade
from storage.errors import StorageError

SHARED_GUILD = 4242
OWNER = 7


async def _write(url: str, worker: int, count: int, start_at: float) -> None:
    async with Database(url) as db:
        repos = Repositories(db)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter()
        for i in range(count):
            if i % 2 == 0:
                await repos.settings.update(SHARED_GUILD, updated_by=worker, max_text_length=100 + i)
            else:
                await repos.shares.grant(SHARED_GUILD, OWNER, grantee_user_id=worker * 1_000_000 + i)
        print(f"{time.perf_counter() - began:.3f}")


async def _open(url: str) -> None:
    try:
        async with Database(url):
            print("OPENED")
    except StorageError as exc:
        print(f"STORAGE_ERROR {exc.message}")


def main(argv: list[str]) -> None:
    command, url = argv[0], argv[1]
    if command == "upgrade":
        migrate.pause_at = argv[2] if len(argv) > 2 else None
        print(asyncio.run(upgrade(url)))
    elif command == "write":
        asyncio.run(_write(url, int(argv[2]), int(argv[3]), float(argv[4])))
    elif command == "open":
        asyncio.run(_open(url))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
