"""``/speak``, ``/skip``, ``/stop``, ``/leave``, ``/queue``, and leaving a voice channel left alone."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import NothingPlaying, NotInVoiceChannel
from bot.languages import language_choices
from bot.player import GuildPlayer
from bot.replies import guild_member, respond
from core.i18n import ngettext, set_locale, tr

if TYPE_CHECKING:
    from bot.client import VoxcloneBot

log = logging.getLogger("voxclone.cogs.speak")


class Speak(commands.Cog):
    def __init__(self, bot: VoxcloneBot) -> None:
        self.bot = bot

    def _player_for_control(self, interaction: discord.Interaction) -> GuildPlayer:
        """The server's player, if the member may control it (same voice channel, or Manage Server)."""
        guild, member = guild_member(interaction)
        player = self.bot.players.existing(guild.id)
        if player is None or (player.current is None and not player.queue and player.voice is None):
            raise NothingPlaying(tr("I'm not in a voice channel in this server right now."))
        in_channel = (
            member.voice is not None
            and member.voice.channel is not None
            and (member.voice.channel.id == player.channel_id)
        )
        if not in_channel and not member.guild_permissions.manage_guild:
            channel = f"<#{player.channel_id}>"
            raise NotInVoiceChannel(tr("Join {channel} to control what I say there.", channel=channel))
        return player

    @app_commands.command(name="speak")
    @app_commands.guild_only()
    @app_commands.describe(
        text="What to say (mentions, links and emoji are read sensibly)",
        voice="Whose cloned voice to use (default: yours); they must have shared it with you",
        language="The language to speak in (default: detected from the text, else the voice's own)",
    )
    async def speak(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, 2000],
        voice: discord.Member | None = None,
        language: app_commands.Range[str, 1, 40] | None = None,
    ) -> None:
        """Say something in a cloned voice in your voice channel."""
        _, member = guild_member(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        queued = await self.bot.speaking.say(
            member, voice or member, text, text_channel_id=interaction.channel_id or 0, language=language
        )
        where = queued.channel.mention
        if queued.position == 0:
            await respond(interaction, tr("Speaking in {channel}.", channel=where), ephemeral=True)
        else:
            text = tr("Queued in {channel} (position {position}).", channel=where, position=queued.position)
            await respond(interaction, text, ephemeral=True)

    @speak.autocomplete("language")
    async def _language_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return language_choices(current)

    @app_commands.command(name="skip")
    @app_commands.guild_only()
    async def skip(self, interaction: discord.Interaction) -> None:
        """Stop the message being spoken now and go on with the queue."""
        player = self._player_for_control(interaction)
        item = player.skip()
        await respond(interaction, tr("Skipped “{text}”.", text=item.preview), ephemeral=True)

    @app_commands.command(name="stop")
    @app_commands.guild_only()
    async def stop(self, interaction: discord.Interaction) -> None:
        """Stop speaking and clear the queue."""
        player = self._player_for_control(interaction)
        dropped = player.stop()
        await respond(
            interaction,
            ngettext("Stopped. {n} message removed.", "Stopped. {n} messages removed.", dropped),
            ephemeral=True,
        )

    @app_commands.command(name="leave")
    @app_commands.guild_only()
    async def leave(self, interaction: discord.Interaction) -> None:
        """Stop everything and leave the voice channel."""
        player = self._player_for_control(interaction)
        await player.leave()
        await respond(interaction, tr("Left the voice channel."), ephemeral=True)

    @app_commands.command(name="queue")
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction) -> None:
        """Show what is being said and what is waiting."""
        guild, _ = guild_member(interaction)
        player = self.bot.players.existing(guild.id)
        if player is None or (player.current is None and not player.queue):
            await respond(interaction, tr("Nothing is queued."), ephemeral=True)
            return
        lines = []
        if player.current is not None:
            lines.append(f"▶ {_owner(guild, player.current.voice_owner_id)}: “{player.current.preview}”")
        for i, item in enumerate(player.queue, start=1):
            lines.append(f"{i}. {_owner(guild, item.voice_owner_id)}: “{item.preview}”")
        await respond(interaction, "\n".join(lines), ephemeral=True)

    @commands.Cog.listener()
    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        """Leave when the last person leaves the bot's channel."""
        set_locale(member.guild.preferred_locale.value)  # no interaction: the server's language (this task)
        player = self.bot.players.existing(member.guild.id)
        if player is None or player.channel_id is None or before.channel is None:
            return
        if before.channel.id != player.channel_id or (
            after.channel and after.channel.id == player.channel_id
        ):
            return
        humans = [m for m in before.channel.members if not m.bot]
        if not humans:
            log.info("leaving an empty voice channel", extra={"guild_id": member.guild.id})
            await player.leave()


def _owner(guild: discord.Guild, user_id: int) -> str:
    member = guild.get_member(user_id)
    return tr("{member}'s voice", member=member.display_name) if member else tr("a voice")


async def setup(bot: VoxcloneBot) -> None:
    await bot.add_cog(Speak(bot))
