"""Voice profiles: enrolling (with the consent record), loading a voice, retention, deletion.

Re-enrolling replaces the old voice only once the new one passed: ``save_enrollment`` is called
after every check succeeded and swaps the arrays in one transaction, so a failed or interrupted
enrollment leaves the previous voice untouched, and the consent phrase it consumes stays unused.
A profile keeps one consent record (with the consent recording as uploaded): the one that allowed
the voice in use. The records of a replaced voice are deleted with it, in that same transaction,
and the last one goes with the profile.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Select, bindparam, func, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database
from storage.models import (
    ConsentRecord,
    DeletionReport,
    GuildDeletionReport,
    MemberExport,
    ReferenceClip,
    StoredSize,
    StoredVoice,
    VoiceProfile,
    quality_to_json,
)
from storage.repos._common import (
    consent_from_row,
    consent_query,
    encode_array,
    find_profile,
    profile_from_row,
    upsert,
)
from storage.repos._deletion import delete_guild_data, delete_member_data
from storage.repos._voices import load_voice
from storage.repos.audit import VOICE_ENROLLED, append_audit
from storage.repos.challenges import consume_challenge
from storage.repos.export import collect_member_export
from storage.schema import (
    MIME_CHARS,
    assistant_opt_ins,
    consent_records,
    embeddings,
    guild_settings,
    voice_profiles,
    voice_shares,
)
from storage.types import UTCDateTime, utcnow
from worker.types import VoiceEmbedding

MAX_LANGUAGE_CHARS: Final = 16
MAX_MODEL_ID_CHARS: Final = 200
DELETE_REASONS: Final = frozenset({"member_request", "admin", "member_left", "retention"})
MAX_RECORDING_BYTES: Final = 8 * 1024 * 1024  # a consent clip is seconds long; this is generous
_MIME: Final = re.compile(
    r"[\w.+-]+/[\w.+-]+(\s*;\s*[\w.+-]+=[\w.+\-\"]+)*", re.ASCII
)  # "audio/ogg; codecs=opus"


class ProfileRepo:
    """One member's voice in one server, and everything that hangs off it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, guild_id: int, user_id: int) -> VoiceProfile | None:
        async with self._db.read() as conn:
            return await find_profile(conn, guild_id, user_id)

    async def get_voice(self, guild_id: int, user_id: int) -> StoredVoice | None:
        """The profile with its conditioning arrays, or None if the member has no voice here."""
        async with self._db.read() as conn:
            return await load_voice(conn, guild_id, user_id)

    async def list_for_guild(self, guild_id: int) -> list[VoiceProfile]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(voice_profiles)
                .where(voice_profiles.c.guild_id == guild_id)
                .order_by(voice_profiles.c.id)
            )
            return [profile_from_row(r) for r in rows]

    async def guild_ids(self) -> set[int]:
        """Every server anything is stored for (settings, voices, assistant opt-ins)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                union(
                    select(guild_settings.c.guild_id),
                    select(voice_profiles.c.guild_id),
                    select(assistant_opt_ins.c.guild_id),
                )
            )
            return {int(r[0]) for r in rows}

    async def member_ids(self, guild_id: int) -> set[int]:
        """Members of a server something is stored about: a voice, an assistant opt-in, a share received."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                union(
                    select(voice_profiles.c.user_id).where(voice_profiles.c.guild_id == guild_id),
                    select(assistant_opt_ins.c.user_id).where(assistant_opt_ins.c.guild_id == guild_id),
                    select(voice_shares.c.grantee_user_id)
                    .join(voice_profiles, voice_profiles.c.id == voice_shares.c.profile_id)
                    .where(voice_profiles.c.guild_id == guild_id),
                )
            )
            return {int(r[0]) for r in rows}

    async def save_enrollment(
        self,
        guild_id: int,
        user_id: int,
        *,
        language: str,
        embedding: VoiceEmbedding,
        clip: ReferenceClip,
        consent: ConsentRecord,
        now: datetime | None = None,
        challenge_id: int | None = None,
    ) -> VoiceProfile:
        """Create or re-enroll the member's voice with its consent record, all in one transaction.

        With ``challenge_id`` the consent phrase is consumed in that same transaction (the rules of
        :meth:`ChallengeRepo.consume`), so either the phrase is spent and the voice stored, or
        neither: raises :class:`ChallengeMissing`, :class:`ChallengeUsed` or
        :class:`ChallengeExpired` and stores nothing. ``consent.phrase`` must be that phrase.

        Raises ``ValueError`` for arrays that are not finite float32, out-of-range fields, or a
        consent recording that is empty, larger than 8 MiB or without a MIME type.
        """
        arrays = _validated_arrays(embedding)
        if not 0 < len(language) <= MAX_LANGUAGE_CHARS:
            raise ValueError(f"language must be 1-{MAX_LANGUAGE_CHARS} characters, got {language!r}")
        if clip.speech_seconds < 0 or len(clip.clip_hash) != 64:
            raise ValueError("clip needs a sha256 hex clip_hash and non-negative speech_seconds")
        _check_recording(consent)
        now = now or utcnow()
        async with self._db.write() as conn:
            if challenge_id is not None:
                challenge = await consume_challenge(
                    conn, challenge_id, guild_id=guild_id, user_id=user_id, now=now
                )
                if challenge.phrase != consent.phrase:
                    raise ValueError(f"consent.phrase is not the phrase of consent challenge {challenge_id}")
            stmt = upsert(conn, voice_profiles).values(
                guild_id=guild_id, user_id=user_id, language=language, created_at=now, enrolled_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["guild_id", "user_id"], set_={"language": language, "enrolled_at": now}
            )
            row = (await conn.execute(stmt.returning(*voice_profiles.c))).one()
            profile = profile_from_row(row)
            await conn.execute(embeddings.delete().where(embeddings.c.profile_id == profile.id))
            await conn.execute(
                embeddings.insert(),
                [
                    {
                        "profile_id": profile.id,
                        "kind": kind,
                        "model_id": embedding.model_id,
                        "shape": shape,
                        "dtype": dtype,
                        "data": data,
                        "clip_hash": clip.clip_hash,
                        "speech_seconds": clip.speech_seconds,
                        "quality": quality_to_json(clip.quality),
                        "created_at": now,
                    }
                    for kind, (data, shape, dtype) in arrays.items()
                ],
            )
            consent_id = await conn.scalar(
                consent_records.insert()
                .values(
                    profile_id=profile.id,
                    statement_version=consent.statement_version,
                    phrase=consent.phrase,
                    transcript=consent.transcript,
                    match_score=consent.match_score,
                    speaker_similarity=consent.speaker_similarity,
                    recorded_at=consent.recorded_at,
                    clip_hash=consent.clip_hash,
                    recording=consent.recording,
                    recording_mime=consent.recording_mime,
                )
                .returning(consent_records.c.id)
            )
            # The replaced voice's arrays went above; its consent records (recordings) go with them.
            superseded = await conn.execute(
                consent_records.delete().where(
                    consent_records.c.profile_id == profile.id, consent_records.c.id != consent_id
                )
            )
            await append_audit(
                conn,
                guild_id,
                VOICE_ENROLLED,
                actor_id=user_id,
                subject_id=user_id,
                details={
                    "model_id": embedding.model_id,
                    "statement_version": consent.statement_version,
                    "replaced_consent_records": superseded.rowcount,
                },
                at=now,
            )
        return profile

    async def consent_records(self, guild_id: int, user_id: int) -> list[ConsentRecord]:
        """The member's consent records (one: the current voice's), for display; recordings not loaded."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                _member_consents(consent_query(with_recording=False), guild_id, user_id)
            )
            return [consent_from_row(r) for r in rows]

    async def consent_recording(self, guild_id: int, user_id: int) -> tuple[bytes, str] | None:
        """(bytes as uploaded, MIME type) of the newest consent record: the current voice's.

        None if the member has no voice here or that record kept no recording.
        """
        query = select(consent_records.c.recording, consent_records.c.recording_mime)
        newest = _member_consents(query, guild_id, user_id).order_by(consent_records.c.id.desc()).limit(1)
        async with self._db.read() as conn:
            row = (await conn.execute(newest)).first()
        if row is None or row.recording is None:
            return None
        return bytes(row.recording), str(row.recording_mime)

    async def stored_size(self, guild_id: int, user_id: int | None = None) -> StoredSize:
        """What is kept for one member in this server, or (``user_id`` None) for the whole server."""
        where = [voice_profiles.c.guild_id == guild_id]
        if user_id is not None:
            where.append(voice_profiles.c.user_id == user_id)
        async with self._db.read() as conn:
            return await _stored_size(conn, where)

    async def touch_last_used(self, guild_id: int, user_id: int, now: datetime | None = None) -> bool:
        """Note that the voice spoke (retention counts from here). False if there is no profile."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(voice_profiles)
                .where(voice_profiles.c.guild_id == guild_id, voice_profiles.c.user_id == user_id)
                .values(last_used_at=now or utcnow())
            )
            return bool(result.rowcount)

    async def list_expired(self, now: datetime | None = None) -> list[VoiceProfile]:
        """Profiles unused for longer than their server's ``retention_days``.

        A voice's last activity is its last use, or its enrollment if it never spoke. Servers
        without a retention period keep voices until they are deleted.
        """
        now = now or utcnow()
        last_activity = func.coalesce(voice_profiles.c.last_used_at, voice_profiles.c.enrolled_at)
        expired: list[VoiceProfile] = []
        async with self._db.read() as conn:
            periods = await conn.scalars(
                select(guild_settings.c.retention_days)
                .where(guild_settings.c.retention_days.is_not(None))
                .distinct()
            )
            # One query per distinct period (a handful), so the cut-off is a bound UTC timestamp
            # and no date arithmetic has to be written twice, once per SQL dialect.
            for days in list(periods):
                cutoff = bindparam("cutoff", now - timedelta(days=int(days)), type_=UTCDateTime())
                rows = await conn.execute(
                    select(voice_profiles)
                    .join(guild_settings, guild_settings.c.guild_id == voice_profiles.c.guild_id)
                    .where(guild_settings.c.retention_days == days, last_activity < cutoff)
                )
                expired.extend(profile_from_row(r) for r in rows)
        return sorted(expired, key=lambda p: p.id)

    async def delete(
        self, guild_id: int, user_id: int, *, actor_id: int | None, reason: str = "member_request"
    ) -> DeletionReport:
        """Delete the member's voice, consent records, shares both ways, opt-in and open phrases.

        One transaction, with an audit entry (counts only) that outlives the data. ``reason`` is
        one of ``member_request``, ``admin``, ``member_left``, ``retention``.
        """
        if reason not in DELETE_REASONS:
            raise ValueError(f"reason must be one of {', '.join(sorted(DELETE_REASONS))}, got {reason!r}")
        async with self._db.write() as conn:
            return await delete_member_data(conn, guild_id, user_id, actor_id=actor_id, reason=reason)

    async def delete_guild(self, guild_id: int) -> GuildDeletionReport:
        """Delete everything stored for a server (the bot left it), settings and audit log included.

        One entry stays in the audit log: that the server was purged, with counts and no member ids.
        """
        async with self._db.write() as conn:
            return await delete_guild_data(conn, guild_id)

    async def export_member(self, guild_id: int, user_id: int) -> MemberExport:
        """Everything stored about the member in this server, read in one consistent snapshot."""
        async with self._db.read() as conn:
            return await collect_member_export(conn, guild_id, user_id)


def _validated_arrays(embedding: VoiceEmbedding) -> dict[str, tuple[bytes, list[int], str]]:
    if not 0 < len(embedding.model_id) <= MAX_MODEL_ID_CHARS:
        raise ValueError(f"model_id must be 1-{MAX_MODEL_ID_CHARS} characters")
    return {
        "gpt_cond_latent": encode_array("gpt_cond_latent", embedding.gpt_cond_latent),
        "speaker_embedding": encode_array("speaker_embedding", embedding.speaker_embedding),
    }


def _check_recording(consent: ConsentRecord) -> None:
    recording, mime = consent.recording, consent.recording_mime
    if recording is None:
        if mime is not None:
            raise ValueError("consent.recording_mime is set but there is no recording")
        return
    if not isinstance(recording, bytes) or not recording:
        raise ValueError("consent.recording must be non-empty bytes (the clip as uploaded)")
    if len(recording) > MAX_RECORDING_BYTES:
        raise ValueError(
            f"consent.recording is {len(recording)} bytes; at most {MAX_RECORDING_BYTES} (8 MiB) are kept"
        )
    if mime is None or not _MIME.fullmatch(mime) or len(mime) > MIME_CHARS:
        raise ValueError(f"consent.recording_mime must be a MIME type like 'audio/ogg', got {mime!r}")


async def _stored_size(conn: AsyncConnection, where: list[Any]) -> StoredSize:
    """Counts and byte sizes (``length`` of the BLOBs: bytes on SQLite and PostgreSQL alike)."""
    profiles = select(voice_profiles.c.id).where(*where).scalar_subquery()
    recordings = (
        await conn.execute(
            select(func.count(), func.coalesce(func.sum(func.length(consent_records.c.recording)), 0)).where(
                consent_records.c.profile_id.in_(profiles)
            )
        )
    ).one()
    arrays = await conn.scalar(
        select(func.coalesce(func.sum(func.length(embeddings.c.data)), 0)).where(
            embeddings.c.profile_id.in_(profiles)
        )
    )
    voices = await conn.scalar(select(func.count()).select_from(voice_profiles).where(*where))
    return StoredSize(
        voices=int(voices or 0),
        consent_records=int(recordings[0]),
        recording_bytes=int(recordings[1]),
        voice_bytes=int(arrays or 0),
    )


def _member_consents(query: Select[Any], guild_id: int, user_id: int) -> Select[Any]:
    """``query`` over consent_records narrowed to one member's profile in one server."""
    return query.join(voice_profiles, voice_profiles.c.id == consent_records.c.profile_id).where(
        voice_profiles.c.guild_id == guild_id, voice_profiles.c.user_id == user_id
    )
