"""Collecting everything stored about one member in one server, for ``/voice export``.

Reads inside the caller's (read-only) transaction, so the export is one consistent snapshot:
profile, voice arrays and their metadata, consent records (with their recordings), consent
phrases, shares both ways, the assistant opt-in and the audit entries naming the member.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import ConsentRecord, EmbeddingInfo, MemberExport
from storage.repos._common import (
    challenge_from_row,
    consent_from_row,
    consent_query,
    find_profile,
    share_from_row,
)
from storage.repos._voices import embedding_from_rows, embedding_info, embedding_rows
from storage.repos.audit import member_audit
from storage.schema import (
    assistant_opt_ins,
    consent_challenges,
    consent_records,
    voice_profiles,
    voice_shares,
)
from storage.types import utcnow


def shares_query() -> Select[tuple[int, int, int, datetime]]:
    """``voice_shares`` joined with the owner's profile, columns named as ``share_from_row`` wants."""
    return (
        select(
            voice_profiles.c.guild_id,
            voice_profiles.c.user_id.label("owner_user_id"),
            voice_shares.c.grantee_user_id,
            voice_shares.c.created_at,
        )
        .join(voice_profiles, voice_profiles.c.id == voice_shares.c.profile_id)
        .order_by(voice_shares.c.id)
    )


async def collect_member_export(conn: AsyncConnection, guild_id: int, user_id: int) -> MemberExport:
    profile = await find_profile(conn, guild_id, user_id)
    infos: tuple[EmbeddingInfo, ...] = ()
    embedding = None
    consents: tuple[ConsentRecord, ...] = ()
    if profile is not None:
        rows = await embedding_rows(conn, profile.id)
        embedding = embedding_from_rows(rows)
        infos = tuple(embedding_info(r) for r in rows)
        consent_rows = await conn.execute(
            consent_query(with_recording=True).where(consent_records.c.profile_id == profile.id)
        )
        consents = tuple(consent_from_row(r) for r in consent_rows)
    challenge_rows = await conn.execute(
        select(consent_challenges)
        .where(consent_challenges.c.guild_id == guild_id, consent_challenges.c.user_id == user_id)
        .order_by(consent_challenges.c.id)
    )
    in_guild = voice_profiles.c.guild_id == guild_id
    granted = await conn.execute(shares_query().where(in_guild, voice_profiles.c.user_id == user_id))
    received = await conn.execute(shares_query().where(in_guild, voice_shares.c.grantee_user_id == user_id))
    opted_in = await conn.scalar(
        select(
            exists().where(assistant_opt_ins.c.guild_id == guild_id, assistant_opt_ins.c.user_id == user_id)
        )
    )
    return MemberExport(
        guild_id=guild_id,
        user_id=user_id,
        exported_at=utcnow(),
        profile=profile,
        embedding=embedding,
        embedding_info=infos,
        consent_records=consents,
        challenges=tuple(challenge_from_row(r) for r in challenge_rows),
        shares_granted=tuple(share_from_row(r) for r in granted),
        shares_received=tuple(share_from_row(r) for r in received),
        assistant_opt_in=bool(opted_in),
        audit_entries=tuple(await member_audit(conn, guild_id, user_id)),
    )
