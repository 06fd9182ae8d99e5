"""Voice shares (an owner lets another member speak with their voice) and assistant opt-ins.

Whether the server allows sharing at all is the policy service's question; these repositories
only record the member's own choices. Shares belong to the owner's profile and go with it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, exists, select

from storage.db import Database
from storage.errors import ProfileNotFound
from storage.models import VoiceShare
from storage.repos._common import find_profile, share_from_row, upsert
from storage.repos.audit import (
    ASSISTANT_OPTED_IN,
    ASSISTANT_OPTED_OUT,
    VOICE_SHARED,
    VOICE_UNSHARED,
    append_audit,
)
from storage.repos.export import shares_query
from storage.schema import assistant_opt_ins, voice_profiles, voice_shares
from storage.types import utcnow


class ShareRepo:
    """Who may speak with whose voice, per server."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def grant(
        self, guild_id: int, owner_user_id: int, grantee_user_id: int, now: datetime | None = None
    ) -> VoiceShare:
        """Let ``grantee`` use the owner's voice (idempotent). Raises ProfileNotFound without a voice."""
        if owner_user_id == grantee_user_id:
            raise ValueError("a member cannot share a voice with themselves")
        now = now or utcnow()
        async with self._db.write() as conn:
            profile = await find_profile(conn, guild_id, owner_user_id)
            if profile is None:
                raise ProfileNotFound()
            stmt = upsert(conn, voice_shares).values(
                profile_id=profile.id, grantee_user_id=grantee_user_id, created_at=now
            )
            inserted = await conn.execute(
                stmt.on_conflict_do_nothing(index_elements=["profile_id", "grantee_user_id"])
            )
            if inserted.rowcount:
                await append_audit(
                    conn, guild_id, VOICE_SHARED, actor_id=owner_user_id, subject_id=grantee_user_id, at=now
                )
            row = (
                await conn.execute(
                    shares_query().where(
                        voice_shares.c.profile_id == profile.id,
                        voice_shares.c.grantee_user_id == grantee_user_id,
                    )
                )
            ).one()
        return share_from_row(row)

    async def revoke(self, guild_id: int, owner_user_id: int, grantee_user_id: int) -> bool:
        """Withdraw a share; False if there was none."""
        owner_profile = select(voice_profiles.c.id).where(
            voice_profiles.c.guild_id == guild_id, voice_profiles.c.user_id == owner_user_id
        )
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(voice_shares).where(
                    voice_shares.c.profile_id.in_(owner_profile),
                    voice_shares.c.grantee_user_id == grantee_user_id,
                )
            )
            if not result.rowcount:
                return False
            await append_audit(
                conn, guild_id, VOICE_UNSHARED, actor_id=owner_user_id, subject_id=grantee_user_id
            )
            return True

    async def granted(self, guild_id: int, owner_user_id: int) -> list[VoiceShare]:
        """The members the owner shared their voice with."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                shares_query().where(
                    voice_profiles.c.guild_id == guild_id, voice_profiles.c.user_id == owner_user_id
                )
            )
            return [share_from_row(r) for r in rows]

    async def received(self, guild_id: int, grantee_user_id: int) -> list[VoiceShare]:
        """The voices shared with the member."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                shares_query().where(
                    voice_profiles.c.guild_id == guild_id, voice_shares.c.grantee_user_id == grantee_user_id
                )
            )
            return [share_from_row(r) for r in rows]

    async def is_shared(self, guild_id: int, owner_user_id: int, grantee_user_id: int) -> bool:
        async with self._db.read() as conn:
            found = await conn.scalar(
                select(
                    exists()
                    .where(voice_shares.c.profile_id == voice_profiles.c.id)
                    .where(
                        voice_profiles.c.guild_id == guild_id,
                        voice_profiles.c.user_id == owner_user_id,
                        voice_shares.c.grantee_user_id == grantee_user_id,
                    )
                )
            )
            return bool(found)


class AssistantOptInRepo:
    """Members who allow the server's assistant to speak with their voice."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def opt_in(self, guild_id: int, user_id: int, now: datetime | None = None) -> bool:
        """Record the opt-in; False if it was already there."""
        now = now or utcnow()
        async with self._db.write() as conn:
            stmt = upsert(conn, assistant_opt_ins).values(guild_id=guild_id, user_id=user_id, created_at=now)
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=["guild_id", "user_id"]))
            if not result.rowcount:
                return False
            await append_audit(
                conn, guild_id, ASSISTANT_OPTED_IN, actor_id=user_id, subject_id=user_id, at=now
            )
            return True

    async def opt_out(self, guild_id: int, user_id: int) -> bool:
        """Withdraw the opt-in; False if there was none."""
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(assistant_opt_ins).where(
                    assistant_opt_ins.c.guild_id == guild_id, assistant_opt_ins.c.user_id == user_id
                )
            )
            if not result.rowcount:
                return False
            await append_audit(conn, guild_id, ASSISTANT_OPTED_OUT, actor_id=user_id, subject_id=user_id)
            return True

    async def is_opted_in(self, guild_id: int, user_id: int) -> bool:
        async with self._db.read() as conn:
            found = await conn.scalar(
                select(
                    exists().where(
                        assistant_opt_ins.c.guild_id == guild_id, assistant_opt_ins.c.user_id == user_id
                    )
                )
            )
            return bool(found)

    async def opted_in(self, guild_id: int) -> list[int]:
        """User ids of the server's opted-in members."""
        async with self._db.read() as conn:
            rows = await conn.scalars(
                select(assistant_opt_ins.c.user_id)
                .where(assistant_opt_ins.c.guild_id == guild_id)
                .order_by(assistant_opt_ins.c.user_id)
            )
            return [int(r) for r in rows]
