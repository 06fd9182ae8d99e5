"""Enrolment: a fresh consent phrase, then a recording of it checked, verified and cloned.

The flow (each stage reported through ``progress``): decode the upload (ffmpeg intake) → quality gate →
transcribe → the transcript must match the phrase → an optional reference clip must be the same speaker
→ XTTS conditioning latents → stored with the consent record, consuming the phrase in the same
transaction → a spectrogram. The result is answered at once; the short preview in the new voice
(:meth:`EnrollmentService.preview`, capped in length and time) is made afterwards and sent when ready.
Re-enrolling replaces the old voice only once the new one has passed every check.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from babel.numbers import format_decimal

from bot.errors import PhraseMismatch, ReferenceMismatch
from bot.policy import Actor, Policy
from core.i18n import N_, current_locale, ngettext, tr, using_locale
from core.intake import DecodedAudio, decode_audio_async
from storage import Challenge, ConsentRecord, ReferenceClip, Repositories, VoiceProfile
from storage.errors import ChallengeMissing
from storage.repos.profiles import MAX_RECORDING_BYTES
from worker.analysis.verify import consent_language, make_consent_phrase
from worker.errors import QualityRejected, SpeechError
from worker.service import SpeechService
from worker.types import PhraseMatch, QualityReport, SpeakerCheck, SpeechRequest

if TYPE_CHECKING:
    import discord

log = logging.getLogger("voxclone.enrollment")

STATEMENT_VERSION: Final = "2026-11-26.1"
INTAKE_RATE: Final = 24_000  # Hz: decoded uploads; the worker resamples for analysis
MAX_CLIP_SECONDS: Final = 120.0  # s: a consent reading or a reference clip
MAX_CLIP_BYTES: Final = 25 * 1024 * 1024  # bytes: Discord's default upload limit (reference clips)
MAX_CONSENT_BYTES: Final = MAX_RECORDING_BYTES  # bytes: the consent recording is kept, so it is capped lower
PREVIEW_TEXT: Final = N_("Hello! This is how my cloned voice sounds on this server.")
PREVIEW_RATE: Final = 24_000  # Hz: the speech service's s16le mono output
PREVIEW_MAX_SECONDS: Final = 6.0  # s of audio: the sentence above, spoken; synthesis stops there
PREVIEW_TIMEOUT_S: Final = 30.0  # s of waiting: what is made by then is sent (if PREVIEW_MIN_SECONDS)
PREVIEW_MIN_SECONDS: Final = 1.0  # s: less than this is no preview worth sending

Stage = Literal["checking", "transcribing", "comparing", "cloning", "done"]
STAGE_TEXT: Final[dict[Stage, str]] = {  # marked: shown as tr(STAGE_TEXT[stage])
    "checking": N_("Checking the audio…"),
    "transcribing": N_("Transcribing what you said…"),
    "comparing": N_("Comparing it with your phrase…"),
    "cloning": N_("Cloning your voice…"),
    "done": N_("Done."),
}
Progress = Callable[[Stage], Awaitable[None]]


def phrase_language(locale: discord.Locale | str | None) -> str:
    """The language of a member's consent phrase: their Discord client's when it has a phrasebook, else
    English (``worker.analysis.verify.PHRASEBOOKS``)."""
    return consent_language(str(locale) if locale else None)


def preview_text(language: str) -> str:
    """The preview sentence in the language it is spoken in (an XTTS code; English when no catalog)."""
    with using_locale(language):
        return tr(PREVIEW_TEXT)


def consent_statement(phrase: str, server_name: str, retention_days: int | None, expires_at: datetime) -> str:
    """What the member agrees to, in plain words and in their language, with the phrase to read."""
    keep = (
        ngettext(
            "until you delete it, or {n} day after it was last used",
            "until you delete it, or {n} days after it was last used",
            retention_days,
        )
        if retention_days
        else tr("until you delete it")
    )
    expires = f"<t:{int(expires_at.timestamp())}:R>"  # Discord shows it in the reader's language
    # TRANSLATORS: keep the Markdown (**bold**, *italics*, > quote, `commands`) and the line breaks.
    # "Apps → Enroll this voice message" is the message command as Discord's menu shows it.
    return tr(
        "**Enroll your voice in {server}**\n"
        "By reading the phrase below you agree that voxclone may make a cloned voice of *you* in this "
        "server and speak text in it when you (or members you share it with) ask.\n\n"
        "**What is stored:** your voice's speaker embedding (numbers computed from your recording), this "
        "recording as proof of consent, its transcript, and quality figures.\n"
        "**Why:** to speak in your voice, and to show that you agreed.\n"
        "**For how long:** {keep}. Leaving the server deletes it too.\n"
        "**How to delete it:** `/voice delete`, at any time: it is immediate and complete. "
        "`/voice export` shows everything stored about you.\n"
        "Everything spoken in your voice carries an inaudible watermark and is announced in text.\n\n"
        "**Read this phrase aloud:**\n> {phrase}\n\n"
        "Record it as a voice message here and use the message command **Apps → Enroll this voice "
        "message**, or upload a recording with `/enroll clip:`. An optional longer `reference:` clip of "
        "you talking naturally improves the clone. The phrase expires {expires} and works once.",
        server=server_name,
        keep=keep,
        phrase=phrase,
        expires=expires,
    )


@dataclass(frozen=True)
class Upload:
    """An uploaded recording, as received."""

    data: bytes
    filename: str
    content_type: str | None


@dataclass(frozen=True)
class EnrollmentResult:
    profile: VoiceProfile
    replaced: bool  # the member had a voice before
    quality: QualityReport
    phrase: PhraseMatch
    speaker: SpeakerCheck | None  # when a reference clip was given
    spectrogram_png: bytes | None
    preview_request: SpeechRequest  # the preview to make next, in the new voice (see preview())


class EnrollmentService:
    """Issue phrases and turn a reading of one into a stored voice."""

    def __init__(
        self,
        repos: Repositories,
        speech: SpeechService,
        policy: Policy,
        make_phrase: Callable[[str], str] = make_consent_phrase,
        preview_timeout_s: float = PREVIEW_TIMEOUT_S,
    ) -> None:
        self.repos = repos
        self.speech = speech
        self.policy = policy
        self.make_phrase = make_phrase
        self.preview_timeout_s = preview_timeout_s

    async def begin(self, guild_id: int, actor: Actor, language: str = "en") -> Challenge:
        """Check the server allows it, then issue a fresh phrase (replacing any earlier one).

        The phrase is in ``language`` when there are phrases in it (:func:`phrase_language` picks it from
        the member's Discord locale), else in English; the challenge records which.
        """
        rules = await self.repos.settings.get(guild_id)
        self.policy.check_enroll(actor, rules)
        language = consent_language(language)
        phrase = self.make_phrase(language)
        return await self.repos.challenges.issue(guild_id, actor.user_id, phrase, language=language)

    async def enroll(
        self,
        guild_id: int,
        actor: Actor,
        clip: Upload,
        reference: Upload | None = None,
        progress: Progress | None = None,
    ) -> EnrollmentResult:
        """Check, verify, clone and store; raises a user-facing error at the first failed check."""

        async def stage(name: Stage) -> None:
            if progress is not None:
                await progress(name)

        rules = await self.repos.settings.get(guild_id)
        self.policy.check_enroll(actor, rules)
        challenge = await self.repos.challenges.active(guild_id, actor.user_id)
        if challenge is None:
            raise ChallengeMissing(
                tr(
                    "You don't have an open consent phrase (they expire after 10 minutes and work once). "
                    "Run `/enroll` to get one, then record it right away."
                )
            )
        await stage("checking")
        consent_audio = await _decode(clip)
        ref_audio = await _decode(reference) if reference is not None else None
        quality = await self.speech.check_quality(consent_audio.pcm, consent_audio.sample_rate)
        if not quality.accepted:
            raise QualityRejected(tr("This recording can't be used to clone your voice."), report=quality)
        await stage("transcribing")
        language = challenge.language  # the phrase's: transcribed, compared and enrolled in it
        heard = await self.speech.transcribe(consent_audio.pcm, consent_audio.sample_rate, language)
        await stage("comparing")
        match = await self.speech.match_phrase(challenge.phrase, heard.text, language)
        if not match.matched:
            raise PhraseMismatch(
                tr(
                    "Your recording doesn't match the phrase. I heard: “{heard}”. Read exactly the phrase "
                    "shown by `/enroll`, clearly and at a normal pace, and try again (the same phrase still "
                    "works until it expires).",
                    heard=_short(heard.text),
                )
            )
        speaker: SpeakerCheck | None = None
        if ref_audio is not None:
            speaker = await self.speech.compare_speakers(consent_audio.pcm, ref_audio.pcm, INTAKE_RATE)
            if not speaker.same_speaker:
                raise ReferenceMismatch(
                    tr(
                        "The reference clip doesn't sound like the same person as your consent recording "
                        "(similarity {similarity}, needed {threshold}). Only your own voice can be "
                        "enrolled: send a reference clip of yourself, or leave it out.",
                        similarity=_score(speaker.similarity),
                        threshold=_score(speaker.threshold),
                    )
                )
        await stage("cloning")
        source = ref_audio if ref_audio is not None else consent_audio
        cloned = await self.speech.embed(source.pcm, source.sample_rate)
        previous = await self.repos.profiles.get(guild_id, actor.user_id)
        profile = await self.repos.profiles.save_enrollment(
            guild_id,
            actor.user_id,
            language=language,
            embedding=cloned.embedding,
            clip=ReferenceClip(_pcm_hash(source), cloned.quality.speech_s, cloned.quality),
            consent=ConsentRecord(
                statement_version=STATEMENT_VERSION,
                phrase=challenge.phrase,
                transcript=heard.text,
                match_score=match.word_error_rate,
                speaker_similarity=speaker.similarity if speaker else None,
                recorded_at=datetime.now(UTC),
                clip_hash=_pcm_hash(consent_audio),
                recording=clip.data,
                recording_mime=clip.content_type or "application/octet-stream",
            ),
            challenge_id=challenge.id,
        )
        log.info("voice enrolled", extra={"guild_id": guild_id, "user_id": actor.user_id})
        png = await asyncio.to_thread(_spectrogram, source, cloned.quality)
        await stage("done")
        request = SpeechRequest(preview_text(language), language, cloned.embedding)
        return EnrollmentResult(profile, previous is not None, cloned.quality, match, speaker, png, request)

    async def preview(self, request: SpeechRequest) -> bytes | None:
        """A WAV of at most ``PREVIEW_MAX_SECONDS`` in the voice, made within ``preview_timeout_s``.

        Synthesis stops at the cap (closing the stream cancels it upstream); at the time limit what was
        made so far is kept. None when the engine failed or made less than ``PREVIEW_MIN_SECONDS`` in
        time: the voice is stored either way.
        """
        cap = int(PREVIEW_MAX_SECONDS * PREVIEW_RATE) * 2  # bytes of s16le
        pcm = bytearray()
        stream = self.speech.synthesize(request)
        try:
            async with asyncio.timeout(self.preview_timeout_s):
                async for chunk in stream:
                    pcm += chunk
                    if len(pcm) >= cap:
                        break
        except TimeoutError:
            log.warning(
                "preview: %.1f s of audio after %.0f s", len(pcm) / 2 / PREVIEW_RATE, self.preview_timeout_s
            )
        except SpeechError as exc:
            log.warning("preview failed: %s", exc.code, extra={"code": exc.code})
            return None
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if len(pcm) < PREVIEW_MIN_SECONDS * PREVIEW_RATE * 2:
            return None
        return wav_bytes(bytes(pcm[:cap]), PREVIEW_RATE)


async def _decode(upload: Upload) -> DecodedAudio:
    return await decode_audio_async(
        upload.data, sample_rate=INTAKE_RATE, max_seconds=MAX_CLIP_SECONDS, max_bytes=MAX_CLIP_BYTES
    )


def _pcm_hash(audio: DecodedAudio) -> str:
    return hashlib.sha256(np.ascontiguousarray(audio.pcm, dtype="<f4").tobytes()).hexdigest()


def _score(value: float) -> str:
    """A similarity score as the reader writes decimals ("0.62", "0,62")."""
    return format_decimal(value, format="0.00", locale=current_locale())


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _spectrogram(audio: DecodedAudio, quality: QualityReport) -> bytes | None:
    try:
        from worker.analysis.plot import render_spectrogram
    except ImportError:  # a bot-only install without matplotlib
        return None
    return render_spectrogram(audio.pcm, audio.sample_rate, list(quality.kept))


def wav_bytes(pcm_s16le: bytes, sample_rate: int) -> bytes:
    """Mono s16le PCM as a WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm_s16le)
    return buf.getvalue()
