"""Per-server playback: a queue of utterances, streamed from the speech service into a voice channel.

Playback starts on the first synthesized chunk. ``skip`` cancels the synthesis upstream (closing the
service's stream stops the GPU work). When the queue stays empty for ``idle_timeout_s`` the bot leaves.
Nothing here blocks the event loop: discord.py's player thread reads from a bounded ``FrameBuffer``.

Each utterance plays in its own :class:`_Turn`. discord.py calls a stopped source's ``after`` from its
player thread on a later tick, often once the next utterance is already playing: the callback only
touches the turn it was made for, so a late one can never skip or silence a later message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import discord
from babel.lists import format_list

from bot.errors import BusyElsewhere, MissingVoicePermissions, NothingPlaying, QueueFull
from bot.pcm import (
    DEFAULT_BUFFER_SECONDS,
    OUTPUT_RATE,
    FrameBuffer,
    StreamingSource,
    Upsampler2x,
    to_discord_pcm,
)
from bot.replies import server_locale
from core.i18n import current_locale, ngettext, pgettext, set_locale, tr, using_locale
from worker.errors import SpeechError
from worker.service import SpeechService
from worker.types import SpeechRequest

log = logging.getLogger("voxclone.player")

DEFAULT_IDLE_TIMEOUT_S = 180.0  # s: leave the voice channel after three quiet minutes
DEFAULT_MAX_QUEUE = 20  # utterances waiting per server
CONNECT_TIMEOUT_S = 15.0

Notify = Callable[[int, str], Awaitable[None]]  # (text channel id, message) -> posted


@dataclass
class _Turn:
    """The playback of one utterance: what ``skip`` and the player thread's callback may change."""

    skip: asyncio.Event = field(default_factory=asyncio.Event)  # stop the stream and the playback
    requested: bool = False  # a member asked (skip/stop), as opposed to the connection dropping


@dataclass
class Utterance:
    """One thing to say: who asked, whose voice, where to announce it."""

    request: SpeechRequest
    requester_id: int
    voice_owner_id: int
    text_channel_id: int
    announcement: str | None = None  # posted when playback starts (disclosure of the cloned voice)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    frames_played: int = 0
    samples_synthesized: int = 0  # at 24 kHz

    @property
    def preview(self) -> str:
        text = self.request.text
        return text if len(text) <= 60 else text[:57] + "..."


class GuildPlayer:
    """The queue and voice connection of one server."""

    def __init__(
        self,
        guild: discord.Guild,
        speech: SpeechService,
        notify: Notify,
        *,
        voice_cls: Any = discord.VoiceClient,
        max_queue: int = DEFAULT_MAX_QUEUE,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        self.guild = guild
        self.speech = speech
        self.notify = notify
        self.voice_cls = voice_cls
        self.max_queue = max_queue
        self.idle_timeout_s = idle_timeout_s
        self.queue: deque[Utterance] = deque()
        self.current: Utterance | None = None
        self.channel_id: int | None = None
        self.stay = False  # joined with /join: stay through quiet spells until /leave or an empty channel
        self._wakeup = asyncio.Event()
        self._turn: _Turn | None = None  # the playback of ``current``
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # ---- public -----------------------------------------------------------------------------------

    @property
    def voice(self) -> discord.VoiceProtocol | None:
        return self.guild.voice_client

    def check_can_join(self, channel: discord.VoiceChannel) -> None:
        """Refuse early with a reason: missing Connect/Speak, or busy in another channel."""
        me = self.guild.me
        perms = channel.permissions_for(me)
        missing = [  # as Discord's client names them, in the reader's language
            name
            for name, ok in (
                (pgettext("permission", "Connect"), perms.connect),
                (pgettext("permission", "Speak"), perms.speak),
            )
            if not ok
        ]
        if missing:
            raise MissingVoicePermissions(
                ngettext(
                    "I can't speak in {channel}: I'm missing the {permissions} permission there. "
                    "A server admin can grant it in the channel settings.",
                    "I can't speak in {channel}: I'm missing the {permissions} permissions there. "
                    "A server admin can grant them in the channel settings.",
                    len(missing),
                    channel=channel.mention,
                    permissions=format_list(missing, locale=current_locale()),
                )
            )
        busy = self.channel_id is not None and self.channel_id != channel.id and (self.current or self.queue)
        if busy:
            where = f"<#{self.channel_id}>"
            raise BusyElsewhere(
                tr(
                    "I'm already speaking in {channel} in this server. Join that channel, "
                    "or wait until the queue there is done (`/queue` shows it).",
                    channel=where,
                )
            )

    async def enqueue(self, channel: discord.VoiceChannel, utterance: Utterance) -> int:
        """Queue an utterance for ``channel``; returns its position (0 = plays next)."""
        self.check_can_join(channel)
        if len(self.queue) >= self.max_queue:
            raise QueueFull(
                ngettext(
                    "The queue in this server is full ({n} message). Wait a little, or ask a "
                    "moderator to `/stop` it.",
                    "The queue in this server is full ({n} messages). Wait a little, or ask a "
                    "moderator to `/stop` it.",
                    self.max_queue,
                )
            )
        self.channel_id = channel.id
        self.queue.append(utterance)
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"player-{self.guild.id}")
        return len(self.queue) - 1 + (1 if self.current else 0)

    async def join(self, channel: discord.VoiceChannel) -> None:
        """Connect to ``channel`` now and stay there when the queue is quiet (``/join``)."""
        self.check_can_join(channel)
        self.channel_id = channel.id
        self.stay = True
        await self._connect()

    def discard(self, utterance: Utterance) -> bool:
        """Take one waiting utterance out of the queue; False if it is not waiting (playing or done)."""
        if not any(item is utterance for item in self.queue):  # identity: utterances hold arrays
            return False
        self.queue = deque(item for item in self.queue if item is not utterance)
        utterance.error = "withdrawn"
        utterance.finished.set()
        return True

    def skip(self) -> Utterance:
        """Stop the current utterance now (its synthesis is cancelled upstream)."""
        if self.current is None:
            raise NothingPlaying(tr("Nothing is playing right now."))
        current = self.current
        turn = self._turn
        if turn is not None:
            turn.requested = True
            turn.skip.set()
        voice = self.voice
        if voice is not None and hasattr(voice, "stop"):
            voice.stop()
        return current

    def stop(self) -> int:
        """Clear the queue and skip the current utterance; returns how many were dropped."""
        dropped = len(self.queue)
        for item in self.queue:
            item.error = "stopped"
            item.finished.set()
        self.queue.clear()
        if self.current is not None:
            self.skip()
            dropped += 1
        return dropped

    def drop_voice(self, owner_id: int) -> int:
        """Remove every queued utterance in ``owner_id``'s voice and skip it if playing; returns how many."""
        kept: deque[Utterance] = deque()
        dropped = 0
        for item in self.queue:
            if item.voice_owner_id == owner_id:
                item.error = "voice deleted"
                item.finished.set()
                dropped += 1
            else:
                kept.append(item)
        self.queue = kept
        if self.current is not None and self.current.voice_owner_id == owner_id:
            self.skip()
            dropped += 1
        return dropped

    async def leave(self) -> None:
        """Stop everything and disconnect; the player can be used again afterwards."""
        self.stop()
        self.stay = False
        voice = self.voice
        if voice is not None:
            await voice.disconnect(force=True)
        self.channel_id = None

    async def close(self) -> None:
        """Leave and end the background task (bot shutdown, bot removed from the server)."""
        self._closed = True
        await self.leave()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        # This task posts in the server's channels, so it speaks the server's language, not that of the
        # member whose message started it (the task copied their interaction's context).
        set_locale(server_locale(self.guild))
        while not self._closed:
            if not self.queue:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self.idle_timeout_s)
                except TimeoutError:
                    if not self.queue and self.current is None and not self.stay:
                        log.info("leaving voice after idle timeout", extra={"guild_id": self.guild.id})
                        await self.leave()
                        return
                continue
            item = self.queue.popleft()
            self.current, self._turn = item, _Turn()
            try:
                await self._play(item, self._turn)
            except SpeechError as exc:
                item.error = exc.message
                with using_locale(server_locale(self.guild)):
                    text = tr("I couldn't finish speaking: {reason}", reason=exc.message)
                await self._safe_notify(item.text_channel_id, text)
            except (discord.ClientException, TimeoutError, OSError) as exc:
                item.error = str(exc)
                log.warning(
                    "voice playback failed", extra={"guild_id": self.guild.id, "error": type(exc).__name__}
                )
                with using_locale(server_locale(self.guild)):
                    text = tr(
                        "I lost the voice connection and stopped this message. "
                        "Try `/speak` again in a moment."
                    )
                await self._safe_notify(item.text_channel_id, text)
                await self.leave()
            finally:
                self.current, self._turn = None, None
                item.finished.set()

    async def _connect(self) -> discord.VoiceProtocol:
        channel = self.guild.get_channel(self.channel_id or 0)
        if not isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            raise discord.ClientException("voice channel vanished")
        voice = self.voice
        if voice is not None and getattr(voice.channel, "id", None) == channel.id and _connected(voice):
            return voice
        if voice is not None:
            await voice.disconnect(force=True)
        return await channel.connect(cls=self.voice_cls, timeout=CONNECT_TIMEOUT_S, self_deaf=True)

    async def _play(self, item: Utterance, turn: _Turn) -> None:
        loop = asyncio.get_running_loop()
        stream = self.speech.synthesize(item.request)
        buffer = FrameBuffer(loop, capacity_bytes=int(DEFAULT_BUFFER_SECONDS * OUTPUT_RATE * 4))
        upsampler = Upsampler2x()
        done = asyncio.Event()
        stream_ended = False
        playback_error: list[BaseException] = []

        def ended() -> None:  # on the loop: playback stopped, normally or not
            done.set()
            if not stream_ended:  # stopped before synthesis finished: stop synthesizing too
                buffer.close()
                turn.skip.set()  # this turn's, never the next one's: the callback may come late

        def after(error: Exception | None) -> None:  # called from discord.py's player thread
            if error is not None:
                playback_error.append(error)
            with contextlib.suppress(RuntimeError):  # the loop closed first (shutdown): nothing to do
                loop.call_soon_threadsafe(ended)

        try:
            first = await _next_chunk(stream, turn.skip)
            if first is None:
                return
            voice = await self._connect()
            item.samples_synthesized += len(first) // 2
            await buffer.write(to_discord_pcm(first, upsampler))
            voice.play(StreamingSource(buffer), after=after)  # type: ignore[attr-defined]
            item.started.set()
            if item.announcement:
                await self._safe_notify(item.text_channel_id, item.announcement)
            while (chunk := await _next_chunk(stream, turn.skip)) is not None:
                item.samples_synthesized += len(chunk) // 2
                await buffer.write(to_discord_pcm(chunk, upsampler))
            stream_ended = not turn.skip.is_set()
            buffer.finish()
            waiter = asyncio.create_task(done.wait())
            skipper = asyncio.create_task(turn.skip.wait())
            await asyncio.wait({waiter, skipper}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, skipper):
                task.cancel()
        finally:
            buffer.close()
            await stream.aclose()  # type: ignore[attr-defined]
            item.frames_played = buffer.frames_read
        if playback_error:
            raise discord.ClientException(f"playback ended with {type(playback_error[0]).__name__}")
        if done.is_set() and not stream_ended and not turn.requested:
            raise discord.ClientException("the voice connection ended during playback")

    async def _safe_notify(self, channel_id: int, text: str) -> None:
        try:
            await self.notify(channel_id, text)
        except discord.HTTPException:
            log.warning(
                "could not post to channel", extra={"guild_id": self.guild.id, "channel_id": channel_id}
            )


def _connected(voice: discord.VoiceProtocol) -> bool:
    is_connected = getattr(voice, "is_connected", None)
    return bool(is_connected()) if callable(is_connected) else False


async def _next_chunk(stream: Any, skip: asyncio.Event) -> bytes | None:
    """The next chunk, or None when the stream ended or a skip was requested.

    A pending ``__anext__`` is always cancelled and awaited before returning (also when this task is
    cancelled), so the stream can be closed afterwards: closing it is what stops synthesis upstream.
    """
    if skip.is_set():
        return None
    getter = asyncio.ensure_future(stream.__anext__())
    skipper = asyncio.ensure_future(skip.wait())
    try:
        await asyncio.wait({getter, skipper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        skipper.cancel()
        if not getter.done():
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await getter
    if getter.cancelled():
        return None
    try:
        return cast(bytes, getter.result())
    except StopAsyncIteration:
        return None
