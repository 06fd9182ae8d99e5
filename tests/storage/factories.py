"""Test data for the storage suite: voices with real XTTS-v2 shapes, consent records, enrollments."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np

from storage import ConsentRecord, ReferenceClip, Repositories, VoiceProfile
from worker.types import QualityReport, VoiceEmbedding

MODEL_ID = "xtts-v2-test-checkpoint"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_embedding(seed: int = 0, *, full_size: bool = True, model_id: str = MODEL_ID) -> VoiceEmbedding:
    """Random float32 conditioning of the real shapes ([1, 32, 1024] and [1, 512, 1]) or tiny ones."""
    rng = np.random.default_rng(seed)
    latent_shape = (1, 32, 1024) if full_size else (1, 4, 8)
    speaker_shape = (1, 512, 1) if full_size else (1, 16, 1)
    return VoiceEmbedding(
        model_id=model_id,
        gpt_cond_latent=rng.standard_normal(latent_shape, dtype=np.float32),
        speaker_embedding=rng.standard_normal(speaker_shape, dtype=np.float32),
    )


def make_quality() -> QualityReport:
    return QualityReport(
        accepted=True,
        duration_s=14.2,
        speech_s=11.5,
        level_dbfs=-21.0,
        peak_dbfs=-3.5,
        clipped_fraction=0.0,
        noise_dbfs=-62.0,
        snr_db=41.0,
        kept=[(0.4, 6.1), (6.9, 12.7)],
        reasons=[],
        warnings=["A little room echo: a smaller room sounds better."],
    )


def clip_hash(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def make_consent(phrase: str = "purple elephants sing at noon", *, at: datetime = T0) -> ConsentRecord:
    return ConsentRecord(
        statement_version="2026-11",
        phrase=phrase,
        transcript=phrase.capitalize() + ".",
        match_score=0.0,
        speaker_similarity=0.87,
        recorded_at=at,
        clip_hash=clip_hash(phrase),
    )


async def enroll(
    repos: Repositories,
    guild_id: int,
    user_id: int,
    *,
    seed: int = 0,
    at: datetime = T0,
    full_size: bool = False,
    language: str = "en",
    consent: ConsentRecord | None = None,
    challenge_id: int | None = None,
) -> VoiceProfile:
    """Store a voice made from ``seed``; the consent record is ``make_consent`` unless given."""
    return await repos.profiles.save_enrollment(
        guild_id,
        user_id,
        language=language,
        embedding=make_embedding(seed, full_size=full_size),
        clip=ReferenceClip(clip_hash=clip_hash(f"clip-{seed}"), speech_seconds=11.5, quality=make_quality()),
        consent=consent or make_consent(f"phrase number {seed}", at=at),
        now=at,
        challenge_id=challenge_id,
    )


def days(n: float) -> timedelta:
    return timedelta(days=n)
