"""Consent recordings: kept byte-identical with their record, exported, not loaded for display, deleted."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from pathlib import Path

import pytest
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError

from storage import ConsentRecord, Database, Repositories, StoredSize, upgrade
from storage.repos.profiles import MAX_RECORDING_BYTES
from storage.schema import consent_records
from tests.storage.factories import T0, days, enroll, make_consent
from tests.support.audio import speech_message

GUILD, OTHER_GUILD = 333_333_333_333_333_333, 444_444_444_444_444_444
ALICE, BOB, CAROL = 910_000_000_000_000_001, 910_000_000_000_000_002, 910_000_000_000_000_003
OGG = "audio/ogg"
ALL_BYTES = bytes(range(256)) * 3  # every byte value, NULs included: nothing may be re-encoded


@pytest.fixture(scope="module")
def voice_message(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real Discord-style OGG/Opus voice message of someone reading a consent phrase."""
    folder = tmp_path_factory.mktemp("consent")
    return Path(speech_message(folder, "consent", "purple elephants sing at noon")).read_bytes()


def consent(recording: bytes | None, mime: str | None = OGG, **changes: object) -> ConsentRecord:
    record = dataclasses.replace(make_consent(), recording=recording, recording_mime=mime)
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


async def save(repos: Repositories, user_id: int, record: ConsentRecord, *, guild_id: int = GUILD) -> None:
    await enroll(repos, guild_id, user_id, seed=user_id % 97, at=record.recorded_at, consent=record)


async def count_recordings(db: Database, recording: bytes | None = None) -> int:
    """Rows still holding a recording (that exact one, if given), read straight from the table."""
    where: list[ColumnElement[bool]] = [consent_records.c.recording.is_not(None)]
    if recording is not None:
        where.append(consent_records.c.recording == recording)
    async with db.read() as conn:
        return int(await conn.scalar(select(func.count()).select_from(consent_records).where(*where)) or 0)


async def test_recording_round_trips_byte_identical(repos: Repositories, voice_message: bytes) -> None:
    assert voice_message[:4] == b"OggS"
    await save(repos, ALICE, consent(voice_message, "audio/ogg; codecs=opus"))
    await save(repos, BOB, consent(ALL_BYTES, "application/octet-stream"))

    assert await repos.profiles.consent_recording(GUILD, ALICE) == (voice_message, "audio/ogg; codecs=opus")
    assert await repos.profiles.consent_recording(GUILD, BOB) == (ALL_BYTES, "application/octet-stream")
    assert await repos.profiles.consent_recording(OTHER_GUILD, ALICE) is None  # no voice there

    export = await repos.profiles.export_member(GUILD, ALICE)
    [record] = export.consent_records
    assert record.recording == voice_message and record.recording_mime == "audio/ogg; codecs=opus"
    assert "OggS" not in repr(record) and "recording_mime" in repr(record)  # audio never in logs
    as_json = json.loads(json.dumps(export.to_dict()))
    [exported] = as_json["consent_records"]
    assert base64.b64decode(exported["recording"], validate=True) == voice_message
    assert exported["recording_mime"] == "audio/ogg; codecs=opus"


async def test_the_largest_allowed_recording_round_trips(repos: Repositories) -> None:
    biggest = (ALL_BYTES * (MAX_RECORDING_BYTES // len(ALL_BYTES) + 1))[:MAX_RECORDING_BYTES]
    await save(repos, ALICE, consent(biggest))
    assert await repos.profiles.consent_recording(GUILD, ALICE) == (biggest, OGG)


async def test_display_reads_leave_the_recording_out(repos: Repositories, voice_message: bytes) -> None:
    await save(repos, ALICE, consent(voice_message, recorded_at=T0))
    await save(repos, BOB, consent(None, None, recorded_at=T0 + days(1)))  # a record without audio

    [alice] = await repos.profiles.consent_records(GUILD, ALICE)
    [bob] = await repos.profiles.consent_records(GUILD, BOB)

    assert (alice.recorded_at, bob.recorded_at) == (T0, T0 + days(1))
    assert alice.recording is None and bob.recording is None
    assert (alice.recording_mime, bob.recording_mime) == (OGG, None)  # says whether one is kept
    assert alice.id is not None and alice.phrase == make_consent().phrase
    assert await repos.profiles.consent_records(GUILD, CAROL) == []
    [exported] = (await repos.profiles.export_member(GUILD, ALICE)).consent_records
    assert exported.recording == voice_message
    assert dataclasses.replace(exported, recording=None) == alice


async def test_the_newest_record_is_the_current_voices(repos: Repositories, voice_message: bytes) -> None:
    await save(repos, ALICE, consent(voice_message, recorded_at=T0))
    await save(repos, ALICE, consent(ALL_BYTES, recorded_at=T0 + days(2)))
    assert await repos.profiles.consent_recording(GUILD, ALICE) == (ALL_BYTES, OGG)
    await save(repos, ALICE, consent(None, None, recorded_at=T0 + days(3)))
    assert await repos.profiles.consent_recording(GUILD, ALICE) is None  # not an older voice's clip


async def test_re_enrolling_deletes_the_replaced_voices_recording(
    repos: Repositories, database: Database, voice_message: bytes
) -> None:
    """Only the consent for the voice in use is kept: re-enrolling ten times keeps one recording."""
    for n in range(10):
        await save(repos, ALICE, consent(voice_message + bytes([n]), recorded_at=T0 + days(n)))
    await save(repos, BOB, consent(ALL_BYTES))

    [kept] = await repos.profiles.consent_records(GUILD, ALICE)
    assert kept.recorded_at == T0 + days(9)
    assert await repos.profiles.consent_recording(GUILD, ALICE) == (voice_message + bytes([9]), OGG)
    assert await count_recordings(database) == 2  # Alice's newest and Bob's
    assert await count_recordings(database, voice_message + bytes([0])) == 0
    enrolled = [e for e in await repos.audit.recent(GUILD) if e.action == "voice.enrolled"]
    assert sorted(e.details["replaced_consent_records"] for e in enrolled) == [0, 0] + [1] * 9


async def test_a_refused_re_enrollment_keeps_the_voice_in_uses_recording(
    repos: Repositories, voice_message: bytes
) -> None:
    await save(repos, ALICE, consent(voice_message))
    with pytest.raises(ValueError, match="8 MiB"):
        await save(repos, ALICE, consent(b"x" * (MAX_RECORDING_BYTES + 1)))
    assert await repos.profiles.consent_recording(GUILD, ALICE) == (voice_message, OGG)


async def test_stored_size_counts_the_bytes_kept(repos: Repositories, voice_message: bytes) -> None:
    assert await repos.profiles.stored_size(GUILD, ALICE) == StoredSize(0, 0, 0, 0)
    for n in range(3):
        await save(repos, ALICE, consent(voice_message[: 1000 * (n + 1)]))
    await save(repos, BOB, consent(ALL_BYTES))
    await save(repos, CAROL, consent(None, None))
    await save(repos, ALICE, consent(ALL_BYTES), guild_id=OTHER_GUILD)
    voice = await repos.profiles.get_voice(GUILD, ALICE)
    assert voice is not None
    arrays = voice.embedding.gpt_cond_latent.nbytes + voice.embedding.speaker_embedding.nbytes

    alice = await repos.profiles.stored_size(GUILD, ALICE)
    server = await repos.profiles.stored_size(GUILD)

    assert alice == StoredSize(voices=1, consent_records=1, recording_bytes=3000, voice_bytes=arrays)
    assert server == StoredSize(3, 3, 3000 + len(ALL_BYTES), 3 * arrays)
    assert server.total_bytes == 3000 + len(ALL_BYTES) + 3 * arrays
    await repos.profiles.delete(GUILD, ALICE, actor_id=ALICE)
    assert await repos.profiles.stored_size(GUILD, ALICE) == StoredSize(0, 0, 0, 0)
    assert (await repos.profiles.stored_size(GUILD)).voices == 2


async def test_deleting_the_voice_deletes_its_recording(
    repos: Repositories, database: Database, voice_message: bytes
) -> None:
    await save(repos, ALICE, consent(voice_message, recorded_at=T0))
    await save(repos, BOB, consent(ALL_BYTES[::-1]))
    await save(repos, ALICE, consent(voice_message[::-1]), guild_id=OTHER_GUILD)
    assert await count_recordings(database, voice_message) == 1

    report = await repos.profiles.delete(GUILD, ALICE, actor_id=ALICE)

    assert report.consent_records == 1
    assert await count_recordings(database, voice_message) == 0
    assert await count_recordings(database) == 2  # Bob's, and Alice's in the other server
    assert await repos.profiles.consent_recording(GUILD, ALICE) is None
    assert (await repos.profiles.export_member(GUILD, ALICE)).consent_records == ()
    assert await repos.profiles.consent_recording(GUILD, BOB) == (ALL_BYTES[::-1], OGG)

    await repos.profiles.delete_guild(OTHER_GUILD)
    assert await count_recordings(database) == 1


async def test_the_schema_keeps_a_recording_and_its_type_together(
    repos: Repositories, database: Database
) -> None:
    await save(repos, ALICE, consent(b"OggS"))
    for values in ({"recording_mime": None}, {"recording": None}):
        with pytest.raises(IntegrityError, match="recording_mime"):
            async with database.write() as conn:
                await conn.execute(update(consent_records).values(**values))
    assert await repos.profiles.consent_recording(GUILD, ALICE) == (b"OggS", OGG)


def traces(secret: bytes, data: bytes) -> int:
    """How many of ``secret``'s 64-byte pieces occur in ``data`` (a BLOB spans several pages)."""
    return sum(1 for i in range(0, len(secret) - 63, 64) if secret[i : i + 64] in data)


async def test_sqlite_file_keeps_no_trace_of_a_deleted_recording(tmp_path: Path) -> None:
    """secure_delete: the deleted clip's bytes are overwritten in the file, not just unlinked."""
    path = tmp_path / "voxclone.db"
    url = f"sqlite+aiosqlite:///{path}"
    secret, kept = random.Random(1).randbytes(12_800), random.Random(2).randbytes(6_400)
    await upgrade(url)
    async with Database(url) as db:
        await save(Repositories(db), ALICE, consent(secret))
        await save(Repositories(db), BOB, consent(kept))
    assert traces(secret, path.read_bytes()) > 190  # found while stored (pieces across pages: not)
    async with Database(url) as db:
        await Repositories(db).profiles.delete(GUILD, ALICE, actor_id=ALICE)
    # Closing the last connection checkpoints the WAL into the file and removes the WAL.
    assert not path.with_name(path.name + "-wal").exists()
    data = path.read_bytes()
    assert traces(secret, data) == 0
    assert traces(kept, data) > 90  # Bob's is still there


BAD_RECORDINGS = [
    (b"x" * (MAX_RECORDING_BYTES + 1), OGG, "8 MiB"),
    (b"", OGG, "non-empty"),
    (b"OggS", None, "MIME type"),
    (b"OggS", "ogg", "MIME type"),
    (b"OggS", "audio/ogg\nX-Injected: 1", "MIME type"),
    (b"OggS", "audio/" + "x" * 100, "MIME type"),
    (None, OGG, "no recording"),
]


async def test_bad_recordings_are_refused_and_nothing_is_stored(repos: Repositories) -> None:
    for recording, mime, match in BAD_RECORDINGS:
        with pytest.raises(ValueError, match=match):
            await save(repos, ALICE, consent(recording, mime))
    assert await repos.profiles.get(GUILD, ALICE) is None
    assert await repos.audit.recent(GUILD) == []
