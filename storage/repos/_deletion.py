"""Deleting a member's voice data, or a whole server's, inside the caller's write transaction.

Children are deleted explicitly before their profile (not only by ``ON DELETE CASCADE``), which
gives exact counts for the report and does not depend on SQLite's per-connection foreign-key
switch. The schema's cascades remain for any other path that deletes a profile row.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import DeletionReport, GuildDeletionReport
from storage.repos._common import find_profile
from storage.repos.audit import GUILD_PURGED, VOICE_DELETED, append_audit
from storage.schema import (
    assistant_opt_ins,
    audit_log,
    consent_challenges,
    consent_records,
    embeddings,
    guild_settings,
    voice_profiles,
    voice_shares,
)


async def _count(conn: AsyncConnection, stmt: object) -> int:
    result = await conn.execute(stmt)  # type: ignore[call-overload]
    return max(int(result.rowcount), 0)


async def delete_member_data(
    conn: AsyncConnection, guild_id: int, user_id: int, *, actor_id: int | None, reason: str
) -> DeletionReport:
    """Remove everything about one member in one server; audit it if anything was there."""
    profile = await find_profile(conn, guild_id, user_id)
    n_embeddings = n_consent = n_granted = 0
    if profile is not None:
        n_embeddings = await _count(conn, delete(embeddings).where(embeddings.c.profile_id == profile.id))
        n_consent = await _count(
            conn, delete(consent_records).where(consent_records.c.profile_id == profile.id)
        )
        n_granted = await _count(conn, delete(voice_shares).where(voice_shares.c.profile_id == profile.id))
        await conn.execute(delete(voice_profiles).where(voice_profiles.c.id == profile.id))
    guild_profiles = select(voice_profiles.c.id).where(voice_profiles.c.guild_id == guild_id)
    n_received = await _count(
        conn,
        delete(voice_shares).where(
            voice_shares.c.grantee_user_id == user_id, voice_shares.c.profile_id.in_(guild_profiles)
        ),
    )
    n_challenges = await _count(
        conn,
        delete(consent_challenges).where(
            consent_challenges.c.guild_id == guild_id, consent_challenges.c.user_id == user_id
        ),
    )
    opted_in = await _count(
        conn,
        delete(assistant_opt_ins).where(
            assistant_opt_ins.c.guild_id == guild_id, assistant_opt_ins.c.user_id == user_id
        ),
    )
    was_assistant = await _count(
        conn,
        update(guild_settings)
        .where(guild_settings.c.guild_id == guild_id, guild_settings.c.assistant_voice_user_id == user_id)
        .values(assistant_voice_user_id=None),
    )
    report = DeletionReport(
        guild_id=guild_id,
        user_id=user_id,
        profile_deleted=profile is not None,
        embeddings=n_embeddings,
        consent_records=n_consent,
        shares_granted=n_granted,
        shares_received=n_received,
        challenges=n_challenges,
        assistant_opt_in=opted_in > 0,
        was_assistant_voice=was_assistant > 0,
    )
    if report.anything:
        await append_audit(
            conn,
            guild_id,
            VOICE_DELETED,
            actor_id=actor_id,
            subject_id=user_id,
            details={
                "reason": reason,
                "profile": report.profile_deleted,
                "embeddings": n_embeddings,
                "consent_records": n_consent,
                "shares_granted": n_granted,
                "shares_received": n_received,
                "challenges": n_challenges,
                "assistant_opt_in": report.assistant_opt_in,
            },
        )
    return report


async def delete_guild_data(conn: AsyncConnection, guild_id: int) -> GuildDeletionReport:
    """Remove a server's settings, voices, phrases, opt-ins and audit log; leave one purge entry."""
    profile_ids = select(voice_profiles.c.id).where(voice_profiles.c.guild_id == guild_id)
    n_embeddings = await _count(conn, delete(embeddings).where(embeddings.c.profile_id.in_(profile_ids)))
    n_consent = await _count(
        conn, delete(consent_records).where(consent_records.c.profile_id.in_(profile_ids))
    )
    n_shares = await _count(conn, delete(voice_shares).where(voice_shares.c.profile_id.in_(profile_ids)))
    n_profiles = await _count(conn, delete(voice_profiles).where(voice_profiles.c.guild_id == guild_id))
    n_challenges = await _count(
        conn, delete(consent_challenges).where(consent_challenges.c.guild_id == guild_id)
    )
    n_opt_ins = await _count(conn, delete(assistant_opt_ins).where(assistant_opt_ins.c.guild_id == guild_id))
    n_audit = await _count(conn, delete(audit_log).where(audit_log.c.guild_id == guild_id))
    settings = await _count(conn, delete(guild_settings).where(guild_settings.c.guild_id == guild_id))
    report = GuildDeletionReport(
        guild_id=guild_id,
        settings_deleted=settings > 0,
        profiles=n_profiles,
        embeddings=n_embeddings,
        consent_records=n_consent,
        shares=n_shares,
        challenges=n_challenges,
        assistant_opt_ins=n_opt_ins,
        audit_entries=n_audit,
    )
    await append_audit(
        conn,
        guild_id,
        GUILD_PURGED,
        actor_id=None,
        details={
            "profiles": n_profiles,
            "embeddings": n_embeddings,
            "consent_records": n_consent,
            "shares": n_shares,
            "challenges": n_challenges,
            "assistant_opt_ins": n_opt_ins,
            "audit_entries": n_audit,
            "settings": report.settings_deleted,
        },
    )
    return report
