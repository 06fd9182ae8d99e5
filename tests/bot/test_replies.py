"""Replies: every failure becomes a sentence; an expired interaction token falls back to channel or DM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from bot.errors import CloningDisabled
from bot.replies import GENERIC_FAILURE, VoxcloneTree, respond, token_expired, user_message
from bot.runtime import check_voice_dependencies
from core.errors import NotAudio
from tests.support.discord_harness import Harness, snowflake
from worker.errors import QualityRejected, WorkerUnavailable
from worker.types import QualityReport


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (CloningDisabled("Voice cloning is off in this server."), "Voice cloning is off in this server."),
        (NotAudio("That file is not audio."), "That file is not audio."),
        (WorkerUnavailable("The speech worker is not reachable right now."), "not reachable"),
        (app_commands.NoPrivateMessage(), "only works inside a server"),
        (app_commands.MissingPermissions(["manage_guild"]), "Manage Server"),
        (RuntimeError("secret internals at 0xdeadbeef"), GENERIC_FAILURE),
        (KeyError("token=abc"), GENERIC_FAILURE),
    ],
)
def test_user_message(error: BaseException, expected: str) -> None:
    text = user_message(error)
    assert expected in text
    assert "0xdeadbeef" not in text and "token=abc" not in text and "Traceback" not in text


def test_quality_rejection_lists_the_reasons() -> None:
    report = QualityReport(
        False,
        2.0,
        1.0,
        -50.0,
        -40.0,
        0.0,
        -80.0,
        30.0,
        [],
        reasons=["Too little speech: 1.0 s.", "Too quiet: speak closer to the microphone."],
    )
    text = user_message(QualityRejected("Too little speech: 1.0 s.", report=report))
    assert text.count("Too little speech") == 1 and "• Too quiet" in text


@pytest.fixture
def harness():
    bot = commands.Bot(
        command_prefix="!", intents=discord.Intents(guilds=True, members=True), tree_cls=VoxcloneTree
    )
    h = Harness(bot)
    yield h
    h.close()


def _interaction(h: Harness, age: timedelta) -> discord.Interaction:
    fx = h.add_guild(members=[(snowflake(), "ada", [])])
    member = next(m for m in fx.guild.members if m.name == "ada")
    payload = h._base(fx, member, 2, {"id": str(snowflake()), "name": "x", "type": 1})
    payload["id"] = str(discord.utils.time_snowflake(datetime.now(UTC) - age))
    return discord.Interaction(data=payload, state=h.bot._connection)


async def test_fresh_token_answers_the_interaction(harness: Harness) -> None:
    interaction = _interaction(harness, timedelta(seconds=1))
    assert not token_expired(interaction)
    await respond(interaction, "done", ephemeral=True)
    call = harness.calls[-1]
    assert call.path.endswith("/callback") and call.ephemeral and call.content == "done"


async def test_expired_token_posts_public_replies_in_the_channel(harness: Harness) -> None:
    interaction = _interaction(harness, timedelta(minutes=16))
    assert token_expired(interaction)
    await respond(interaction, "your enrolment finished", ephemeral=False)
    call = harness.calls[-1]
    assert call.path == f"/channels/{interaction.channel_id}/messages"
    assert call.content == f"<@{interaction.user.id}> your enrolment finished"


async def test_expired_token_sends_private_replies_by_dm(harness: Harness) -> None:
    interaction = _interaction(harness, timedelta(minutes=16))
    await respond(interaction, "only for you", ephemeral=True)
    assert harness.calls[-2].path == "/users/@me/channels"
    assert harness.calls[-1].path.endswith("/messages") and harness.calls[-1].content == "only for you"
    assert not any(c.path == f"/channels/{interaction.channel_id}/messages" for c in harness.calls)


def test_voice_dependencies_are_present_here() -> None:
    check_voice_dependencies()  # PyNaCl, davey and libopus: installed by make / .ci/run
    assert discord.opus.is_loaded()


def test_missing_voice_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from core.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "davey" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"davey.*pip install 'discord.py\[voice\]"):
        check_voice_dependencies()
