"""Consent phrases: one at a time per member, usable once, only before they expire."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from storage import ChallengeExpired, ChallengeMissing, ChallengeUsed, Repositories
from tests.storage.factories import T0

GUILD, ALICE, BOB = 5_000_000_000_000_000_001, 6_000_000_000_000_000_001, 6_000_000_000_000_000_002
PHRASE = "seven quiet lanterns float upstream"


async def test_a_phrase_is_consumed_exactly_once(repos: Repositories) -> None:
    issued = await repos.challenges.issue(GUILD, ALICE, f"  {PHRASE} ", now=T0)
    assert issued.phrase == PHRASE
    assert issued.expires_at - issued.issued_at == timedelta(minutes=10)
    assert await repos.challenges.active(GUILD, ALICE, now=T0 + timedelta(minutes=1)) == issued

    used = await repos.challenges.consume(
        issued.id, guild_id=GUILD, user_id=ALICE, now=T0 + timedelta(minutes=2)
    )
    assert used.used_at == T0 + timedelta(minutes=2)
    with pytest.raises(ChallengeUsed) as info:
        await repos.challenges.consume(
            issued.id, guild_id=GUILD, user_id=ALICE, now=T0 + timedelta(minutes=3)
        )
    assert info.value.code == "challenge_used" and "/enroll" in info.value.message
    assert await repos.challenges.active(GUILD, ALICE, now=T0 + timedelta(minutes=3)) is None


async def test_an_expired_phrase_cannot_be_used(repos: Repositories) -> None:
    issued = await repos.challenges.issue(GUILD, ALICE, PHRASE, now=T0)
    late = T0 + timedelta(minutes=10, seconds=1)
    assert await repos.challenges.active(GUILD, ALICE, now=late) is None
    with pytest.raises(ChallengeExpired, match="expired"):
        await repos.challenges.consume(issued.id, guild_id=GUILD, user_id=ALICE, now=late)


async def test_only_the_member_it_was_issued_to_can_use_it(repos: Repositories) -> None:
    issued = await repos.challenges.issue(GUILD, ALICE, PHRASE, now=T0)
    with pytest.raises(ChallengeMissing):
        await repos.challenges.consume(issued.id, guild_id=GUILD, user_id=BOB, now=T0)
    with pytest.raises(ChallengeMissing):
        await repos.challenges.consume(issued.id, guild_id=GUILD + 1, user_id=ALICE, now=T0)
    await repos.challenges.consume(issued.id, guild_id=GUILD, user_id=ALICE, now=T0)  # still unused


async def test_a_new_phrase_replaces_the_old_one(repos: Repositories) -> None:
    old = await repos.challenges.issue(GUILD, ALICE, PHRASE, now=T0)
    new = await repos.challenges.issue(
        GUILD, ALICE, "a different phrase entirely", now=T0 + timedelta(minutes=1)
    )
    with pytest.raises(ChallengeMissing):
        await repos.challenges.consume(old.id, guild_id=GUILD, user_id=ALICE, now=T0 + timedelta(minutes=2))
    assert await repos.challenges.active(GUILD, ALICE, now=T0 + timedelta(minutes=2)) == new
    bob = await repos.challenges.issue(GUILD, BOB, PHRASE, now=T0)  # other members are unaffected
    assert await repos.challenges.active(GUILD, ALICE, now=T0 + timedelta(minutes=2)) == new
    assert await repos.challenges.active(GUILD, BOB, now=T0 + timedelta(minutes=2)) == bob


async def test_racing_consumers_get_exactly_one_success(repos: Repositories) -> None:
    issued = await repos.challenges.issue(GUILD, ALICE, PHRASE, now=T0)
    results = await asyncio.gather(
        *(repos.challenges.consume(issued.id, guild_id=GUILD, user_id=ALICE, now=T0) for _ in range(6)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1
    assert all(isinstance(r, ChallengeUsed) for r in results if isinstance(r, BaseException))


async def test_purge_and_validation(repos: Repositories) -> None:
    await repos.challenges.issue(GUILD, ALICE, PHRASE, now=T0)
    await repos.challenges.issue(GUILD, BOB, PHRASE, now=T0 + timedelta(days=2))
    assert await repos.challenges.purge_expired(now=T0 + timedelta(days=2)) == 1
    assert await repos.challenges.active(GUILD, BOB, now=T0 + timedelta(days=2)) is not None
    with pytest.raises(ValueError, match="phrase"):
        await repos.challenges.issue(GUILD, ALICE, "   ")
    with pytest.raises(ValueError, match="ttl"):
        await repos.challenges.issue(GUILD, ALICE, PHRASE, ttl=timedelta(0))


async def test_a_phrase_keeps_its_language(repos: Repositories) -> None:
    """The language decides what the reading is transcribed in: it must survive issue, lookup and use."""
    phrase = "le bateau, la tasse, la moto, la cabane, le kiwi, la montagne, le café"
    issued = await repos.challenges.issue(GUILD, ALICE, phrase, language="fr", now=T0)
    assert (issued.phrase, issued.language) == (phrase, "fr")
    found = await repos.challenges.active(GUILD, ALICE, now=T0 + timedelta(minutes=1))
    assert found is not None and found.language == "fr" and found.phrase == phrase
    used = await repos.challenges.consume(issued.id, guild_id=GUILD, user_id=ALICE, now=T0)
    assert used.language == "fr"
    english = await repos.challenges.issue(GUILD, BOB, PHRASE, now=T0)  # English unless told
    assert english.language == "en"
    exported = await repos.profiles.export_member(GUILD, ALICE)
    assert [c.language for c in exported.challenges] == ["fr"]


@pytest.mark.parametrize("language", ["", " fr", "x" * 17])
async def test_a_phrase_language_must_be_a_code(repos: Repositories, language: str) -> None:
    with pytest.raises(ValueError, match="language must be a code"):
        await repos.challenges.issue(GUILD, ALICE, PHRASE, language=language, now=T0)
    assert await repos.challenges.active(GUILD, ALICE, now=T0) is None
