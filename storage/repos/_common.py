"""Helpers shared by the repositories: dialect-specific upserts, rows to dataclasses, array BLOBs.

Arrays are stored as raw little-endian bytes with their shape and dtype beside them, so a
voice comes back bit-identical on any machine and either database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np
from sqlalchemy import Row, RowMapping, Select, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import StorageError
from storage.models import AuditEntry, Challenge, ConsentRecord, VoiceProfile, VoiceShare
from storage.schema import consent_records, voice_profiles
from worker.types import FloatArray

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_D = TypeVar("_D", bound="DataclassInstance")

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


def from_row(cls: type[_D], row: Row[Any] | RowMapping, **given: Any) -> _D:
    """A ``cls`` from the row's columns of its fields' names; ``given`` sets the others (a renamed column,
    a converted value). A field in neither is a ``KeyError``: no field quietly falls back to its default.

    Values pass through as the column types return them (aware datetimes, ints, floats, str).
    """
    m = row._mapping if isinstance(row, Row) else row
    values = {f.name: m[f.name] for f in dataclasses.fields(cls) if f.init and f.name not in given}
    return cls(**values, **given)


def profile_from_row(row: Row[Any]) -> VoiceProfile:
    return from_row(VoiceProfile, row)


def consent_query(*, with_recording: bool) -> Select[Any]:
    """``consent_records`` oldest first; the recording BLOB only when ``with_recording``."""
    columns = [c for c in consent_records.c if with_recording or c.name != "recording"]
    return select(*columns).order_by(consent_records.c.recorded_at, consent_records.c.id)


def consent_from_row(row: Row[Any]) -> ConsentRecord:
    """A consent record from a :func:`consent_query` row (``recording`` None if not selected)."""
    recording = row._mapping.get("recording")
    return from_row(ConsentRecord, row, recording=bytes(recording) if recording is not None else None)


def challenge_from_row(row: Row[Any]) -> Challenge:
    return from_row(Challenge, row)


def share_from_row(row: Row[Any]) -> VoiceShare:
    """A row of ``voice_shares`` joined with its profile's guild_id and user_id (as owner_user_id)."""
    return from_row(VoiceShare, row)


def audit_from_row(row: Row[Any]) -> AuditEntry:
    details = row._mapping["details"]
    return from_row(AuditEntry, row, details=dict(details) if isinstance(details, dict) else {})
