"""Graceful shutdown of the bot, in process through the Discord harness: while a message is playing, the
bot refuses new commands, ignores new messages, tells the channel it is restarting, leaves voice and
closes its storage and speech service, well inside Docker's 10 s.

The signal wiring of a real ``voxclone bot`` process is tested in ``test_startup.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bot.client import build_bot
from bot.player import Utterance
from bot.replies import RESTARTING_REPLY
from bot.shutdown import RESTART_NOTICE, shut_down
from core.settings import load_settings
from tests.support.discord_harness import MEMBER_DEFAULT, Harness, HarnessVoiceClient, snowflake
from worker.types import SpeechRequest, VoiceEmbedding

CHUNK = b"\0\0" * 2400  # 100 ms of 24 kHz s16le silence


async def endless_speech(request: SpeechRequest) -> AsyncIterator[bytes]:
    """A synthesis that never ends by itself (a long message still playing at shutdown)."""
    while True:
        yield CHUNK
        await asyncio.sleep(0.02)


def _voice() -> VoiceEmbedding:
    return VoiceEmbedding("test", np.zeros((1, 2, 4), np.float32), np.zeros((1, 4, 1), np.float32))


async def test_shutdown_while_playing(tmp_path: Path) -> None:
    # WORKER_URLS: the bot creates (and so owns and must close) an HTTP speech service, as in production.
    settings = load_settings(
        {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/voxclone.db", "WORKER_URLS": "http://127.0.0.1:9"}
    )
    bot = build_bot(settings)
    bot.voice_cls = HarnessVoiceClient
    harness = Harness(bot)
    ada = snowflake()
    fx = harness.add_guild(members=[(ada, "ada", [])], everyone_permissions=MEMBER_DEFAULT)
    await bot.setup_hook()
    bot.loop = asyncio.get_running_loop()
    speech: Any = bot.speech
    speech.synthesize = endless_speech
    closed: list[str] = []
    close_speech = speech.aclose

    async def aclose() -> None:
        closed.append("speech")
        await close_speech()

    speech.aclose = aclose
    messages: list[object] = []

    async def on_message(message: object) -> None:
        messages.append(message)

    bot.add_listener(on_message)
    try:
        harness.join_voice(fx, ada)
        utterance = Utterance(SpeechRequest("hello there", "en", _voice()), ada, ada, fx.text_channel.id)
        await bot.players.get(fx.guild).enqueue(fx.voice_channel, utterance)
        await asyncio.wait_for(utterance.started.wait(), 10)
        voice = HarnessVoiceClient.instances[-1]
        assert voice.is_connected()

        stopping = asyncio.create_task(shut_down(bot))
        await asyncio.sleep(0)  # shut_down has begun: commands are refused from here on
        await harness.slash(fx, fx.guild.get_member(ada), "voice status")
        bot.dispatch("message", object())
        took = await asyncio.wait_for(stopping, 10)
    finally:
        await bot.close()
        harness.close()

    assert took < 10
    texts = [c.text for c in harness.responses()]
    assert RESTARTING_REPLY in texts, texts  # the command was answered, not run
    posted = [c for c in harness.calls if c.path == f"/channels/{fx.text_channel.id}/messages"]
    assert [c.content for c in posted] == [RESTART_NOTICE]
    assert messages == []
    assert not voice.is_connected() and voice.disconnects >= 1
    assert utterance.finished.is_set()
    assert closed == ["speech"]
    with pytest.raises(RuntimeError):
        bot.database.engine  # noqa: B018  (closed: the engine is gone)
    assert bot.is_closed()
