"""A member's voice data in a server: the one path that deletes it.

Every deletion (the member's ``/voice delete``, an admin's ``/consent purge``, leaving the server, the
retention sweep) goes through :meth:`VoiceDataService.delete_member`: the stored data goes in one
transaction, then anything queued or playing in that voice stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.speaking import SpeakingService
from storage import DeletionReport, Repositories

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
