"""Deleting voice data through :class:`VoiceDataService` with real storage (SQLite), a real policy and real
players: what a whole server's deletion removes, and what it leaves alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import discord
import numpy as np
import pytest
from discord.ext import commands

from bot.errors import CooldownActive
from bot.player import Utterance
from bot.policy import Actor, Policy
from bot.speaking import Players, SpeakingService
from bot.voice_data import VoiceDataService
from storage import Database, GuildSettings, Repositories, upgrade
from tests.bot.test_player import ToneService
from tests.storage.factories import enroll
from tests.support.discord_harness import GuildFixture, Harness, HarnessVoiceClient, snowflake
from worker.types import SpeechRequest, VoiceEmbedding

ADA, BOB = snowflake(), snowflake()
COOLDOWN = GuildSettings(guild_id=0, cooldown_s=60)


@dataclass
class Setup:
    service: VoiceDataService
    repos: Repositories
    players: Players
    policy: Policy
    here: GuildFixture
    other: GuildFixture


@pytest.fixture
def harness() -> Iterator[Harness]:
    bot = commands.Bot(
        command_prefix="!", intents=discord.Intents(guilds=True, members=True, voice_states=True)
    )
    harness = Harness(bot)
    yield harness
    harness.close()


@pytest.fixture
async def setup(harness: Harness, tmp_path: Path) -> AsyncIterator[Setup]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'voxclone.db'}"
    await upgrade(url)

    async def notify(channel_id: int, text: str) -> None:
        return None

    async with Database(url) as db:
        repos, policy = Repositories(db), Policy()
        players = Players(ToneService(seconds=30, delay_s=0.05), notify, voice_cls=HarnessVoiceClient)
        service = VoiceDataService(repos, SpeakingService(repos, policy, players))
        try:
            yield Setup(service, repos, players, policy, harness.add_guild(), harness.add_guild(name="Other"))
        finally:
            await players.close()


def utterance(fx: GuildFixture, owner_id: int) -> Utterance:
    embedding = VoiceEmbedding("m", np.zeros((1, 2, 4), np.float32), np.zeros((1, 4, 1), np.float32))
    return Utterance(
        SpeechRequest("hello", "en", embedding),
        requester_id=owner_id,
        voice_owner_id=owner_id,
        text_channel_id=fx.text_channel.id,
    )


async def test_deleting_a_server_removes_its_data_player_and_cooldowns(setup: Setup) -> None:
    s, repos = setup, setup.repos
    gid, other_id = s.here.guild.id, s.other.guild.id
    await repos.settings.update(gid, updated_by=ADA, cloning_enabled=True, allow_sharing=True)
    for guild_id in (gid, other_id):
        await enroll(repos, guild_id, ADA, seed=1)
        await enroll(repos, guild_id, BOB, seed=2)
        await repos.shares.grant(guild_id, ADA, BOB)
        await repos.assistant.opt_in(guild_id, ADA)
        await repos.challenges.issue(guild_id, ADA, "purple elephants sing at noon")
    playing, waiting = utterance(s.here, ADA), utterance(s.here, BOB)
    player = s.players.get(s.here.guild)
    await player.enqueue(s.here.voice_channel, playing)
    await player.enqueue(s.here.voice_channel, waiting)
    elsewhere = s.players.get(s.other.guild)
    ada = Actor(ADA, frozenset(), is_admin=False)
    s.policy.record_spoke(gid, ada)
    s.policy.record_spoke(other_id, ada)

    report = await s.service.delete_guild(gid)

    counts = (report.profiles, report.embeddings, report.consent_records, report.shares, report.challenges)
    assert (report.guild_id, report.settings_deleted) == (gid, True)
    assert counts == (2, 4, 2, 1, 1)  # two voices of two arrays each, their consents, one share, one phrase
    assert report.assistant_opt_ins == 1
    # Storage: nothing of the server but the one purge entry; settings back to the defaults.
    assert await repos.profiles.list_for_guild(gid) == []
    assert await repos.settings.get(gid) == GuildSettings(guild_id=gid)
    assert await repos.assistant.opted_in(gid) == []
    assert await repos.challenges.active(gid, ADA) is None
    assert [e.action for e in await repos.audit.recent(gid, 10)] == ["guild.purged"]
    # Playback: the player is closed and what it held is finished, not left waiting.
    assert s.players.existing(gid) is None
    await asyncio.wait_for(asyncio.gather(playing.finished.wait(), waiting.finished.wait()), 10)
    # Cooldowns: forgotten here (no CooldownActive), kept in the other server.
    s.policy.check_cooldown(gid, ada, COOLDOWN)
    with pytest.raises(CooldownActive):
        s.policy.check_cooldown(other_id, ada, COOLDOWN)
    # The other server keeps everything.
    assert s.players.existing(other_id) is elsewhere
    assert {p.user_id for p in await repos.profiles.list_for_guild(other_id)} == {ADA, BOB}
    assert await repos.shares.is_shared(other_id, ADA, BOB)
    assert await repos.assistant.is_opted_in(other_id, ADA)
    assert await repos.challenges.active(other_id, ADA) is not None


async def test_deleting_a_server_with_nothing_stored_is_harmless(setup: Setup) -> None:
    report = await setup.service.delete_guild(setup.here.guild.id)

    assert (report.profiles, report.embeddings, report.consent_records) == (0, 0, 0)
    assert setup.players.existing(setup.here.guild.id) is None
