"""Voice profiles: embedding round trip, re-enrolling, deletion (cascade, audit kept), guilds, retention."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import ColumnElement, Table, func, select, text
from sqlalchemy.exc import StatementError

from storage import Database, ReferenceClip, Repositories
from storage.schema import consent_records, embeddings, voice_profiles, voice_shares
from tests.storage.factories import T0, clip_hash, days, enroll, make_consent, make_embedding, make_quality
from worker.types import VoiceEmbedding

GUILD, OTHER_GUILD = 111_111_111_111_111_111, 222_222_222_222_222_222
ALICE, BOB, CAROL = 900_000_000_000_000_001, 900_000_000_000_000_002, 900_000_000_000_000_003


async def _count(db: Database, table: Table, *where: ColumnElement[bool]) -> int:
    async with db.read() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


async def test_embedding_round_trip_is_bit_identical(repos: Repositories) -> None:
    embedding = make_embedding(7, full_size=True)
    quality = make_quality()
    await repos.profiles.save_enrollment(
        GUILD,
        ALICE,
        language="de",
        embedding=embedding,
        clip=ReferenceClip(clip_hash=clip_hash("alice"), speech_seconds=11.5, quality=quality),
        consent=make_consent(),
        now=T0,
    )
    voice = await repos.profiles.get_voice(GUILD, ALICE)
    assert voice is not None
    for name in ("gpt_cond_latent", "speaker_embedding"):
        stored, original = getattr(voice.embedding, name), getattr(embedding, name)
        assert stored.dtype == np.float32 and stored.shape == original.shape
        assert stored.tobytes() == original.tobytes()
        stored[...] = 0  # a writable copy: callers may hand it to torch
    assert voice.embedding.model_id == embedding.model_id
    assert voice.clip == ReferenceClip(clip_hash=clip_hash("alice"), speech_seconds=11.5, quality=quality)
    assert voice.profile.guild_id == GUILD and voice.profile.user_id == ALICE  # 64-bit ids intact
    assert voice.profile.language == "de"
    assert voice.profile.created_at == T0 and voice.profile.created_at.tzinfo is not None
    assert await repos.profiles.get_voice(GUILD, BOB) is None
    assert await repos.profiles.get_voice(OTHER_GUILD, ALICE) is None


async def test_re_enrolling_replaces_the_voice_and_its_consent_record(
    repos: Repositories, database: Database
) -> None:
    first = await enroll(repos, GUILD, ALICE, seed=1, at=T0)
    second = await enroll(repos, GUILD, ALICE, seed=2, at=T0 + days(3))
    assert second.id == first.id
    assert second.created_at == T0 and second.enrolled_at == T0 + days(3)
    voice = await repos.profiles.get_voice(GUILD, ALICE)
    assert voice is not None
    assert np.array_equal(voice.embedding.gpt_cond_latent, make_embedding(2, full_size=False).gpt_cond_latent)
    assert await _count(database, embeddings) == 2  # the old arrays are gone
    assert await _count(database, consent_records) == 1  # and the consent that allowed them
    [kept] = await repos.profiles.consent_records(GUILD, ALICE)
    assert kept.phrase == "phrase number 2"


async def test_failed_re_enrollment_leaves_the_old_voice(repos: Repositories) -> None:
    await enroll(repos, GUILD, ALICE, seed=1)
    bad = make_embedding(2, full_size=False)
    nan_latent = bad.gpt_cond_latent.copy()
    nan_latent[0, 0, 0] = np.nan
    for embedding in (
        dataclasses.replace(bad, gpt_cond_latent=nan_latent),
        dataclasses.replace(bad, speaker_embedding=bad.speaker_embedding.astype(np.float64)),
    ):
        with pytest.raises(ValueError):
            await repos.profiles.save_enrollment(
                GUILD,
                ALICE,
                language="en",
                embedding=embedding,
                clip=ReferenceClip(clip_hash=clip_hash("x"), speech_seconds=9.0),
                consent=make_consent(),
            )
    # A failure inside the transaction, after the old arrays were deleted: all of it rolls back.
    with pytest.raises(StatementError, match="naive datetime"):
        await repos.profiles.save_enrollment(
            GUILD,
            ALICE,
            language="en",
            embedding=bad,
            clip=ReferenceClip(clip_hash=clip_hash("x"), speech_seconds=9.0),
            consent=dataclasses.replace(make_consent(), recorded_at=datetime(2026, 11, 1)),  # naive
        )
    voice = await repos.profiles.get_voice(GUILD, ALICE)
    assert voice is not None
    assert np.array_equal(
        voice.embedding.speaker_embedding, make_embedding(1, full_size=False).speaker_embedding
    )


async def test_delete_removes_the_voice_everywhere_but_keeps_the_audit_log(
    repos: Repositories, database: Database
) -> None:
    await enroll(repos, GUILD, ALICE, seed=1)
    await enroll(repos, GUILD, BOB, seed=2)
    await enroll(repos, OTHER_GUILD, ALICE, seed=3)
    await repos.shares.grant(GUILD, ALICE, BOB)
    await repos.shares.grant(GUILD, ALICE, CAROL)
    await repos.shares.grant(GUILD, BOB, ALICE)  # received by Alice
    await repos.assistant.opt_in(GUILD, ALICE)
    await repos.settings.update(GUILD, updated_by=BOB, assistant_voice_user_id=ALICE)
    await repos.challenges.issue(GUILD, ALICE, "tangerine rivers hum softly")

    report = await repos.profiles.delete(GUILD, ALICE, actor_id=ALICE)

    assert report.profile_deleted and report.embeddings == 2 and report.consent_records == 1
    assert (report.shares_granted, report.shares_received, report.challenges) == (2, 1, 1)
    assert report.assistant_opt_in and report.was_assistant_voice
    assert await repos.profiles.get(GUILD, ALICE) is None
    assert await repos.shares.received(GUILD, ALICE) == []
    assert not await repos.assistant.is_opted_in(GUILD, ALICE)
    assert (await repos.settings.get(GUILD)).assistant_voice_user_id is None
    assert await repos.challenges.active(GUILD, ALICE) is None
    # Bob's voice and Alice's voice in the other server are untouched.
    assert await repos.profiles.get_voice(GUILD, BOB) is not None
    assert await repos.profiles.get_voice(OTHER_GUILD, ALICE) is not None
    assert await _count(database, embeddings) == 4 and await _count(database, consent_records) == 2
    assert await _count(database, voice_shares) == 0
    # The audit log keeps the enrollment and records the deletion (counts, no content).
    actions = [
        e.action for e in await repos.audit.recent(GUILD, limit=100) if ALICE in (e.subject_id, e.actor_id)
    ]
    assert actions[0] == "voice.deleted" and "voice.enrolled" in actions
    deletion = (await repos.audit.recent(GUILD, limit=1))[0]
    assert deletion.details["reason"] == "member_request" and deletion.details["embeddings"] == 2
    # Deleting again finds nothing and writes no second entry.
    again = await repos.profiles.delete(GUILD, ALICE, actor_id=ALICE)
    assert not again.anything
    assert (await repos.audit.recent(GUILD, limit=1))[0].id == deletion.id
    with pytest.raises(ValueError, match="reason"):
        await repos.profiles.delete(GUILD, BOB, actor_id=None, reason="because")


async def test_schema_cascades_when_a_profile_row_is_deleted(repos: Repositories, database: Database) -> None:
    await enroll(repos, GUILD, ALICE)
    await repos.shares.grant(GUILD, ALICE, BOB)
    async with database.write() as conn:
        await conn.execute(voice_profiles.delete())
    assert await _count(database, embeddings) == 0
    assert await _count(database, consent_records) == 0
    assert await _count(database, voice_shares) == 0
    assert len(await repos.audit.recent(GUILD)) == 2  # no foreign key: the log stays


async def test_delete_guild_removes_everything_of_that_guild_only(
    repos: Repositories, database: Database
) -> None:
    for guild in (GUILD, OTHER_GUILD):
        await repos.settings.update(guild, updated_by=ALICE, cloning_enabled=True)
        await enroll(repos, guild, ALICE, seed=1)
        await enroll(repos, guild, BOB, seed=2)
        await repos.shares.grant(guild, ALICE, BOB)
        await repos.assistant.opt_in(guild, BOB)
        await repos.challenges.issue(guild, CAROL, "violet clocks drift east")

    report = await repos.profiles.delete_guild(GUILD)

    assert report.settings_deleted and report.profiles == 2 and report.embeddings == 4
    assert (report.consent_records, report.shares, report.challenges, report.assistant_opt_ins) == (
        2,
        1,
        1,
        1,
    )
    assert report.audit_entries >= 5
    assert await repos.profiles.list_for_guild(GUILD) == []
    assert not (await repos.settings.get(GUILD)).cloning_enabled  # back to defaults: no row
    remaining = await repos.audit.recent(GUILD)
    assert [e.action for e in remaining] == ["guild.purged"] and remaining[0].subject_id is None
    assert remaining[0].details["profiles"] == 2
    assert len(await repos.profiles.list_for_guild(OTHER_GUILD)) == 2
    assert (await repos.settings.get(OTHER_GUILD)).cloning_enabled
    assert await _count(database, embeddings) == 4


async def test_servers_and_members_with_stored_data_are_listed(repos: Repositories) -> None:
    """What the start-up catch-up checks: every server with data, every member something is kept about."""
    third = 333_333_333_333_333_333
    dave = 900_000_000_000_000_004
    await repos.settings.update(GUILD, updated_by=ALICE, cloning_enabled=True)
    await enroll(repos, GUILD, ALICE, seed=1)
    await repos.shares.grant(GUILD, ALICE, BOB)  # Bob has no voice, only a share received
    await repos.assistant.opt_in(GUILD, ALICE)
    await enroll(repos, OTHER_GUILD, CAROL, seed=2)  # a voice without settings
    await repos.assistant.opt_in(third, dave)  # an opt-in alone
    await repos.challenges.issue(third, CAROL, "violet clocks drift east")  # expires by itself: not listed

    assert await repos.profiles.guild_ids() == {GUILD, OTHER_GUILD, third}
    assert await repos.profiles.member_ids(GUILD) == {ALICE, BOB}
    assert await repos.profiles.member_ids(OTHER_GUILD) == {CAROL}
    assert await repos.profiles.member_ids(third) == {dave}
    await repos.profiles.delete_guild(GUILD)
    assert await repos.profiles.guild_ids() == {OTHER_GUILD, third}  # the purge's audit entry is no data
    assert await repos.profiles.member_ids(GUILD) == set()


async def test_retention_lists_voices_unused_for_too_long(repos: Repositories) -> None:
    now = T0 + days(100)
    await repos.settings.update(GUILD, updated_by=None, retention_days=30)
    await repos.settings.update(OTHER_GUILD, updated_by=None, retention_days=7)
    stale = await enroll(repos, GUILD, ALICE, seed=1, at=now - days(40))  # never used
    await enroll(repos, GUILD, BOB, seed=2, at=now - days(40))
    assert await repos.profiles.touch_last_used(GUILD, BOB, now=now - days(5))
    await enroll(repos, GUILD, CAROL, seed=3, at=now - days(29))
    other = await enroll(repos, OTHER_GUILD, ALICE, seed=4, at=now - days(8))
    await enroll(repos, 333, ALICE, seed=5, at=now - days(1000))  # no retention set there

    expired = await repos.profiles.list_expired(now)

    assert [(p.guild_id, p.user_id) for p in expired] == [(GUILD, ALICE), (OTHER_GUILD, ALICE)]
    assert [p.id for p in expired] == [stale.id, other.id]
    assert not await repos.profiles.touch_last_used(GUILD, 404, now=now)


async def test_export_contains_everything_about_the_member(repos: Repositories) -> None:
    await enroll(repos, GUILD, ALICE, seed=1, full_size=True)
    await enroll(repos, GUILD, BOB, seed=2)
    await repos.shares.grant(GUILD, ALICE, BOB)
    await repos.shares.grant(GUILD, BOB, ALICE)
    await repos.assistant.opt_in(GUILD, ALICE)
    await repos.challenges.issue(GUILD, ALICE, "amber kites circle twice")

    export = await repos.profiles.export_member(GUILD, ALICE)

    assert export.profile is not None and export.profile.user_id == ALICE
    assert export.embedding is not None and export.embedding.gpt_cond_latent.shape == (1, 32, 1024)
    assert {i.kind for i in export.embedding_info} == {"gpt_cond_latent", "speaker_embedding"}
    assert export.embedding_info[0].quality == make_quality()
    assert [c.phrase for c in export.consent_records] == ["phrase number 1"]
    assert [s.grantee_user_id for s in export.shares_granted] == [BOB]
    assert [s.owner_user_id for s in export.shares_received] == [BOB]
    assert export.assistant_opt_in and [c.phrase for c in export.challenges] == ["amber kites circle twice"]
    assert {e.action for e in export.audit_entries} >= {
        "voice.enrolled",
        "voice.shared",
        "assistant.opted_in",
    }
    as_json = json.loads(json.dumps(export.to_dict()))
    back = VoiceEmbedding.from_wire(as_json["embedding"])
    assert back.gpt_cond_latent.tobytes() == export.embedding.gpt_cond_latent.tobytes()
    assert as_json["profile"]["user_id"] == ALICE
    nobody = await repos.profiles.export_member(GUILD, CAROL)
    assert nobody.profile is None and nobody.embedding is None and nobody.consent_records == ()


async def test_damaged_blob_is_a_clear_storage_error(repos: Repositories, database: Database) -> None:
    from storage.errors import StorageError

    await enroll(repos, GUILD, ALICE)
    async with database.write() as conn:
        await conn.execute(
            text("UPDATE embeddings SET data = :d WHERE kind = 'speaker_embedding'"), {"d": b"\x00" * 7}
        )
    with pytest.raises(StorageError, match="enroll again"):
        await repos.profiles.get_voice(GUILD, ALICE)
