"""Voices stored the way a passed enrolment stores them, from real espeak-ng speech and the real engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from storage import ConsentRecord, ReferenceClip, VoiceProfile
from tests.support.audio import espeak_wav, read_wav
from worker.service import SpeechService
from worker.types import EmbeddingResult, SpeechRequest

REFERENCE_TEXT = "Our neighbours planted a row of apple trees along the old stone fence last spring."


async def embed_espeak(
    speech: SpeechService, tmp: Path, voice: str = "en-us", pitch: int = 50
) -> EmbeddingResult:
    """Conditioning computed by the engines from espeak-ng reading the reference text in ``voice``."""
    wav = espeak_wav(tmp / f"reference-{voice}-{pitch}.wav", REFERENCE_TEXT, voice, speed=140, pitch=pitch)
    pcm, rate = read_wav(wav)
    return await speech.embed(pcm, rate)


async def store_voice(
    repos: Any, guild_id: int, user_id: int, result: EmbeddingResult, *, language: str = "en"
) -> VoiceProfile:
    """Save ``result`` as ``user_id``'s voice (no phrase, no transcription: enrolment is tested elsewhere)."""
    profile: VoiceProfile = await repos.profiles.save_enrollment(
        guild_id,
        user_id,
        language=language,
        embedding=result.embedding,
        clip=ReferenceClip("a" * 64, result.quality.speech_s, result.quality),
        consent=ConsentRecord(
            statement_version="test",
            phrase="test phrase",
            transcript="test phrase",
            match_score=0.0,
            speaker_similarity=None,
            recorded_at=datetime.now(UTC),
            clip_hash="b" * 64,
        ),
    )
    return profile


def spy_synthesis(speech: SpeechService, monkeypatch: pytest.MonkeyPatch) -> list[SpeechRequest]:
    """Every request sent to the (real) speech service, in order: text, language and embedding."""
    seen: list[SpeechRequest] = []
    original = speech.synthesize

    def synthesize(request: SpeechRequest) -> AsyncIterator[bytes]:
        seen.append(request)
        return original(request)

    monkeypatch.setattr(speech, "synthesize", synthesize)
    return seen
