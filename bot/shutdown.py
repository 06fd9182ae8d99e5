"""Graceful shutdown of the bot (SIGTERM from ``docker stop``, Ctrl-C): within Docker's 10 s grace.

In order: stop taking commands (new interactions get a "restarting" answer, messages are ignored), tell
each channel where something is playing or queued that the bot is restarting, leave voice, then close
storage, the speech service and the gateway (``VoxcloneBot.close``). Each step has a deadline, so a
stuck Discord call or worker cannot hold the process past ``SHUTDOWN_DEADLINE_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

import discord

from bot.replies import server_locale
from core.i18n import N_, tr, using_locale

if TYPE_CHECKING:
    from bot.client import VoxcloneBot

log = logging.getLogger("voxclone.shutdown")

SHUTDOWN_DEADLINE_S: Final = 8.0  # s for the whole shutdown: Docker kills after 10 s
NOTICE_DEADLINE_S: Final = 3.0  # s for the restart notices, out of the above
RESTART_NOTICE: Final = N_(
    "voxclone is restarting, so I stopped speaking here. Send your message again in a minute."
)


def channels_to_tell(bot: VoxcloneBot) -> set[int]:
    """Text channels of every utterance playing or queued, in every server."""
    try:
        players = bot.players
    except RuntimeError:  # shutting down before setup_hook made them
        return set()
    channels: set[int] = set()
    for guild in bot.guilds:
        player = players.existing(guild.id)
        if player is None:
            continue
        items = [player.current, *player.queue] if player.current else list(player.queue)
        channels.update(item.text_channel_id for item in items)
    return channels


async def _tell(bot: VoxcloneBot, channel_ids: set[int]) -> None:
    async def one(channel_id: int) -> None:
        with using_locale(server_locale(getattr(bot.get_channel(channel_id), "guild", None))):
            notice = tr(RESTART_NOTICE)  # a channel post: in the server's language
        try:
            await bot.post(channel_id, notice)
        except discord.HTTPException as exc:
            log.warning(
                "could not post the restart notice", extra={"channel_id": channel_id, "status": exc.status}
            )

    await asyncio.gather(*(one(c) for c in channel_ids))


async def shut_down(bot: VoxcloneBot, *, deadline_s: float = SHUTDOWN_DEADLINE_S) -> float:
    """Stop the bot as described above; returns the seconds it took. Never raises."""
    started = time.monotonic()
    bot.shutting_down = True
    channels = channels_to_tell(bot)
    log.info("shutting down", extra={"channels_told": len(channels)})
    try:
        async with asyncio.timeout(min(NOTICE_DEADLINE_S, deadline_s)):
            await _tell(bot, channels)
    except TimeoutError:
        log.warning("restart notices took too long: leaving without the rest")
    remaining = max(0.5, deadline_s - (time.monotonic() - started))
    try:
        async with asyncio.timeout(remaining):
            await bot.close()  # players leave voice, then speech, storage and the gateway close
    except TimeoutError:
        log.warning("closing took longer than %.0f s: exiting anyway", deadline_s)
    except Exception:
        log.exception("error while closing; exiting anyway")
    took = time.monotonic() - started
    log.info("shut down", extra={"seconds": round(took, 2)})
    return took
