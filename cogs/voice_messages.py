"""Voice messages: automatic handling in the server's listed channels, and the message commands
"Transcribe" and "Answer" (which work without the Message Content intent). Thin: the work is in
``bot.voice_messages``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.assistant import AssistantClient, LLMConfig
from bot.attachments import audio_attachment
from bot.replies import guild_member, respond, user_message
from bot.voice_messages import (
    Heard,
    VoiceMessageService,
    answer_reply,
    limits_for,
    relay_reply,
    transcript_reply,
)
from core.errors import VoxcloneError
from core.i18n import set_locale
from storage import GuildSettings

if TYPE_CHECKING:
    from bot.client import VoxcloneBot

log = logging.getLogger("voxclone.cogs.voice_messages")

NO_INTENT = (
    "MESSAGE_CONTENT_INTENT is off: voice messages are not handled automatically, only through the "
    "message commands Transcribe and Answer. Enable the Message Content intent in the developer portal "
    "and set MESSAGE_CONTENT_INTENT=true to handle them in the channels servers choose."
)


def _assistant_client(bot: VoxcloneBot) -> AssistantClient | None:
    config = LLMConfig.from_settings(bot.settings)
    return AssistantClient(config) if config is not None else None


class VoiceMessages(commands.Cog):
    def __init__(self, bot: VoxcloneBot) -> None:
        self.bot = bot
        self._service: VoiceMessageService | None = None
        self.menus = (
            app_commands.ContextMenu(name="Transcribe", callback=self.transcribe_message),
            app_commands.ContextMenu(name="Answer", callback=self.answer_message),
        )
        for menu in self.menus:
            menu.guild_only = True
            bot.tree.add_command(menu)

    @property
    def service(self) -> VoiceMessageService:
        if self._service is None:
            raise RuntimeError("the voice message service is created when the cog loads")
        return self._service

    async def cog_load(self) -> None:
        if self.bot.commands_only:  # only the command tree is wanted (syncing commands): no services
            return
        bot = self.bot
        self._service = VoiceMessageService(bot.repos, bot.speech, bot.speaking, _assistant_client(bot))
        if not bot.intents.message_content:
            log.warning(NO_INTENT)
        if self._service.llm is None:
            log.info("assistant not configured (LLM_BASE_URL is empty): the Answer command will say so")

    async def cog_unload(self) -> None:
        for menu in self.menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)
        if self._service is not None:
            await self._service.aclose()

    # ---- message commands ------------------------------------------------------------------------

    async def transcribe_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Transcribe a voice message (only you see the transcript)."""
        guild, _ = guild_member(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        rules = await self.bot.repos.settings.get(guild.id)
        heard = await self.service.transcribe(message, limits_for(rules))
        await respond(interaction, transcript_reply(heard), ephemeral=True)

    async def answer_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Ask the assistant what a voice message asks; it answers aloud where you are, and in text."""
        guild, member = guild_member(interaction)
        await interaction.response.defer(thinking=True)
        rules = await self.bot.repos.settings.get(guild.id)
        heard = await self.service.transcribe(message, limits_for(rules))
        channel_id = interaction.channel_id or message.channel.id
        answer = await self.service.answer(member, heard, text_channel_id=channel_id)
        await respond(interaction, answer_reply(answer), ephemeral=False)

    # ---- automatic handling ----------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A voice message (or audio file) in a listed channel: transcribe, relay or answer it."""
        if not self.bot.intents.message_content or message.guild is None or not message.attachments:
            return
        if message.author.bot or not isinstance(message.author, discord.Member):
            return
        rules = await self.bot.repos.settings.get(message.guild.id)
        if not self.service.handled_here(message, rules) or audio_attachment(message) is None:
            return  # not a channel the server chose, or a picture or text file: not for us
        if not self.service.claim(message.id):
            return  # the same message again (a resumed gateway session replays events)
        set_locale(message.guild.preferred_locale.value)  # no interaction: the server's language (this task)
        try:
            text = await self._handle(message, message.author, rules)
        except VoxcloneError as exc:
            log.info(
                "voice message refused",
                extra={"guild_id": message.guild.id, "code": exc.code, "mode": rules.voice_message_mode},
            )
            text = user_message(exc)
        except Exception as exc:  # the member still gets an answer; the traceback goes to the log
            log.exception("voice message failed", extra={"guild_id": message.guild.id})
            text = user_message(exc)
        try:
            await message.reply(text, mention_author=False)
        except discord.HTTPException:
            log.warning("could not reply to a voice message", extra={"guild_id": message.guild.id})

    async def _handle(self, message: discord.Message, author: discord.Member, rules: GuildSettings) -> str:
        heard = await self.service.transcribe(message, limits_for(rules))
        mode = rules.voice_message_mode
        if mode == "relay":
            return await self._relay(message, author, heard)
        if mode == "assistant":
            answer = await self.service.answer(author, heard, text_channel_id=message.channel.id)
            return answer_reply(answer)
        return transcript_reply(heard)

    async def _relay(self, message: discord.Message, author: discord.Member, heard: Heard) -> str:
        try:
            queued = await self.service.relay(author, heard, text_channel_id=message.channel.id)
        except VoxcloneError as exc:  # no consent, not in a voice channel...: the transcript still helps
            return relay_reply(heard, None, exc.message)
        return relay_reply(heard, queued, None)


async def setup(bot: VoxcloneBot) -> None:
    await bot.add_cog(VoiceMessages(bot))
