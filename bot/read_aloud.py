"""Read-aloud channels: messages in a server's chosen text channels, spoken in their authors' own voices.

While the bot is in a voice channel (``/join``, or speaking there), a message in a read-aloud channel from a
member who is in that voice channel goes through :meth:`SpeakingService.say` like ``/speak`` (consent,
roles, cooldown, length, normalisation, language detected per message) and is queued in order. A session
lasts as long as the bot stays in that voice channel: each member's cloned voice is announced once per
session, and a member without a voice is told once how to get one. A message edited or deleted before it
is spoken is withdrawn; each member may have a few messages waiting, and the server's queue is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Final

import discord

from bot.errors import NoVoiceProfile, QueueFull, TextRejected
from bot.player import Utterance
from bot.replies import server_locale
from bot.seen import SeenMessages
from bot.speaking import Players, SpeakingService
from core.errors import VoxcloneError
from core.i18n import N_, ngettext, tr, using_locale
from storage import GuildSettings, Repositories

log = logging.getLogger("voxclone.read_aloud")

MAX_WAITING_PER_MEMBER: Final = 3  # messages of one member queued and not yet spoken
NO_INTENT = N_(
    "Read-aloud channels need the Message Content intent, which this bot runs without: I can't read the "
    "messages. The bot's operator can enable it in the developer portal and set "
    "`MESSAGE_CONTENT_INTENT=true`."
)


@dataclass
class Session:
    """The bot's stay in one voice channel, as far as reading aloud goes."""

    voice_channel_id: int
    disclosed: set[int] = field(default_factory=set)  # members whose cloned voice was announced
    told: set[tuple[int, str]] = field(default_factory=set)  # (member, error code) already explained
    waiting: dict[int, Utterance] = field(default_factory=dict)  # message id -> queued, not yet spoken

    def prune(self) -> None:
        """Forget messages that started playing or were done with otherwise."""
        for message_id, item in list(self.waiting.items()):
            if item.started.is_set() or item.finished.is_set():
                del self.waiting[message_id]


class ReadAloudService:
    """Sessions per server, and what happens to each message in a read-aloud channel."""

    def __init__(self, repos: Repositories, speaking: SpeakingService, players: Players) -> None:
        self.repos = repos
        self.speaking = speaking
        self.players = players
        self._sessions: dict[int, Session] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._seen = SeenMessages()

    def start(self, guild_id: int, voice_channel_id: int) -> Session:
        """A fresh session (``/join``): disclosures and hints are given again."""
        session = self._sessions[guild_id] = Session(voice_channel_id)
        return session

    def session(self, guild_id: int) -> Session | None:
        """The current session: the bot's voice channel in this server, or None when it is in none."""
        player = self.players.existing(guild_id)
        if player is None or player.channel_id is None:
            self._sessions.pop(guild_id, None)
            return None
        session = self._sessions.get(guild_id)
        if session is None or session.voice_channel_id != player.channel_id:
            session = self.start(guild_id, player.channel_id)
        return session

    @staticmethod
    def listed(message: discord.Message, rules: GuildSettings) -> bool:
        """The message's channel (or its thread's parent) is one of the server's read-aloud channels."""
        channel_ids = {message.channel.id, getattr(message.channel, "parent_id", None)}
        return bool(channel_ids & set(rules.read_aloud_channel_ids))

    def wants(self, message: discord.Message) -> bool:
        """Cheap checks first, without awaiting: the bot is in voice, and so is the author, there."""
        author = message.author
        if (
            message.guild is None
            or author.bot
            or not isinstance(author, discord.Member)
            or not message.content
        ):
            return False
        session = self.session(message.guild.id)
        state = author.voice
        return (
            session is not None
            and state is not None
            and getattr(state.channel, "id", None) == (session.voice_channel_id)
        )

    async def hear(self, message: discord.Message) -> str | None:
        """Queue a message to be read aloud; returns what to reply (a refusal or a hint), or None.

        The reply, the refusals behind it and the cloned-voice announcement are posted in the channel:
        they are in the server's language.
        """
        with using_locale(server_locale(message.guild)):
            return await self._hear(message)

    async def _hear(self, message: discord.Message) -> str | None:
        guild, author = message.guild, message.author
        if guild is None or not isinstance(author, discord.Member):
            return None
        # One message at a time per server, in the order they arrived: asyncio's lock is first come,
        # first served, and the gateway's events start their listeners in order.
        async with self._locks.setdefault(guild.id, asyncio.Lock()):
            rules = await self.repos.settings.get(guild.id)
            session = self.session(guild.id)
            if session is None or not self.listed(message, rules) or not self._seen.claim(message.id):
                return None
            session.prune()
            try:
                await self._queue(message, author, session)
            except NoVoiceProfile as exc:
                return self._once(
                    session,
                    author.id,
                    exc.code,
                    tr(
                        "{member}, you have no cloned voice in this server, so your messages "
                        "here aren't read aloud. `/enroll` creates one.",
                        member=author.display_name,
                    ),
                )
            except TextRejected as exc:  # about this very message: always worth saying
                return exc.message
            except VoxcloneError as exc:  # speech-worker errors included
                log.info("read-aloud refused", extra={"guild_id": guild.id, "code": exc.code})
                return self._once(session, author.id, exc.code, exc.message)
        return None

    async def _queue(self, message: discord.Message, author: discord.Member, session: Session) -> None:
        waiting = sum(1 for item in session.waiting.values() if item.requester_id == author.id)
        if waiting >= MAX_WAITING_PER_MEMBER:
            raise QueueFull(
                ngettext(
                    "{member}, {n} of your messages is still waiting to be read; "
                    "this one is skipped. Wait until it's spoken.",
                    "{member}, {n} of your messages are still waiting to be read; "
                    "this one is skipped. Wait until they're spoken.",
                    waiting,
                    member=author.display_name,
                )
            )
        queued = await self.speaking.say(
            author,
            author,
            message.content,
            text_channel_id=message.channel.id,
            disclose=author.id not in session.disclosed,
        )
        session.disclosed.add(author.id)
        session.told = {told for told in session.told if told[0] != author.id}  # explain anew next time
        session.waiting[message.id] = queued.utterance
        log.info("read-aloud message queued", extra={"guild_id": author.guild.id, "user_id": author.id})

    @staticmethod
    def _once(session: Session, user_id: int, code: str, text: str) -> str | None:
        """``text`` the first time this member meets this refusal; None until a message of theirs passes."""
        if (user_id, code) in session.told:
            return None
        session.told.add((user_id, code))
        return text

    def withdraw(self, guild_id: int, message_id: int, *, deleted: bool) -> bool:
        """The message was edited or deleted: drop it if it is still waiting (a deleted one also stops).

        Returns whether something was dropped. The cloned-voice announcement it carried moves to its
        author's next waiting message, or is given again with the next one.
        """
        session = self._sessions.get(guild_id)
        player = self.players.existing(guild_id)
        item = session.waiting.pop(message_id, None) if session else None
        if session is None or player is None or item is None:
            return False
        if player.current is item:
            if not deleted:
                return False  # already being spoken: an edit comes too late
            player.skip()
        elif not player.discard(item):
            return False
        if item.announcement:
            later = [u for u in session.waiting.values() if u.requester_id == item.requester_id]
            if later:
                later[0].announcement = item.announcement
            else:
                session.disclosed.discard(item.requester_id)
        log.info("read-aloud message withdrawn", extra={"guild_id": guild_id, "deleted": deleted})
        return True
