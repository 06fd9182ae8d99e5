"""``/join`` and the read-aloud channels: messages there are spoken in their authors' own voices.

Thin: the sessions, checks and queueing are in ``bot.read_aloud``. ``/leave`` is in ``cogs.speak``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.read_aloud import NO_INTENT, ReadAloudService
from bot.replies import guild_member, respond
from bot.speaking import member_voice_channel
from core.i18n import set_locale, tr

if TYPE_CHECKING:
    from bot.client import VoxcloneBot

log = logging.getLogger("voxclone.cogs.read_aloud")


class ReadAloud(commands.Cog):
    def __init__(self, bot: VoxcloneBot) -> None:
        self.bot = bot
        self._service: ReadAloudService | None = None

    @property
    def service(self) -> ReadAloudService:
        if self._service is None:
            raise RuntimeError("the read-aloud service is created when the cog loads")
        return self._service

    async def cog_load(self) -> None:
        if self.bot.commands_only:  # only the command tree is wanted (syncing commands): no services
            return
        self._service = ReadAloudService(self.bot.repos, self.bot.speaking, self.bot.players)

    @app_commands.command(name="join")
    @app_commands.guild_only()
    async def join(self, interaction: discord.Interaction) -> None:
        """Join your voice channel and read this server's read-aloud channels there."""
        guild, member = guild_member(interaction)
        channel = member_voice_channel(member)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.bot.players.get(guild).join(channel)
        self.service.start(guild.id, channel.id)
        rules = await self.bot.repos.settings.get(guild.id)
        text = tr("Joined {channel}.", channel=channel.mention)
        if not self.bot.intents.message_content:
            text += " " + tr(NO_INTENT)
        elif not rules.read_aloud_channel_ids:
            text += " " + tr(
                "No channel is read aloud yet: an admin can choose one with `/consent read-aloud`."
            )
        else:
            listed = ", ".join(f"<#{cid}>" for cid in rules.read_aloud_channel_ids)
            text += " " + tr(
                "Messages in {channels} from members in {channel} are read aloud in their own "
                "cloned voices. `/leave` when you're done.",
                channels=listed,
                channel=channel.mention,
            )
        log.info("joined for read-aloud", extra={"guild_id": guild.id})
        await respond(interaction, text, ephemeral=True)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A message in a read-aloud channel from someone in the bot's voice channel: read it aloud."""
        if self._service is None or not self.bot.intents.message_content or not self.service.wants(message):
            return
        if message.guild is not None:  # no interaction: the server's language (this event's own task)
            set_locale(message.guild.preferred_locale.value)
        reply = await self.service.hear(message)
        if reply is None:
            return
        try:
            await message.reply(reply, mention_author=False)
        except discord.HTTPException:
            log.warning(
                "could not reply in a read-aloud channel",
                extra={"guild_id": message.guild and message.guild.id},
            )

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        """Edited before it was spoken: withdrawn (link previews arriving are not edits)."""
        if self._service is None or payload.guild_id is None or not payload.data.get("edited_timestamp"):
            return
        self.service.withdraw(payload.guild_id, payload.message_id, deleted=False)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if self._service is not None and payload.guild_id is not None:
            self.service.withdraw(payload.guild_id, payload.message_id, deleted=True)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        if self._service is not None and payload.guild_id is not None:
            for message_id in payload.message_ids:
                self.service.withdraw(payload.guild_id, message_id, deleted=True)


async def setup(bot: VoxcloneBot) -> None:
    await bot.add_cog(ReadAloud(bot))
