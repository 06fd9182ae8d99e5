"""The consent phrase is spent in the enrollment's own transaction: both happen, or neither does."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Table, func, select

import storage.repos.profiles
from storage import (
    Challenge,
    ChallengeExpired,
    ChallengeMissing,
    ChallengeUsed,
    Database,
    ReferenceClip,
    Repositories,
    VoiceProfile,
)
from storage.schema import audit_log, consent_records, embeddings, voice_profiles
from tests.storage.factories import T0, clip_hash, enroll, make_consent, make_embedding

GUILD = 555_555_555_555_555_555
ALICE, BOB = 920_000_000_000_000_001, 920_000_000_000_000_002
PHRASE = "copper herons wade at dusk"
SOON = T0 + timedelta(minutes=2)


async def issue(repos: Repositories, user_id: int = ALICE) -> Challenge:
    return await repos.challenges.issue(GUILD, user_id, PHRASE, now=T0)


async def save(
    repos: Repositories,
    challenge_id: int,
    *,
    seed: int = 1,
    user_id: int = ALICE,
    phrase: str = PHRASE,
    now: datetime = SOON,
) -> VoiceProfile:
    consent = dataclasses.replace(make_consent(phrase, at=now), recording=b"OggS", recording_mime="audio/ogg")
    return await enroll(repos, GUILD, user_id, seed=seed, at=now, consent=consent, challenge_id=challenge_id)


async def rows(db: Database, table: Table) -> int:
    async with db.read() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def assert_nothing_stored(repos: Repositories, database: Database) -> None:
    assert await repos.profiles.get(GUILD, ALICE) is None
    for table in (voice_profiles, embeddings, consent_records, audit_log):
        assert await rows(database, table) == 0, table.name


async def test_enrolling_spends_the_phrase(repos: Repositories) -> None:
    challenge = await issue(repos)
    profile = await save(repos, challenge.id)
    assert profile.enrolled_at == SOON
    assert await repos.challenges.active(GUILD, ALICE, now=SOON) is None
    with pytest.raises(ChallengeUsed):
        await repos.challenges.consume(challenge.id, guild_id=GUILD, user_id=ALICE, now=SOON)
    assert [c.used_at for c in (await repos.profiles.export_member(GUILD, ALICE)).challenges] == [SOON]


async def test_a_spent_phrase_never_stores_a_second_voice(repos: Repositories, database: Database) -> None:
    challenge = await issue(repos)
    first = await save(repos, challenge.id, seed=1)
    with pytest.raises(ChallengeUsed):
        await save(repos, challenge.id, seed=2, now=SOON + timedelta(minutes=1))
    voice = await repos.profiles.get_voice(GUILD, ALICE)
    assert voice is not None and voice.profile == first
    assert np.array_equal(voice.embedding.gpt_cond_latent, make_embedding(1, full_size=False).gpt_cond_latent)
    assert (await rows(database, consent_records), await rows(database, audit_log)) == (1, 1)


async def test_a_phrase_spent_directly_cannot_enroll(repos: Repositories, database: Database) -> None:
    challenge = await issue(repos)
    await repos.challenges.consume(challenge.id, guild_id=GUILD, user_id=ALICE, now=T0)
    with pytest.raises(ChallengeUsed):
        await save(repos, challenge.id)
    await assert_nothing_stored(repos, database)


async def test_an_expired_phrase_stores_nothing(repos: Repositories, database: Database) -> None:
    challenge = await issue(repos)
    with pytest.raises(ChallengeExpired):
        await save(repos, challenge.id, now=T0 + timedelta(minutes=10, seconds=1))
    await assert_nothing_stored(repos, database)


async def test_someone_elses_or_a_replaced_phrase_stores_nothing(
    repos: Repositories, database: Database
) -> None:
    bobs = await issue(repos, BOB)
    with pytest.raises(ChallengeMissing):
        await save(repos, bobs.id)
    old = await issue(repos)
    new = await repos.challenges.issue(GUILD, ALICE, PHRASE, now=T0 + timedelta(minutes=1))
    with pytest.raises(ChallengeMissing):
        await save(repos, old.id)
    await assert_nothing_stored(repos, database)
    assert await repos.challenges.active(GUILD, BOB, now=SOON) == bobs  # untouched
    assert await repos.challenges.active(GUILD, ALICE, now=SOON) == new


async def test_a_save_failing_after_the_phrase_was_spent_leaves_it_usable(
    repos: Repositories, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    challenge = await issue(repos)
    calls: list[str] = []

    async def failing_audit(*args: Any, **kwargs: Any) -> None:
        # The last write of the transaction: the phrase is spent and the voice written by now.
        calls.append("audit")
        async with database.read() as other:  # nothing is visible outside the transaction yet
            assert await other.scalar(select(func.count()).select_from(voice_profiles)) == 0
        raise RuntimeError("disk full")

    monkeypatch.setattr(storage.repos.profiles, "append_audit", failing_audit)
    with pytest.raises(RuntimeError, match="disk full"):
        await save(repos, challenge.id)
    monkeypatch.undo()

    assert calls == ["audit"]
    await assert_nothing_stored(repos, database)
    assert await repos.challenges.active(GUILD, ALICE, now=SOON) == challenge  # still unused
    await save(repos, challenge.id)  # and the member's next try works
    assert await repos.profiles.get(GUILD, ALICE) is not None


async def test_a_consent_record_for_another_phrase_is_refused(
    repos: Repositories, database: Database
) -> None:
    challenge = await issue(repos)
    with pytest.raises(ValueError, match="phrase of consent challenge"):
        await save(repos, challenge.id, phrase="some other words")  # refused after consuming
    await assert_nothing_stored(repos, database)
    assert await repos.challenges.active(GUILD, ALICE, now=SOON) == challenge


async def test_invalid_arrays_leave_the_phrase_usable(repos: Repositories) -> None:
    challenge = await issue(repos)
    bad = make_embedding(1, full_size=False)
    with pytest.raises(ValueError, match="float32"):
        await repos.profiles.save_enrollment(
            GUILD,
            ALICE,
            language="en",
            embedding=dataclasses.replace(bad, gpt_cond_latent=bad.gpt_cond_latent.astype(np.float64)),
            clip=ReferenceClip(clip_hash=clip_hash("x"), speech_seconds=9.0),
            consent=make_consent(PHRASE, at=SOON),
            now=SOON,
            challenge_id=challenge.id,
        )
    assert await repos.challenges.active(GUILD, ALICE, now=SOON) == challenge


async def test_racing_enrollments_with_one_phrase_store_one_voice(
    repos: Repositories, database: Database
) -> None:
    challenge = await issue(repos)
    results = await asyncio.gather(
        *(save(repos, challenge.id, seed=seed) for seed in range(5)), return_exceptions=True
    )
    stored = [r for r in results if isinstance(r, VoiceProfile)]
    assert len(stored) == 1
    assert all(isinstance(r, ChallengeUsed) for r in results if not isinstance(r, VoiceProfile))
    assert (await rows(database, consent_records), await rows(database, embeddings)) == (1, 2)
