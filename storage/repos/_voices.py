"""Loading a stored voice: the two conditioning arrays back into a ``VoiceEmbedding``.

Used by the profile repository and the member export, inside their own transactions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import StorageError
from storage.models import EmbeddingInfo, ReferenceClip, StoredVoice, quality_from_json
from storage.repos._common import decode_array, find_profile, from_row
from storage.schema import embeddings
from worker.types import VoiceEmbedding

KINDS = ("gpt_cond_latent", "speaker_embedding")


async def embedding_rows(conn: AsyncConnection, profile_id: int) -> list[Row[Any]]:
    rows = await conn.execute(
        select(embeddings).where(embeddings.c.profile_id == profile_id).order_by(embeddings.c.kind)
    )
    return list(rows)


def embedding_info(row: Row[Any]) -> EmbeddingInfo:
    m = row._mapping
    return from_row(
        EmbeddingInfo,
        row,
        shape=tuple(int(n) for n in m["shape"]),
        speech_seconds=float(m["speech_seconds"]),
        quality=quality_from_json(m["quality"]),
    )


def embedding_from_rows(rows: list[Row[Any]]) -> VoiceEmbedding | None:
    """The voice from its two rows, None when there are none; StorageError if they do not fit."""
    if not rows:
        return None
    by_kind = {r._mapping["kind"]: r._mapping for r in rows}
    missing = [k for k in KINDS if k not in by_kind]
    model_ids = {m["model_id"] for m in by_kind.values()}
    if missing or len(model_ids) != 1:
        raise StorageError(
            "A stored voice is incomplete (an interrupted write from an old version?). "
            "Delete it with /voice delete and enroll again."
        )
    arrays = {k: decode_array(by_kind[k]["data"], by_kind[k]["shape"], by_kind[k]["dtype"]) for k in KINDS}
    return VoiceEmbedding(
        model_id=model_ids.pop(),
        gpt_cond_latent=arrays["gpt_cond_latent"],
        speaker_embedding=arrays["speaker_embedding"],
    )


async def load_voice(conn: AsyncConnection, guild_id: int, user_id: int) -> StoredVoice | None:
    profile = await find_profile(conn, guild_id, user_id)
    if profile is None:
        return None
    rows = await embedding_rows(conn, profile.id)
    embedding = embedding_from_rows(rows)
    if embedding is None:
        return None
    info = embedding_info(rows[0])
    clip = ReferenceClip(clip_hash=info.clip_hash, speech_seconds=info.speech_seconds, quality=info.quality)
    return StoredVoice(profile=profile, embedding=embedding, clip=clip)
