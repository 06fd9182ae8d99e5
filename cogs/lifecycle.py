"""Automatic deletion: a member leaving, the bot leaving a server, and voices past their retention period.

The listeners use raw events so they work without the member cache. The retention sweep runs hourly
in the background, starting a little after the bot is ready; :meth:`Lifecycle.sweep` is the same work
as a plain method (tests call it with a chosen ``now``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

import discord
from discord.ext import commands, tasks

from storage import DeletionReport, GuildDeletionReport
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


class Lifecycle(commands.Cog):
    """Deletes voice data when its reason to exist ends."""

    def __init__(self, bot: VoxcloneBot) -> None:
        self.bot = bot
        self.first_sweep_delay_s = FIRST_SWEEP_DELAY_S

    async def cog_unload(self) -> None:
        self.retention.cancel()

    # ---- the work ---------------------------------------------------------------------------------

    async def forget_member(self, guild_id: int, user_id: int, *, reason: str) -> DeletionReport:
        """Delete one member's data in one server and stop anything queued in their voice."""
        report = await self.bot.repos.profiles.delete(guild_id, user_id, actor_id=None, reason=reason)
        stopped = await self.bot.speaking.forget_voice(guild_id, user_id)
        if report.anything or stopped:
            log.info(
                "voice data deleted",
                extra={
                    "guild_id": guild_id,
                    "user_id": user_id,
                    "reason": reason,
                    "profile": report.profile_deleted,
                    "stopped": stopped,
                },
            )
        return report

    async def forget_guild(self, guild_id: int) -> GuildDeletionReport:
        """Delete everything about a server, close its player and forget its cooldowns."""
        report = await self.bot.repos.profiles.delete_guild(guild_id)
        await self.bot.players.discard(guild_id)
        self.bot.policy.forget_guild(guild_id)
        log.info("server data deleted", extra={"guild_id": guild_id, "profiles": report.profiles})
        return report

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
        await self.forget_guild(guild.id)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        # `on_ready` fires again after a reconnect: start the loop once.
        if not self.retention.is_running():
            self.retention.start()

    # ---- the background loop ----------------------------------------------------------------------

    @tasks.loop(hours=SWEEP_INTERVAL_H)
    async def retention(self) -> None:
        try:
            await self.sweep()
        except Exception:  # one failed sweep must not end the loop: the next hour tries again
            log.exception("retention sweep failed")

    @retention.before_loop
    async def _before_retention(self) -> None:
        await asyncio.sleep(self.first_sweep_delay_s)


async def setup(bot: VoxcloneBot) -> None:
    await bot.add_cog(Lifecycle(bot))
