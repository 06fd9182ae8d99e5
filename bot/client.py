"""The Discord client: ``build_bot(settings)`` and what ``setup_hook`` opens (storage, speech, cogs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.policy import Policy
from bot.replies import VoxcloneTree
from core.settings import Settings

if TYPE_CHECKING:
    from bot.enrollment import EnrollmentService
    from bot.speaking import Players, SpeakingService
    from bot.voice_data import VoiceDataService
    from storage import Database, Repositories
    from worker.service import SpeechService

log = logging.getLogger("voxclone.bot")

# One module per concern; each defines `async def setup(bot)`. Loaded in this order.
EXTENSIONS: tuple[str, ...] = (
    "cogs.consent",
    "cogs.enroll",
    "cogs.speak",
    "cogs.voice",
    "cogs.lifecycle",
    "cogs.voice_messages",
    "cogs.read_aloud",
)


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

    def __init__(
        self, settings: Settings, *, speech: SpeechService | None = None, commands_only: bool = False
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents_for(settings),
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=VoxcloneTree,
        )
        self.settings = settings
        # commands_only: load the command tree and nothing else (syncing commands needs no models).
        self.commands_only = commands_only
        self.policy = Policy()
        # The voice connection class; tests put a recorded one here.
        self.voice_cls: type[discord.VoiceProtocol] = discord.VoiceClient
        self._database: Database | None = None
        self._repos: Repositories | None = None
        # A speech service handed in is the caller's to close; one created in setup_hook is ours.
        self._speech: SpeechService | None = speech
        self._owns_speech = speech is None
        self._players: Players | None = None
        self._enrollment: EnrollmentService | None = None
        self._speaking: SpeakingService | None = None
        self._voice_data: VoiceDataService | None = None
        self._later: set[asyncio.Task[None]] = set()  # see run_later()
        # Set by bot.shutdown: new interactions are answered "restarting" and messages are ignored.
        self.shutting_down = False
        self._resources_closed = False

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError("storage is opened in setup_hook")
        return self._database

    @property
    def repos(self) -> Repositories:
        if self._repos is None:
            raise RuntimeError("storage is opened in setup_hook")
        return self._repos

    @property
    def speech(self) -> SpeechService:
        if self._speech is None:
            raise RuntimeError("the speech service is created in setup_hook")
        return self._speech

    @property
    def players(self) -> Players:
        if self._players is None:
            raise RuntimeError("players are created in setup_hook")
        return self._players

    @property
    def enrollment(self) -> EnrollmentService:
        if self._enrollment is None:
            raise RuntimeError("services are created in setup_hook")
        return self._enrollment

    @property
    def speaking(self) -> SpeakingService:
        if self._speaking is None:
            raise RuntimeError("services are created in setup_hook")
        return self._speaking

    @property
    def voice_data(self) -> VoiceDataService:
        if self._voice_data is None:
            raise RuntimeError("services are created in setup_hook")
        return self._voice_data

    async def setup_hook(self) -> None:
        if self.commands_only:
            await self.load_cogs()
            return
        from core.intake import sweep_stale_intake_dirs
        from storage import Database, Repositories, upgrade
        from worker.factory import create_speech_service

        await asyncio.to_thread(sweep_stale_intake_dirs)  # member audio older versions left behind
        head = await upgrade(self.settings.database_url)
        log.info("database ready", extra={"revision": head})
        self._database = Database(self.settings.database_url)
        await self._database.open()
        self._repos = Repositories(self._database)
        if self._speech is None:
            self._speech = await create_speech_service(self.settings)
        self._create_services()
        await self.load_cogs()
        await self._sync_commands()

    async def load_cogs(self) -> None:
        """The commands, translated into each member's client language (``bot.translator``)."""
        from bot.translator import CatalogTranslator

        if self.tree.translator is None:
            await self.tree.set_translator(CatalogTranslator())
        for name in EXTENSIONS:
            try:
                await self.load_extension(name)
            except commands.ExtensionError:
                log.exception("failed to load extension %s", name)
                raise

    def _create_services(self) -> None:
        from bot.enrollment import EnrollmentService
        from bot.speaking import Players, SpeakingService
        from bot.voice_data import VoiceDataService

        self._players = Players(self.speech, self.post, voice_cls=self.voice_cls)
        self._enrollment = EnrollmentService(self.repos, self.speech, self.policy)
        self._speaking = SpeakingService(self.repos, self.policy, self.players)
        self._voice_data = VoiceDataService(self.repos, self._speaking)

    def run_later(self, work: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``work`` after the current answer (e.g. an enrolment preview); cancelled first on close."""
        task = asyncio.create_task(work, name=name)
        self._later.add(task)
        task.add_done_callback(self._later.discard)
        return task

    def dispatch(self, event_name: str, /, *args: object, **kwargs: object) -> None:
        if self.shutting_down and event_name == "message":
            return  # no new voice-message work while shutting down
        super().dispatch(event_name, *args, **kwargs)

    async def post(self, channel_id: int, text: str) -> None:
        """Post a line in a text channel (announcements, late errors)."""
        channel = self.get_channel(channel_id)
        if isinstance(channel, discord.abc.Messageable):
            await channel.send(text)

    async def _sync_commands(self) -> None:
        if self.settings.dev_guild_id is not None:
            guild = discord.Object(id=self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("commands synced to the development guild", extra={"count": len(synced)})

    async def close(self) -> None:
        if self._resources_closed:  # shut_down closes first; `async with bot` closes again on the way out
            return await super().close()
        self._resources_closed = True
        try:
            for task in list(self._later):  # before the speech service and storage they may use
                task.cancel()
            await asyncio.gather(*self._later, return_exceptions=True)
            if self._players is not None:
                await self._players.close()
            if self._speech is not None and self._owns_speech:
                await self._speech.aclose()
            if self._database is not None:
                await self._database.close()
        finally:
            await super().close()


def build_bot(settings: Settings, *, speech: SpeechService | None = None) -> VoxcloneBot:
    """The bot, configured but not connected. ``speech`` replaces the one ``setup_hook`` would create."""
    return VoxcloneBot(settings, speech=speech)
