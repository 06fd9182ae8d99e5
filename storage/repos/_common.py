"""Helpers shared by the repositories: dialect-specific upserts, row mapping, array BLOBs.

Arrays are stored as raw little-endian bytes with their shape and dtype beside them, so a
voice comes back bit-identical on any machine and either database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from sqlalchemy import Row, Select, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import StorageError
from storage.models import AuditEntry, Challenge, ConsentRecord, VoiceProfile, VoiceShare
from storage.schema import consent_records, voice_profiles
from worker.types import FloatArray

STORED_DTYPE: Final = "<f4"  # little-endian float32, whatever the machine's byte order


def upsert(conn: AsyncConnection, table: Table) -> sqlite.Insert | postgresql.Insert:
    """``INSERT`` with ``ON CONFLICT`` support for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def encode_array(name: str, array: FloatArray) -> tuple[bytes, list[int], str]:
    """``array`` as (bytes, shape, dtype); ``ValueError`` if it is not a finite float32 array."""
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{name} must be a float32 numpy array, got {found}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity: the voice would be garbage")
    data = np.ascontiguousarray(array, dtype=STORED_DTYPE).tobytes()
    return data, [int(n) for n in array.shape], STORED_DTYPE


def decode_array(data: bytes, shape: Sequence[int], dtype: str) -> FloatArray:
    """Inverse of :func:`encode_array`; a writable float32 array in native byte order."""
    try:
        dims = tuple(int(n) for n in shape)
        stored = np.dtype(dtype)
        count = int(np.prod(dims)) if dims else 1
        if stored != np.dtype(STORED_DTYPE) or len(data) != count * stored.itemsize:
            raise ValueError(f"{len(data)} bytes of {dtype} do not fill shape {dims}")
        return np.frombuffer(data, dtype=stored).reshape(dims).astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"A stored voice is damaged ({exc}). Delete it with /voice delete and enroll again."
        ) from exc


async def find_profile(conn: AsyncConnection, guild_id: int, user_id: int) -> VoiceProfile | None:
    row = (
        await conn.execute(
            select(voice_profiles).where(
                voice_profiles.c.guild_id == guild_id, voice_profiles.c.user_id == user_id
            )
        )
    ).first()
    return profile_from_row(row) if row is not None else None


def profile_from_row(row: Row[Any]) -> VoiceProfile:
    m = row._mapping
    return VoiceProfile(
        id=m["id"],
        guild_id=m["guild_id"],
        user_id=m["user_id"],
        language=m["language"],
        created_at=m["created_at"],
        enrolled_at=m["enrolled_at"],
        last_used_at=m["last_used_at"],
    )


def consent_query(*, with_recording: bool) -> Select[Any]:
    """``consent_records`` oldest first; the recording BLOB only when ``with_recording``."""
    columns = [c for c in consent_records.c if with_recording or c.name != "recording"]
    return select(*columns).order_by(consent_records.c.recorded_at, consent_records.c.id)


def consent_from_row(row: Row[Any]) -> ConsentRecord:
    """A consent record from a :func:`consent_query` row (``recording`` None if not selected)."""
    m = row._mapping
    recording = m.get("recording")
    return ConsentRecord(
        id=m["id"],
        statement_version=m["statement_version"],
        phrase=m["phrase"],
        transcript=m["transcript"],
        match_score=m["match_score"],
        speaker_similarity=m["speaker_similarity"],
        recorded_at=m["recorded_at"],
        clip_hash=m["clip_hash"],
        recording=bytes(recording) if recording is not None else None,
        recording_mime=m["recording_mime"],
    )


def challenge_from_row(row: Row[Any]) -> Challenge:
    m = row._mapping
    return Challenge(
        id=m["id"],
        guild_id=m["guild_id"],
        user_id=m["user_id"],
        phrase=m["phrase"],
        issued_at=m["issued_at"],
        expires_at=m["expires_at"],
        used_at=m["used_at"],
        language=m["language"],
    )


def share_from_row(row: Row[Any]) -> VoiceShare:
    """A row of ``voice_shares`` joined with its profile's guild_id and user_id (as owner_user_id)."""
    m = row._mapping
    return VoiceShare(
        guild_id=m["guild_id"],
        owner_user_id=m["owner_user_id"],
        grantee_user_id=m["grantee_user_id"],
        created_at=m["created_at"],
    )


def audit_from_row(row: Row[Any]) -> AuditEntry:
    m = row._mapping
    details = m["details"]
    return AuditEntry(
        id=m["id"],
        guild_id=m["guild_id"],
        actor_id=m["actor_id"],
        action=m["action"],
        subject_id=m["subject_id"],
        details=dict(details) if isinstance(details, dict) else {},
        at=m["at"],
    )
