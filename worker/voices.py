"""The worker API's consented voices: the statement a speaker reads, its checks, and the library served.

A voice is added only from a recording of its speaker reading :func:`consent_statement` (fixed, naming
them and voxclone, like Azure Personal Voice's) that passes the checks ``/enroll`` makes, with the same
service calls: the quality gate, Whisper's transcript matched against the statement
(``match_phrase``), and the same speaker as the reference clip (``compare_speakers``). Only then is the
reference cloned and stored with its consent record. :class:`VoiceLibrary` keeps them (in the database:
``storage.repos.api_voices``); the HTTP API reads it at each request.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

import numpy as np

from worker.errors import InvalidRequest, QualityRejected, SpeechError
from worker.service import SpeechService
from worker.types import (
    ApiVoice,
    ApiVoiceConsent,
    ApiVoiceInfo,
    FloatArray,
    NewApiVoice,
    PhraseMatch,
    SpeakerCheck,
)

STATEMENT_VERSION: Final = "api-2026-12-05.1"
STATEMENT_LANGUAGE: Final = "en"  # the statement is English, whatever language the voice will speak
CLIP_SAMPLE_RATE: Final = 24_000  # Hz: both clips are decoded to this rate, as /enroll's uploads are
_NAME = re.compile(r"[^\W_][\w .'-]{0,62}[^\W_]|[^\W_]")  # letters/digits, inner spaces . ' - _


class VoiceLibrary(Protocol):
    """Where the consented voices are kept: ``open`` before use, ``aclose`` after."""

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def list(self) -> list[ApiVoiceInfo]: ...

    async def get(self, name: str) -> ApiVoice | None: ...

    async def add(self, voice: NewApiVoice) -> ApiVoiceInfo | None:
        """Store the voice with its consent record; None (and nothing stored) if the name is taken."""
        ...


class VoiceNotFound(SpeechError):
    """A request named a voice the library does not have (HTTP 404)."""

    code = "voice_not_found"
    http_status = 404


class ConsentRefused(SpeechError):
    """The consent recording does not allow the voice: says exactly which check failed and why."""

    code = "consent_refused"
    http_status = 422


def consent_statement(name: str) -> str:
    """What the speaker reads aloud, naming them and voxclone."""
    return (
        f"I, {name}, am aware that recordings of my voice will be used by voxclone "
        "to create and use a synthetic version of my voice."
    )


def check_name(name: str) -> str:
    """The voice name, stripped; ``InvalidRequest`` unless it is 1-64 letters, digits and inner . ' - _."""
    name = " ".join(name.split())
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"{name!r} cannot be a voice name: use 1-64 letters or digits, with spaces, dots, "
            "apostrophes, hyphens or underscores between them (the speaker's name, e.g. 'Ada Lovelace')."
        )
    return name


@dataclass(frozen=True)
class Clip:
    """A recording as given (kept as evidence for the consent clip) and its decoded mono PCM."""

    data: bytes
    mime: str
    pcm: FloatArray
    sample_rate: int

    @property
    def pcm_hash(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.pcm, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class ConsentChecks:
    """The figures of a consent recording that passed."""

    statement: str
    transcript: str
    phrase: PhraseMatch
    speaker: SpeakerCheck


async def check_consent(service: SpeechService, name: str, consent: Clip, reference: Clip) -> ConsentChecks:
    """The checks ``/enroll`` makes, in its order; ConsentRefused or QualityRejected at the first failure."""
    if consent.sample_rate != reference.sample_rate:
        raise InvalidRequest("Decode the consent and reference clips at one sample rate.")
    statement = consent_statement(name)
    quality = await service.check_quality(consent.pcm, consent.sample_rate)
    if not quality.accepted:
        reason = quality.reasons[0] if quality.reasons else "it cannot be analysed"
        raise QualityRejected(f"The consent recording cannot be used: {reason}", report=quality)
    heard = await service.transcribe(consent.pcm, consent.sample_rate, STATEMENT_LANGUAGE)
    phrase = await service.match_phrase(statement, heard.text)
    if not phrase.matched:
        raise ConsentRefused(
            "The consent recording does not say the statement. "
            f"Heard: “{' '.join(heard.text.split())}”; expected: “{statement}” "
            f"(word error rate {phrase.word_error_rate:.2f}, at most {phrase.max_word_error_rate:.2f} "
            f"passes). Print it with `voxclone voices statement {name!r}` and record {name} reading it."
        )
    speaker = await service.compare_speakers(consent.pcm, reference.pcm, consent.sample_rate)
    if not speaker.same_speaker:
        raise ConsentRefused(
            "The reference clip is not the same speaker as the consent recording "
            f"(similarity {speaker.similarity:.2f}, at least {speaker.threshold:.2f} needed). "
            "Only the person who read the statement can be cloned: use a reference clip of them."
        )
    return ConsentChecks(statement=statement, transcript=heard.text, phrase=phrase, speaker=speaker)


async def add_voice(
    service: SpeechService,
    library: VoiceLibrary,
    name: str,
    *,
    consent: Clip,
    reference: Clip,
    added_by: str,
    language: str = "en",
) -> ApiVoiceInfo:
    """Check the consent recording, clone the reference and store both; nothing is stored on a refusal."""
    name = check_name(name)
    if await library.get(name) is not None:
        raise InvalidRequest(f"A voice called {name!r} exists already: remove it first to replace it.")
    checks = await check_consent(service, name, consent, reference)
    cloned = await service.embed(reference.pcm, reference.sample_rate)
    record = ApiVoiceConsent(
        speaker_name=name,
        statement_version=STATEMENT_VERSION,
        statement=checks.statement,
        transcript=checks.transcript,
        word_error_rate=checks.phrase.word_error_rate,
        speaker_similarity=checks.speaker.similarity,
        added_by=added_by,
        recorded_at=datetime.now(UTC),
        clip_hash=consent.pcm_hash,
        recording=consent.data,
        recording_mime=consent.mime,
    )
    voice = NewApiVoice(
        name=name,
        language=language,
        embedding=cloned.embedding,
        reference_hash=reference.pcm_hash,
        speech_seconds=cloned.quality.speech_s,
        quality=cloned.quality,
        consent=record,
    )
    info = await library.add(voice)
    if info is None:
        raise InvalidRequest(f"A voice called {name!r} was added meanwhile: remove it first to replace it.")
    return info


async def find_voice(library: VoiceLibrary, name: str) -> ApiVoice:
    """The voice called ``name``; ``VoiceNotFound`` naming it (and the voices there are) otherwise."""
    voice = await library.get(name)
    if voice is not None:
        return voice
    names = [v.name for v in await library.list()]
    there = f"the voices here are: {', '.join(names)}" if names else "no voice has been added yet"
    raise VoiceNotFound(
        f"There is no voice called {name!r}: {there}. A voice is added with its speaker's recorded "
        "consent (`voxclone voices add`); GET /v1/audio/voices lists them."
    )


__all__ = [
    "CLIP_SAMPLE_RATE",
    "STATEMENT_VERSION",
    "Clip",
    "ConsentChecks",
    "ConsentRefused",
    "VoiceLibrary",
    "VoiceNotFound",
    "add_voice",
    "check_consent",
    "check_name",
    "consent_statement",
    "find_voice",
]
