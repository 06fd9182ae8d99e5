"""Automatic deletion: a member leaving, the bot leaving a server, and voices past their retention period.

The listeners use raw events so they work without the member cache. The retention sweep runs hourly
in the background, starting a little after the bot is ready; :meth:`Lifecycle.sweep` is the same work
as a plain method (tests call it with a chosen ``now``). Before its first sweep, a process catches up on
what it missed while it was offline (:meth:`Lifecycle.catch_up`): servers that removed the bot and
members who left.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

import discord
from discord.ext import commands, tasks

from storage import DeletionReport
from storage.types import utcnow

if TYPE_CHECKING:
    from bot.client import VoxcloneBot

log = logging.getLogger("voxclone.cogs.lifecycle")

SWEEP_INTERVAL_H: Final = 1.0  # hours between retention sweeps
FIRST_SWEEP_DELAY_S: Final = 30.0  # s after ready: let start-up settle before the first sweep


@dataclass(frozen=True)
class SweepReport:
    """What one retention sweep removed."""

    voices_deleted: int
    voices_skipped: int  # used or re-enrolled between listing and deleting: kept
    challenges_purged: int


@dataclass(frozen=True)
class CatchUpReport:
    """What the start-up catch-up removed, and what it could not check."""

    servers_purged: int
    members_deleted: int
    members_unchecked: int  # Discord did not answer whether they are still members: their data stays


class Lifecycle(commands.Cog):
    """Deletes voice data when its reason to exist ends."""

    def __init__(self, bot: VoxcloneBot) -> None:
        self.bot = bot
        self.first_sweep_delay_s = FIRST_SWEEP_DELAY_S
        self.caught_up = False

    async def cog_unload(self) -> None:
        self.retention.cancel()

    # ---- the work ---------------------------------------------------------------------------------

    async def forget_member(self, guild_id: int, user_id: int, *, reason: str) -> DeletionReport:
        """Delete one member's data in one server (the bot deciding, not a member)."""
        deleted = await self.bot.voice_data.delete_member(guild_id, user_id, actor_id=None, reason=reason)
        return deleted.report

    async def sweep(self, now: datetime | None = None) -> SweepReport:
        """Delete voices unused past their server's retention period, and purge old consent phrases."""
        now = now or utcnow()
        profiles = self.bot.repos.profiles
        deleted = skipped = 0
        for listed in await profiles.list_expired(now):
            # Used or re-enrolled since it was listed: its retention clock restarted, keep it.
            if await profiles.get(listed.guild_id, listed.user_id) != listed:
                skipped += 1
                continue
            report = await self.forget_member(listed.guild_id, listed.user_id, reason="retention")
            deleted += int(report.profile_deleted)
        purged = await self.bot.repos.challenges.purge_expired(now)
        if deleted or skipped or purged:
            log.info(
                "retention sweep",
                extra={"voices_deleted": deleted, "voices_skipped": skipped, "challenges_purged": purged},
            )
        return SweepReport(deleted, skipped, purged)

    async def catch_up(self) -> CatchUpReport:
        """Delete what departures while the bot was offline left behind.

        A server this connection is responsible for (its shards) but is no longer in is purged, as
        ``on_guild_remove`` would have; in the others, members with stored data who are no longer
        members lose it, as ``on_raw_member_remove`` would have done. A server in an outage and a member
        Discord cannot answer for are left alone: deletion needs certainty.
        """
        present = {guild.id: guild for guild in self.bot.guilds}
        servers = members = unchecked = 0
        for guild_id in sorted(await self.bot.repos.profiles.guild_ids()):
            if guild_id not in present and self._on_my_shards(guild_id):
                await self.bot.voice_data.delete_guild(guild_id)
                servers += 1
        for guild in present.values():
            if guild.unavailable:
                continue
            for user_id in sorted(await self.bot.repos.profiles.member_ids(guild.id)):
                gone = await self._has_left(guild, user_id)
                if gone is None:
                    unchecked += 1
                elif gone:
                    await self.forget_member(guild.id, user_id, reason="member_left")
                    members += 1
        report = CatchUpReport(servers, members, unchecked)
        if servers or members or unchecked:
            log.info(
                "caught up on departures while offline",
                extra={"servers_purged": servers, "members_deleted": members, "members_unchecked": unchecked},
            )
        return report

    def _on_my_shards(self, guild_id: int) -> bool:
        """Whether this connection receives ``guild_id``'s events (Discord's shard formula)."""
        count = self.bot.shard_count or 1
        mine = getattr(self.bot, "shard_ids", None) or [self.bot.shard_id or 0]
        return (guild_id >> 22) % count in mine

    @staticmethod
    async def _has_left(guild: discord.Guild, user_id: int) -> bool | None:
        """True if ``user_id`` is no longer a member, False if they are, None if Discord cannot say."""
        if guild.get_member(user_id) is not None:
            return False
        if guild.chunked:  # the member list is complete and they are not on it
            return True
        try:
            await guild.fetch_member(user_id)
        except discord.NotFound:
            return True
        except discord.HTTPException:
            return None
        return False

    # ---- events -----------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_member_remove(self, payload: discord.RawMemberRemoveEvent) -> None:
        me = self.bot.user
        if me is not None and payload.user.id == me.id:
            return  # the bot itself: on_guild_remove deletes the whole server's data
        await self.forget_member(payload.guild_id, payload.user.id, reason="member_left")

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        # Only a real removal (kicked, banned, server deleted): an outage is `on_guild_unavailable`.
        await self.bot.voice_data.delete_guild(guild.id)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        # `on_ready` fires again after a reconnect: start the loop once.
        if not self.retention.is_running():
            self.retention.start()

    # ---- the background loop ----------------------------------------------------------------------

    @tasks.loop(hours=SWEEP_INTERVAL_H)
    async def retention(self) -> None:
        if not self.caught_up:
            try:
                report = await self.catch_up()
                self.caught_up = not report.members_unchecked  # unanswered ones: next hour, again
            except Exception:  # storage or Discord trouble: the next hour tries again
                log.exception("catching up on departures while offline failed")
        try:
            await self.sweep()
        except Exception:  # one failed sweep must not end the loop: the next hour tries again
            log.exception("retention sweep failed")

    @retention.before_loop
    async def _before_retention(self) -> None:
        await asyncio.sleep(self.first_sweep_delay_s)


async def setup(bot: VoxcloneBot) -> None:
    await bot.add_cog(Lifecycle(bot))
