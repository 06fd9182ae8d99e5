"""Voice messages through the real bot: espeak-ng speech as Discord voice messages (OGG/Opus), the real
tiny.en Whisper, real ffmpeg and storage, and a real chat completions server on loopback (the fake LLM).

Messages arrive as gateway MESSAGE_CREATE events (``parse_message_create``), message commands through
the command tree; replies, the requests the model received and the queued utterances are asserted.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import jiwer
import pytest
import pytest_asyncio

from bot.assistant import DEFAULT_SYSTEM_PROMPT, AssistantClient
from bot.client import build_bot
from bot.settings import load_settings
from cogs.voice_messages import VoiceMessages
from tests.cogs.conftest import ADA_ID, ADMIN_ID, ADMIN_ROLE, BOB_ID, World, dump, wait_for
from tests.support.discord_harness import MANAGE_GUILD, MEMBER_DEFAULT, Harness, HarnessVoiceClient, Recorded
from tests.support.fake_llm import FakeLLM, Reply, closed_port_url
from worker.local import LocalSpeechService

pytestmark = pytest.mark.asyncio(loop_scope="session")

VOICE_FLAG = 1 << 13  # MessageFlags.voice
KEY = "sk-test-voice-0123456789abcdef"
SAID = "the quick brown fox jumps over the lazy dog"
QUESTION = "what is the capital of france"
ANSWER = ["Paris is the capital of France.", "It is known for the Eiffel Tower.", "Have a lovely day!"]

MakeWorld = Callable[..., Awaitable[World]]


@pytest_asyncio.fixture(loop_scope="session")
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def make_world(speech: LocalSpeechService, tmp_path: Path) -> AsyncIterator[MakeWorld]:
    """Like the ``world`` fixture, with the environment given (intent, LLM settings)."""
    opened: list[World] = []

    async def make(**env: str) -> World:
        settings = load_settings(
            {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/vm{len(opened)}.db", "DEVICE": "cpu", **env}
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
        bot.enrollment.make_phrase = lambda: (
            "please clone my voice, the quick brown fox jumps over the lazy dog, thank you"
        )
        world = World(bot, harness, fx, tmp_path)
        opened.append(world)
        return world

    yield make
    for world in opened:
        await world.bot.close()
        world.harness.close()


@pytest_asyncio.fixture(loop_scope="session")
async def vm(make_world: MakeWorld, llm: FakeLLM) -> World:
    """Message Content intent on, the assistant pointed at the fake model with short timeouts."""
    world = await make_world(
        MESSAGE_CONTENT_INTENT="true", LLM_BASE_URL=llm.base_url, LLM_API_KEY=KEY, LLM_MODEL="fake-model"
    )
    set_llm(world, llm.base_url)
    return world


def cog(world: World) -> VoiceMessages:
    found = world.bot.get_cog("VoiceMessages")
    assert isinstance(found, VoiceMessages)
    return found


def set_llm(world: World, url: str, chunk_timeout_s: float = 3.0) -> None:
    service = cog(world).service
    assert service.llm is not None
    config = replace(service.llm.config, base_url=url, chunk_timeout_s=chunk_timeout_s, connect_timeout_s=2.0)
    old, service.llm = service.llm, AssistantClient(config)
    world.bot.loop.create_task(old.aclose())


async def mode(world: World, mode: str, **settings: Any) -> None:
    await world.enable_cloning(cooldown=0, **settings)
    await world.harness.slash(
        world.fx,
        world.admin,
        "consent voice-messages",
        {"mode": mode},
        channels={"channel": world.fx.text_channel},
    )


def voice_message(world: World, author_id: int, text: str, *, name: str = "vm", **att: Any) -> dict[str, Any]:
    path = world.voice_message(f"{name}-{time.monotonic_ns()}", text)
    return message_with(world, author_id, path.read_bytes(), f"{name}.ogg", "audio/ogg", **att)


def message_with(
    world: World,
    author_id: int,
    data: bytes,
    filename: str,
    content_type: str,
    *,
    duration_s: float | None = 3.0,
    voice: bool = True,
    channel_id: int | None = None,
) -> dict[str, Any]:
    h, fx = world.harness, world.fx
    att = h.attachment(filename, data, content_type, duration_s=duration_s)
    return h.message_payload(
        channel_id or fx.text_channel.id,
        {},
        author_id=author_id,
        attachments=[att],
        flags=VOICE_FLAG if voice else 0,
        guild_id=fx.guild.id,
    )


async def deliver(world: World, payload: dict[str, Any], times: int = 1) -> None:
    """MESSAGE_CREATE from the gateway (``times`` copies, as a resumed session replays), handled to the end."""
    for _ in range(times):
        world.bot._connection.parse_message_create(payload)  # type: ignore[arg-type]
    listeners = [t for t in asyncio.all_tasks() if t.get_name() == "discord.py: on_message"]
    await asyncio.gather(*listeners)


def replies(world: World) -> list[Recorded]:
    """Messages the bot posted as replies to a message."""
    return [
        c for c in world.harness.calls if c.method == "POST" and (c.payload or {}).get("message_reference")
    ]


def wer(expected: str, heard: str) -> float:
    clean = jiwer.Compose(
        [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]
    )
    return float(jiwer.wer(expected, heard, reference_transform=clean, hypothesis_transform=clean))
