"""Voice messages: recognise them, transcribe each one once, then reply, relay or answer (per server mode).

``transcribe`` replies with the transcript and its language. ``relay`` speaks the transcript in the
author's own cloned voice through :meth:`SpeakingService.say` (the same consent checks as ``/speak``).
``assistant`` sends the transcript with the channel's recent exchange to the chat completions endpoint
and queues each sentence of the streamed answer as soon as it is complete, in the server's assistant
voice (checked by :meth:`SpeakingService.assistant_voice`), so the first sentence plays while the model
is still writing. Automatic handling happens only in the server's listed channels; a repeated gateway
event for the same message is ignored (bounded memory), and a transcript is reused for the message
commands.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import discord

from bot.assistant import AssistantClient, ChatHistory, SentenceSplitter, build_messages, cut_at_sentence
from bot.attachments import audio_attachment, read_upload
from bot.errors import (
    AssistantBadResponse,
    AssistantError,
    AssistantNotConfigured,
    NotInVoiceChannel,
    NoVoiceProfile,
)
from bot.languages import language_name
from bot.player import Utterance
from bot.replies import size_text
from bot.seen import SeenMessages
from bot.speaking import AssistantVoice, Queued, SpeakingService
from core.errors import AudioTooLarge, AudioTooLong, EmptyAudio, NotAudio, VoxcloneError
from core.i18n import N_, tr
from core.intake import _fmt_duration, decode_audio_async
from storage import GuildSettings, Repositories
from worker.service import SpeechService

log = logging.getLogger("voxclone.voice_messages")

TRANSCRIBE_RATE: Final = 16_000  # Hz: what Whisper works at
MAX_SECONDS: Final = 300.0  # s: default longest voice message handled (a 20-minute one is refused unread)
MAX_BYTES: Final = 25 * 1024 * 1024  # bytes: default, Discord's upload limit
MEGABYTE: Final = 1024 * 1024
CACHED_TRANSCRIPTS: Final = 256  # transcripts kept for the message commands
DISCORD_LIMIT: Final = 1900  # characters of a reply, below Discord's 2000 with room for the framing
NO_WORDS = N_(
    "I couldn't hear any words in that recording. Record it again a little closer to the microphone."
)


@dataclass(frozen=True)
class VoiceMessageLimits:
    """How long and how large a voice message may be to be handled."""

    max_seconds: float = MAX_SECONDS
    max_bytes: int = MAX_BYTES


def limits_for(rules: GuildSettings) -> VoiceMessageLimits:
    """The server's limits (``/consent voice-messages max_minutes: max_mb:``)."""
    return VoiceMessageLimits(
        max_seconds=float(rules.voice_message_max_seconds), max_bytes=rules.voice_message_max_mb * MEGABYTE
    )


@dataclass(frozen=True)
class Heard:
    """What a voice message said."""

    text: str
    language: str  # ISO 639-1, as detected by Whisper
    duration_s: float


@dataclass
class Answer:
    """The assistant's answer: the text posted, and what was queued to be spoken."""

    question: Heard
    text: str
    cut: bool  # longer than the server's speech limit: cut at a sentence
    utterances: list[Utterance] = field(default_factory=list)
    voice_owner_id: int | None = None
    channel: discord.VoiceChannel | None = None
    not_spoken: str | None = None  # why the answer (or its end) was not spoken
    interrupted: str | None = None  # the model failed after some sentences


class _Bounded(OrderedDict[int, asyncio.Future[Heard]]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: int, value: asyncio.Future[Heard]) -> None:
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)


class VoiceMessageService:
    """Transcription, relay and the assistant, for the listener and the message commands."""

    def __init__(
        self,
        repos: Repositories,
        speech: SpeechService,
        speaking: SpeakingService,
        llm: AssistantClient | None,
        *,
        history: ChatHistory | None = None,
    ) -> None:
        self.repos = repos
        self.speech = speech
        self.speaking = speaking
        self.llm = llm
        self.history = history or ChatHistory()
        self._seen = SeenMessages()
        self._transcripts = _Bounded(CACHED_TRANSCRIPTS)

    async def aclose(self) -> None:
        if self.llm is not None:
            await self.llm.aclose()

    # ---- which messages ----------------------------------------------------------------------------

    def claim(self, message_id: int) -> bool:
        """True the first time a message id is seen; False for a repeated event (bounded memory)."""
        return self._seen.claim(message_id)

    @staticmethod
    def handled_here(message: discord.Message, rules: GuildSettings) -> bool:
        """Automatic handling is on in this server and this channel (or the thread's parent) is listed."""
        if rules.voice_message_mode == "off":
            return False
        channel_ids = {message.channel.id, getattr(message.channel, "parent_id", None)}
        return bool(channel_ids & set(rules.voice_message_channel_ids))

    # ---- transcription -----------------------------------------------------------------------------

    async def transcribe(self, message: discord.Message, limits: VoiceMessageLimits) -> Heard:
        """The message's transcript: computed once per message, shared by concurrent callers."""
        future = self._transcripts.get(message.id)
        if future is None:
            future = asyncio.ensure_future(self._transcribe(message, limits))
            self._transcripts.put(message.id, future)
            future.add_done_callback(lambda f: self._forget_failed(message.id, f))
        return await asyncio.shield(future)

    def _forget_failed(self, message_id: int, future: asyncio.Future[Heard]) -> None:
        if future.cancelled() or future.exception() is not None:  # retrieving it also silences asyncio
            self._transcripts.pop(message_id, None)

    async def _transcribe(self, message: discord.Message, limits: VoiceMessageLimits) -> Heard:
        att = audio_attachment(message)
        if att is None:
            raise NotAudio(tr("That message has no voice message or audio file to listen to."))
        check_declared(att, limits)
        upload = await read_upload(att, message, max_bytes=limits.max_bytes)
        decoded = await decode_audio_async(
            upload.data,
            sample_rate=TRANSCRIBE_RATE,
            max_seconds=limits.max_seconds,
            max_bytes=limits.max_bytes,
        )
        result = await self.speech.transcribe(decoded.pcm, TRANSCRIBE_RATE)
        text = " ".join(result.text.split())
        if not text:
            raise EmptyAudio(tr(NO_WORDS))
        log.info(
            "voice message transcribed",
            extra={"guild_id": message.guild.id if message.guild else None, "seconds": decoded.duration_s},
        )
        return Heard(text, result.language, decoded.duration_s)

    # ---- relay -------------------------------------------------------------------------------------

    async def relay(self, author: discord.Member, heard: Heard, *, text_channel_id: int) -> Queued:
        """Speak the transcript in the author's own voice where they are (all of /speak's checks)."""
        return await self.speaking.say(author, author, heard.text, text_channel_id=text_channel_id)

    # ---- assistant ---------------------------------------------------------------------------------

    async def answer(self, requester: discord.Member, heard: Heard, *, text_channel_id: int) -> Answer:
        """Ask the model; speak each finished sentence at once; return the whole (cut) answer."""
        if self.llm is None:
            raise AssistantNotConfigured(
                tr(
                    "The assistant isn't set up on this bot: its operator needs to set LLM_BASE_URL "
                    "(see the README)."
                )
            )
        rules = await self.repos.settings.get(requester.guild.id)
        answer = Answer(heard, "", cut=False)
        owner = self._assistant_owner(requester, rules)
        voice: AssistantVoice | None = None
        try:
            voice = await self.speaking.assistant_voice(requester, owner, text_channel_id=text_channel_id)
            answer.voice_owner_id, answer.channel = owner.id, voice.channel
        except NotInVoiceChannel:
            answer.not_spoken = tr("Join a voice channel to hear my answers spoken.")
        messages = build_messages(rules.llm_system_prompt, self.history.messages(text_channel_id), heard.text)
        kept: list[str] = []
        splitter = SentenceSplitter()
        stream = self.llm.stream(messages)
        try:
            async for piece in stream:
                if not await self._take(splitter.feed(piece), kept, rules, voice, answer):
                    break
            else:
                tail = splitter.flush()
                await self._take([tail] if tail else [], kept, rules, voice, answer)
        except AssistantError as exc:
            if not kept:
                raise
            answer.interrupted = exc.message
        finally:
            await stream.aclose()
        if not kept:
            raise AssistantBadResponse(tr("The assistant gave an empty answer. Try asking again."))
        answer.text = " ".join(kept)
        if answer.interrupted is None:
            self.history.add_exchange(text_channel_id, heard.text, answer.text)
        if voice is not None:
            answer.utterances = voice.queued
            if voice.stopped and answer.not_spoken is None:
                # TRANSLATORS: {reason} is a short phrase without a final period ("the voice was deleted").
                answer.not_spoken = tr("I stopped speaking: {reason}.", reason=voice.stopped)
        return answer

    async def _take(
        self,
        sentences: list[str],
        kept: list[str],
        rules: GuildSettings,
        voice: AssistantVoice | None,
        answer: Answer,
    ) -> bool:
        """Keep (and speak) sentences while they fit the speech limit; False once the limit is reached."""
        for sentence in sentences:
            fitting, cut = cut_at_sentence([*kept, sentence], rules.max_text_length)
            new = fitting[len(kept) :]
            kept.extend(new)
            if voice is not None and answer.not_spoken is None:
                for text in new:
                    try:
                        await voice.say(text)
                    except VoxcloneError as exc:  # the queue filled up, a voice was removed...
                        # TRANSLATORS: {reason} is a whole sentence, with its final period.
                        answer.not_spoken = tr("I stopped speaking: {reason}", reason=exc.message)
                        break
            if cut:
                answer.cut = True
                return False
        return True

    def _assistant_owner(self, requester: discord.Member, rules: GuildSettings) -> discord.Member:
        if rules.assistant_voice_user_id is None or rules.assistant_voice_user_id == requester.id:
            return requester
        owner = requester.guild.get_member(rules.assistant_voice_user_id)
        if owner is None:
            raise NoVoiceProfile(
                tr(
                    "The assistant voice chosen for this server belongs to someone who is no longer here. "
                    "An admin can choose another with `/consent assistant`."
                )
            )
        return owner


def check_declared(att: discord.Attachment, limits: VoiceMessageLimits) -> None:
    """Refuse at once, before downloading, what the attachment itself says is too long or too large."""
    if att.duration is not None and att.duration > limits.max_seconds:
        raise AudioTooLong(
            tr(
                "That voice message is {duration} long; I handle voice messages up to {limit}. "
                "Send a shorter one.",
                duration=_fmt_duration(att.duration),
                limit=_fmt_duration(limits.max_seconds),
            )
        )
    if att.size > limits.max_bytes:
        raise AudioTooLarge(
            tr(
                "That recording is {size}; I handle recordings up to {limit}. Send a shorter one.",
                size=size_text(att.size),
                limit=size_text(limits.max_bytes),
            )
        )


def _short(text: str, limit: int = DISCORD_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def transcript_reply(heard: Heard) -> str:
    header = tr(
        "**Transcript** ({language}, {duration}):",
        language=language_name(heard.language),
        duration=_fmt_duration(heard.duration_s),
    )
    return f"🎙️ {header}\n>>> {_short(heard.text)}"


def relay_reply(heard: Heard, queued: Queued | None, refusal: str | None) -> str:
    base = transcript_reply(heard)
    if queued is not None:
        saying = tr("Saying this in your voice in {channel}.", channel=queued.channel.mention)
        return f"🔊 {saying}\n{base}"
    return f"{base}\n\n" + tr("I didn't say it aloud: {reason}", reason=refusal)


def answer_reply(answer: Answer) -> str:
    lines = [f"🤖 {_short(answer.text, DISCORD_LIMIT - 300)}"]
    if answer.cut:
        cut = tr("cut at a sentence: the rest is past this server's speech limit")
        lines.append(f"*({cut})*")
    if answer.interrupted:
        lines.append(f"*({answer.interrupted})*")
    if answer.not_spoken:
        lines.append(f"*{answer.not_spoken}*")
    return "\n".join(lines)
