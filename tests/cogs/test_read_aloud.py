"""Read-aloud channels through the real bot: an admin picks a channel, members in the bot's voice channel
post messages (gateway MESSAGE_CREATE), and each is spoken in its author's own voice, in order — with the
real engines, real storage and the harness's recorded Discord. Voices are stored directly (one real
embedding per member); the enrolment itself is tested in test_enroll_speak."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import numpy as np
import pytest
import pytest_asyncio

from bot.read_aloud import MAX_WAITING_PER_MEMBER, NO_INTENT
from tests.cogs.conftest import World, dump, open_world, wait_for
from tests.support.discord_harness import HarnessVoiceClient, snowflake
from tests.support.voices import embed_espeak, spy_synthesis, store_voice
from worker.local import LocalSpeechService
from worker.types import EmbeddingResult, SpeechRequest

pytestmark = pytest.mark.asyncio(loop_scope="session")

CY_ID = snowflake()  # a member in the voice channel without a voice


@pytest_asyncio.fixture(loop_scope="session")
async def ra(speech: LocalSpeechService, tmp_path: Path) -> AsyncIterator[World]:
    async with open_world(speech, tmp_path, MESSAGE_CONTENT_INTENT="true") as world:
        yield world


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def voices(
    speech: LocalSpeechService, tmp_path_factory: pytest.TempPathFactory
) -> tuple[EmbeddingResult, EmbeddingResult]:
    """Two different voices: espeak-ng's default and a female variant, pitched apart."""
    tmp = tmp_path_factory.mktemp("read-aloud")
    return await embed_espeak(speech, tmp), await embed_espeak(speech, tmp, "en-us+f3", pitch=80)


async def _listeners(*events: str) -> None:
    names = {f"discord.py: {event}" for event in events}
    await asyncio.gather(*[t for t in asyncio.all_tasks() if t.get_name() in names])


async def post(world: World, author_id: int, content: str, channel_id: int | None = None) -> dict[str, Any]:
    """A member posts a text message (MESSAGE_CREATE), handled fully."""
    h, fx = world.harness, world.fx
    payload = h.message_payload(
        channel_id or fx.text_channel.id, {"content": content}, author_id=author_id, guild_id=fx.guild.id
    )
    world.bot._connection.parse_message_create(payload)  # type: ignore[arg-type]
    await _listeners("on_message")
    return payload


async def edit(world: World, payload: dict[str, Any], content: str) -> None:
    edited = {**payload, "content": content, "edited_timestamp": "2026-11-26T00:01:00+00:00"}
    world.bot._connection.parse_message_update(edited)  # type: ignore[arg-type]
    await _listeners("on_raw_message_edit", "on_message_edit")


async def delete(world: World, payload: dict[str, Any]) -> None:
    data = {"id": payload["id"], "channel_id": payload["channel_id"], "guild_id": payload["guild_id"]}
    world.bot._connection.parse_message_delete(data)  # type: ignore[arg-type]
    await _listeners("on_raw_message_delete", "on_message_delete")


def replies(world: World) -> list[str]:
    return [
        c.content
        for c in world.harness.calls
        if c.method == "POST" and (c.payload or {}).get("message_reference")
    ]


def same_voice(request: SpeechRequest, voice: EmbeddingResult) -> bool:
    mine, theirs = request.embedding, voice.embedding
    return bool(
        np.array_equal(mine.speaker_embedding, theirs.speaker_embedding)
        and np.array_equal(mine.gpt_cond_latent, theirs.gpt_cond_latent)
    )


async def setup_channel(world: World, voices: tuple[EmbeddingResult, EmbeddingResult]) -> None:
    """Cloning on (no cooldown), the text channel read aloud, Ada and Bob with voices, Cy without."""
    h, fx = world.harness, world.fx
    await world.enable_cloning(cooldown=0)
    await h.slash(fx, world.admin, "consent read-aloud", channels={"channel": fx.text_channel})
    saved = h.last_text()
    assert "Saved." in saved and f"<#{fx.text_channel.id}>" in saved, dump(world)
    await store_voice(world.bot.repos, fx.guild.id, world.ada.id, voices[0])
    await store_voice(world.bot.repos, fx.guild.id, world.bob.id, voices[1])
    h.add_member(fx, CY_ID, "cy")
    for uid in (world.ada.id, world.bob.id, CY_ID):
        h.join_voice(fx, uid)


async def idle(world: World) -> None:
    player = world.bot.players.existing(world.fx.guild.id)
    assert player is not None
    await wait_for(lambda: player.current is None and not player.queue, timeout=180)


async def test_members_are_read_aloud_in_their_own_voices_in_order(
    ra: World, voices: tuple[EmbeddingResult, EmbeddingResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    h, fx = ra.harness, ra.fx
    await setup_channel(ra, voices)
    seen = spy_synthesis(ra.bot.speech, monkeypatch)

    await h.slash(fx, ra.ada, "join")
    assert f"Joined <#{fx.voice_channel.id}>" in h.last_text() and "read aloud" in h.last_text(), dump(ra)
    vc = HarnessVoiceClient.instances[-1]
    assert vc.is_connected() and vc.channel.id == fx.voice_channel.id

    first = "Hello everyone, I am typing and you hear me."
    second = "And I answer in my own voice."
    french = "Bonjour à tous, je vais parler en français maintenant."
    await post(ra, ra.ada.id, first)
    await post(ra, ra.bob.id, second)
    await post(ra, ra.admin.id, "The admin is not in the voice channel.")
    await post(ra, CY_ID, "I have not enrolled a voice.")
    await post(ra, CY_ID, "Still no voice here.")
    edited = await post(ra, ra.ada.id, "This one will be edited.")
    deleted = await post(ra, ra.bob.id, "This one will be deleted.")
    await post(ra, ra.ada.id, french)
    await post(ra, ra.bob.id, "Not a read-aloud channel.", channel_id=fx.voice_channel.id)
    await edit(ra, edited, "This one was edited.")
    await delete(ra, deleted)
    await idle(ra)

    assert [r.text for r in seen] == [first, second, french], dump(ra)
    assert [r.language for r in seen] == ["en", "en", "fr"]
    assert (
        same_voice(seen[0], voices[0]) and same_voice(seen[1], voices[1]) and same_voice(seen[2], voices[0])
    )
    posted = h.all_text()
    assert posted.count("ada is speaking in their own cloned voice") == 1, dump(ra)
    assert posted.count("bob is speaking in their own cloned voice") == 1, dump(ra)
    hints = [r for r in replies(ra) if "no cloned voice" in r]
    assert len(hints) == 1 and "cy" in hints[0] and "/enroll" in hints[0], dump(ra)
    assert len(replies(ra)) == 1, dump(ra)  # nothing said to the admin, nor about the withdrawn ones

    await h.slash(fx, ra.ada, "leave")
    assert "Left the voice channel" in h.last_text(), dump(ra)
    player = ra.bot.players.existing(fx.guild.id)
    assert player is not None and player.channel_id is None and not vc.is_connected()
    await post(ra, ra.ada.id, "The bot has left, so nobody reads this.")
    await asyncio.sleep(0.2)
    assert len(seen) == 3


async def test_bursts_are_bounded_and_a_member_skips_their_own(
    ra: World, voices: tuple[EmbeddingResult, EmbeddingResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    h, fx = ra.harness, ra.fx
    await setup_channel(ra, voices)
    seen = spy_synthesis(ra.bot.speech, monkeypatch)
    await h.slash(fx, ra.bob, "join")
    for i in range(MAX_WAITING_PER_MEMBER + 3):
        await post(ra, ra.ada.id, f"Message number {i + 1} of a long burst of messages.")
    waiting = [r for r in replies(ra) if "still waiting to be read" in r]
    assert len(waiting) == 1, dump(ra)  # said once, not for every message over the limit
    player = ra.bot.players.existing(fx.guild.id)
    assert player is not None
    await wait_for(lambda: player.current is not None, timeout=120)
    await h.slash(fx, ra.ada, "skip")
    assert "Skipped" in h.last_text(), dump(ra)
    await h.slash(fx, ra.ada, "stop")
    await idle(ra)
    assert 1 <= len(seen) <= MAX_WAITING_PER_MEMBER + 1


async def test_without_the_message_content_intent_it_says_so(
    world: World, voices: tuple[EmbeddingResult, EmbeddingResult]
) -> None:
    h, fx = world.harness, world.fx
    await world.enable_cloning(cooldown=0)
    await h.slash(fx, world.admin, "consent read-aloud", channels={"channel": fx.text_channel})
    assert "Read-aloud channels are not active" in h.last_text(), dump(world)
    h.join_voice(fx, world.ada.id)
    await h.slash(fx, world.ada, "join")
    assert NO_INTENT in h.last_text(), dump(world)
    await h.slash(fx, world.admin, "consent read-aloud", {"action": "clear"})
    settings = await world.bot.repos.settings.get(fx.guild.id)
    assert settings.read_aloud_channel_ids == ()


async def test_in_a_french_server_the_channel_reads_french(
    ra: World, voices: tuple[EmbeddingResult, EmbeddingResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies and announcements in a read-aloud channel are for everyone there: the server's language,
    although the member who started the session (/join) uses an English client."""
    h, fx = ra.harness, ra.fx
    fx.guild.preferred_locale = discord.Locale.french
    await setup_channel(ra, voices)
    seen = spy_synthesis(ra.bot.speech, monkeypatch)
    await h.slash(fx, ra.ada, "join")  # harness.locale: en-US
    await post(ra, CY_ID, "I have not enrolled a voice.")
    await post(ra, ra.ada.id, "Hello everyone, I am typing and you hear me.")
    await idle(ra)
    assert len(seen) == 1, dump(ra)
    hints = [r for r in replies(ra) if "cy" in r]
    assert hints == [
        "cy, vous n'avez pas de voix clonée sur ce serveur : vos messages ici ne sont donc pas lus à voix "
        "haute. `/enroll` en crée une."
    ], dump(ra)
    assert "🔊 ada parle avec sa propre voix clonée (générée par IA)." in h.all_text(), dump(ra)


async def test_join_needs_a_voice_channel(ra: World) -> None:
    await ra.harness.slash(ra.fx, ra.ada, "join")
    assert "Join a voice channel first" in ra.harness.last_text(), dump(ra)
