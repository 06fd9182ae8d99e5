"""One enrolment in a process of its own, for the kill -9 tests in ``tests/test_faults.py``.

``python -m tests.support.enroll_child DATABASE_URL WORKER_URLS CLIP GUILD_ID USER_ID`` (token in
``WORKER_TOKEN``) runs the bot's ``EnrollmentService`` on the clip against the workers and the database,
printing ``stage NAME`` as each stage starts and ``enrolled`` at the end, so that a test can SIGKILL it
at a chosen stage.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from bot.enrollment import EnrollmentService, Stage, Upload
from bot.policy import Actor, Policy
from core.settings import worker_url_list
from storage import Database, Repositories
from worker.client import HttpSpeechService


async def enroll(database_url: str, urls: str, clip: Upload, guild_id: int, user_id: int) -> None:
    async def progress(stage: Stage) -> None:
        print(f"stage {stage}", flush=True)

    speech = HttpSpeechService(worker_url_list(urls), os.environ["WORKER_TOKEN"])
    async with Database(database_url) as db, speech:
        service = EnrollmentService(Repositories(db), speech, Policy())
        await service.enroll(guild_id, Actor(user_id, frozenset(), False), clip, progress=progress)
    print("enrolled", flush=True)


if __name__ == "__main__":
    url, workers, path, guild, user = sys.argv[1:]
    upload = Upload(Path(path).read_bytes(), Path(path).name, "audio/ogg")
    asyncio.run(enroll(url, workers, upload, int(guild), int(user)))
