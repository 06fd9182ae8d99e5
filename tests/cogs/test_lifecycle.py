"""Automatic deletion through the real bot: a member leaving, the bot leaving a server, retention expiry
(the sweep called with a chosen ``now``, and the hourly loop started by ``on_ready``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import discord
import pytest

from bot.policy import Actor
from storage import GuildSettings
from storage.errors import StorageError
from tests.cogs.conftest import World, wait_for
from tests.cogs.test_voice import Cloned, cloned, eventually, queued, rows_about, store_voice
from tests.support.discord_harness import snowflake

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
]
__all__ = ["cloned"]  # the module-scoped voice fixture, shared with test_voice

NOW = datetime.now(UTC)


def dispatch(world: World, event: str, *args: object) -> None:
    """A gateway event through discord.py's own dispatch (each listener runs as its own task)."""
    world.bot.loop = asyncio.get_running_loop()  # set by login() on a real connection
    world.bot.dispatch(event, *args)


def lifecycle(world: World) -> object:
    cog = world.bot.get_cog("Lifecycle")
    assert cog is not None
    return cog


async def test_member_leaving_deletes_their_data(world: World, cloned: Cloned) -> None:
    repos, gid = world.bot.repos, world.fx.guild.id
    ada = await store_voice(world, world.ada.id, cloned)
    await store_voice(world, world.bob.id, cloned)
    await repos.shares.grant(gid, world.bob.id, world.ada.id)
    await repos.shares.grant(gid, world.ada.id, world.bob.id)
    ada_item, bob_item = queued(world, world.ada.id, cloned), queued(world, world.bob.id, cloned)

    # GUILD_MEMBER_REMOVE carries only the guild id and the user: no member cache needed.
    user = discord.User(state=world.bot._connection, data=world.harness.user_payload(world.ada.id, "ada"))
    event = discord.RawMemberRemoveEvent({"guild_id": str(gid), "user": {}}, user)  # type: ignore[typeddict-item]
    dispatch(world, "raw_member_remove", event)

    async def gone() -> bool:
        return await repos.profiles.get(gid, world.ada.id) is None

    await eventually(gone)
    left = await rows_about(world, world.ada.id, [ada.id])
    assert not any(left.values()), left
    assert await repos.profiles.get_voice(gid, world.bob.id) is not None
    assert await repos.shares.granted(gid, world.bob.id) == []  # Bob's share with Ada went with her
    player = world.bot.players.existing(gid)
    assert player is not None and list(player.queue) == [bob_item] and ada_item.finished.is_set()
    entry = (await repos.audit.recent(gid, 1))[0]
    assert (entry.action, entry.actor_id, entry.subject_id) == ("voice.deleted", None, world.ada.id)
    assert entry.details["reason"] == "member_left"


async def test_bot_leaving_a_server_deletes_that_server(world: World, cloned: Cloned) -> None:
    h, repos, gid = world.harness, world.bot.repos, world.fx.guild.id
    other = h.add_guild(name="Other Server", members=[(world.ada.id, "ada", [])])
    await repos.settings.update(gid, updated_by=world.admin.id, cloning_enabled=True, cooldown_s=60)
    await store_voice(world, world.ada.id, cloned)
    await store_voice(world, world.bob.id, cloned)
    await store_voice(world, world.ada.id, cloned, guild_id=other.guild.id)
    queued(world, world.ada.id, cloned)
    actor = Actor.from_member(world.ada)
    world.bot.policy.record_spoke(gid, actor)

    dispatch(world, "guild_remove", world.fx.guild)

    async def gone() -> bool:
        return not await repos.profiles.list_for_guild(gid)

    await eventually(gone)
    assert await repos.settings.get(gid) == GuildSettings(guild_id=gid)  # back to defaults: cloning off
    assert [e.action for e in await repos.audit.recent(gid, 10)] == ["guild.purged"]
    assert world.bot.players.existing(gid) is None
    world.bot.policy.check_cooldown(gid, actor, GuildSettings(guild_id=gid, cooldown_s=60))  # forgotten
    # Another server's data is untouched.
    assert await repos.profiles.get_voice(other.guild.id, world.ada.id) is not None


def member_fetches(world: World) -> list[str]:
    return [c.path for c in world.harness.calls if c.method == "GET" and "/members/" in c.path]


async def test_catch_up_deletes_what_departures_while_offline_left_behind(
    world: World, cloned: Cloned
) -> None:
    h, repos, gid = world.harness, world.bot.repos, world.fx.guild.id
    assert world.fx.guild.chunked  # the bot has the whole member list, as after start-up chunking
    await store_voice(world, world.ada.id, cloned)
    await store_voice(world, world.bob.id, cloned)
    await repos.shares.grant(gid, world.ada.id, world.admin.id)  # the admin only received a share
    h.left_while_offline(world.fx, world.bob.id)
    h.left_while_offline(world.fx, world.admin.id)
    removed_us = snowflake()  # a server that removed the bot while it was offline
    await repos.settings.update(removed_us, updated_by=None, cloning_enabled=True)
    await store_voice(world, world.ada.id, cloned, guild_id=removed_us)

    report = await lifecycle(world).catch_up()  # type: ignore[attr-defined]

    assert (report.servers_purged, report.members_deleted, report.members_unchecked) == (1, 2, 0)
    assert await repos.profiles.get(gid, world.bob.id) is None
    assert await repos.profiles.get_voice(gid, world.ada.id) is not None  # still a member: kept
    assert await repos.shares.granted(gid, world.ada.id) == []  # the admin's received share is gone
    assert not await repos.profiles.list_for_guild(removed_us)
    assert [e.action for e in await repos.audit.recent(removed_us, 5)] == ["guild.purged"]
    deleted = [e for e in await repos.audit.recent(gid, 10) if e.action == "voice.deleted"]
    assert sorted((e.subject_id, e.details["reason"]) for e in deleted) == sorted(
        [(world.bob.id, "member_left"), (world.admin.id, "member_left")]
    )
    assert member_fetches(world) == []  # the member list was complete: no need to ask Discord
    again = await lifecycle(world).catch_up()  # type: ignore[attr-defined]
    assert (again.servers_purged, again.members_deleted, again.members_unchecked) == (0, 0, 0)


async def test_catch_up_asks_discord_when_the_member_list_is_incomplete(world: World, cloned: Cloned) -> None:
    h, repos, gid = world.harness, world.bot.repos, world.fx.guild.id
    for member in (world.ada, world.bob, world.admin):
        await store_voice(world, member.id, cloned)
    h.uncache(world.fx, world.ada.id)  # still a member, only not in the bot's cache
    h.left_while_offline(world.fx, world.bob.id)

    report = await lifecycle(world).catch_up()  # type: ignore[attr-defined]
    assert (report.members_deleted, report.members_unchecked) == (1, 0)
    assert await repos.profiles.get(gid, world.ada.id) is not None
    assert await repos.profiles.get(gid, world.bob.id) is None
    assert sorted(member_fetches(world)) == sorted(
        f"/guilds/{gid}/members/{uid}" for uid in (world.ada.id, world.bob.id)
    )

    h.uncache(world.fx, world.admin.id)
    h.member_fetch_status = 503  # Discord cannot say: nothing is deleted on a guess
    report = await lifecycle(world).catch_up()  # type: ignore[attr-defined]
    assert (report.members_deleted, report.members_unchecked) == (0, 2)
    assert await repos.profiles.get(gid, world.admin.id) is not None
    assert await repos.profiles.get(gid, world.ada.id) is not None


async def test_catch_up_leaves_servers_of_other_shards_alone(world: World, cloned: Cloned) -> None:
    repos = world.bot.repos
    world.bot.shard_count, world.bot.shard_id = 2, 0
    theirs, ours = 12345 << 22, 12346 << 22  # Discord's shard formula: (id >> 22) % shard_count
    for guild_id in (theirs, ours):
        await store_voice(world, world.ada.id, cloned, guild_id=guild_id)

    report = await lifecycle(world).catch_up()  # type: ignore[attr-defined]
    assert report.servers_purged == 1
    assert await repos.profiles.get(theirs, world.ada.id) is not None  # another process's server
    assert await repos.profiles.get(ours, world.ada.id) is None


async def test_retention_sweep_deletes_only_expired_voices(world: World, cloned: Cloned) -> None:
    repos, gid = world.bot.repos, world.fx.guild.id
    no_retention = snowflake()
    await repos.settings.update(gid, updated_by=None, retention_days=30)
    ada = await store_voice(world, world.ada.id, cloned, at=NOW - timedelta(days=40))  # never used
    await store_voice(world, world.bob.id, cloned, at=NOW - timedelta(days=40))
    await repos.profiles.touch_last_used(gid, world.bob.id, now=NOW - timedelta(days=10))
    await store_voice(world, world.admin.id, cloned, at=NOW - timedelta(days=5))
    await store_voice(world, world.ada.id, cloned, guild_id=no_retention, at=NOW - timedelta(days=400))
    await repos.challenges.issue(gid, world.bob.id, "an old phrase", now=NOW - timedelta(days=3))
    await repos.challenges.issue(gid, world.admin.id, "a fresh phrase", now=NOW)
    queued(world, world.ada.id, cloned)

    report = await lifecycle(world).sweep(NOW)  # type: ignore[attr-defined]

    assert (report.voices_deleted, report.voices_skipped, report.challenges_purged) == (1, 0, 1)
    left = await rows_about(world, world.ada.id, [ada.id])
    assert not any(left.values()), left
    assert await repos.profiles.get(gid, world.bob.id) is not None  # used 10 days ago
    assert await repos.profiles.get(gid, world.admin.id) is not None  # enrolled 5 days ago
    assert await repos.profiles.get(no_retention, world.ada.id) is not None  # that server keeps voices
    assert await repos.challenges.active(gid, world.admin.id) is not None
    player = world.bot.players.existing(gid)
    assert player is not None and not player.queue
    entry = (await repos.audit.recent(gid, 1))[0]
    assert (entry.action, entry.actor_id, entry.details["reason"]) == ("voice.deleted", None, "retention")

    later = await lifecycle(world).sweep(NOW + timedelta(days=25))  # type: ignore[attr-defined]
    assert later.voices_deleted == 1
    assert await repos.profiles.get(gid, world.bob.id) is None
    assert await repos.profiles.get(gid, world.admin.id) is not None


async def test_retention_loop_starts_when_ready(
    world: World, cloned: Cloned, caplog: pytest.LogCaptureFixture
) -> None:
    repos, gid = world.bot.repos, world.fx.guild.id
    await repos.settings.update(gid, updated_by=None, retention_days=1)
    await store_voice(world, world.ada.id, cloned, at=NOW - timedelta(days=2))
    cog = lifecycle(world)
    cog.first_sweep_delay_s = 0  # type: ignore[attr-defined]
    assert not cog.retention.is_running()  # type: ignore[attr-defined]

    dispatch(world, "ready")

    async def gone() -> bool:
        return await repos.profiles.get(gid, world.ada.id) is None

    await eventually(gone)
    assert cog.retention.is_running()  # type: ignore[attr-defined]
    assert cog.caught_up  # type: ignore[attr-defined]  # the catch-up ran before the first sweep
    dispatch(world, "ready")  # a reconnect fires it again: the one loop goes on, nothing fails
    await asyncio.sleep(0.1)
    assert cog.retention.is_running()  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_failed_sweep_does_not_end_the_loop(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cog = lifecycle(world)
    cog.first_sweep_delay_s = 0  # type: ignore[attr-defined]
    calls: list[datetime | None] = []

    async def broken(now: datetime | None = None) -> None:
        calls.append(now)
        raise StorageError("The database is not reachable.")

    monkeypatch.setattr(cog, "sweep", broken)
    dispatch(world, "ready")
    await wait_for(lambda: bool(calls))
    await asyncio.sleep(0.1)
    assert cog.retention.is_running()  # type: ignore[attr-defined]
    assert "retention sweep failed" in caplog.text
