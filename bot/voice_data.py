"""Voice data in a server: the one path that deletes it, a member's or the whole server's.

Every deletion of a member's data (their ``/voice delete``, an admin's ``/consent purge``, leaving the
server, the retention sweep) goes through :meth:`VoiceDataService.delete_member`: the stored data goes in
one transaction, then anything queued or playing in that voice stops. The bot leaving a server goes
through :meth:`VoiceDataService.delete_guild`: everything stored about it, its player and its cooldowns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.speaking import SpeakingService
from storage import DeletionReport, GuildDeletionReport, Repositories

log = logging.getLogger("voxclone.voice_data")


@dataclass(frozen=True)
class MemberDeletion:
    """What one deletion removed from storage, and how many utterances in that voice it stopped."""

    report: DeletionReport
    stopped: int


class VoiceDataService:
    def __init__(self, repos: Repositories, speaking: SpeakingService) -> None:
        self.repos = repos
        self.speaking = speaking

    async def delete_member(
        self, guild_id: int, user_id: int, *, actor_id: int | None, reason: str
    ) -> MemberDeletion:
        """Delete one member's data in one server now and stop anything queued in their voice.

        ``actor_id`` is who asked (None: the bot itself); ``reason`` is one of the storage's
        ``member_request``, ``admin``, ``member_left``, ``retention`` (recorded in the audit log).
        """
        report = await self.repos.profiles.delete(guild_id, user_id, actor_id=actor_id, reason=reason)
        stopped = await self.speaking.forget_voice(guild_id, user_id)
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
        return MemberDeletion(report, stopped)

    async def delete_guild(self, guild_id: int) -> GuildDeletionReport:
        """Delete everything stored about a server (the bot left it); close its player, forget cooldowns."""
        report = await self.repos.profiles.delete_guild(guild_id)
        await self.speaking.forget_guild(guild_id)
        log.info("server data deleted", extra={"guild_id": guild_id, "profiles": report.profiles})
        return report
