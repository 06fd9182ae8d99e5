"""The Discord client: ``build_bot(settings)`` and what ``setup_hook`` opens (storage, speech, cogs)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.settings import Settings

if TYPE_CHECKING:
    from storage.db import Database
    from worker.service import SpeechService

log = logging.getLogger("voxclone.bot")

# One module per concern; each defines `async def setup(bot)`. Loaded in this order.
EXTENSIONS: tuple[str, ...] = ()


def intents_for(settings: Settings) -> discord.Intents:
    """Least privilege: guilds, voice states, members (deletion on leave); Message Content only on request."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    intents.members = True
    intents.guild_messages = True
    intents.message_content = settings.message_content_intent
    return intents


class VoxcloneBot(commands.Bot):
    """The bot. Storage and the speech service exist after ``setup_hook`` and close with the bot."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents_for(settings),
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.settings = settings
        self._database: Database | None = None
        self._speech: SpeechService | None = None

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError("storage is opened in setup_hook")
        return self._database

    @property
    def speech(self) -> SpeechService:
        if self._speech is None:
            raise RuntimeError("the speech service is created in setup_hook")
        return self._speech

    async def setup_hook(self) -> None:
        from storage.db import Database
        from storage.migrate import upgrade
        from worker.factory import create_speech_service

        head = await upgrade(self.settings.database_url)
        log.info("database ready", extra={"revision": head})
        self._database = Database(self.settings.database_url)
        await self._database.open()
        self._speech = await create_speech_service(self.settings)
        for name in EXTENSIONS:
            try:
                await self.load_extension(name)
            except commands.ExtensionError:
                log.exception("failed to load extension %s", name)
                raise
        await self._sync_commands()

    async def _sync_commands(self) -> None:
        if self.settings.dev_guild_id is not None:
            guild = discord.Object(id=self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("commands synced to the development guild", extra={"count": len(synced)})

    async def close(self) -> None:
        try:
            if self._speech is not None:
                await self._speech.aclose()
            if self._database is not None:
                await self._database.close()
        finally:
            await super().close()


def build_bot(settings: Settings) -> VoxcloneBot:
    """The bot, configured but not connected."""
    return VoxcloneBot(settings)
