"""The audit log: who did what to which member's voice data, in which server, and when.

Entries carry ids and counts only (never a phrase, a transcript or audio). The log has no foreign
key to the profiles, so a deletion's record stays after what it deleted is gone. Other
repositories call :func:`append_audit` inside their own transaction, so an action and its audit
line commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database
from storage.models import AuditEntry
from storage.repos._common import audit_from_row
from storage.schema import audit_log
from storage.types import utcnow

# Action names: stable strings, part of the stored data.
VOICE_ENROLLED: Final = "voice.enrolled"
VOICE_DELETED: Final = "voice.deleted"
VOICE_SHARED: Final = "voice.shared"
VOICE_UNSHARED: Final = "voice.unshared"
ASSISTANT_OPTED_IN: Final = "assistant.opted_in"
ASSISTANT_OPTED_OUT: Final = "assistant.opted_out"
SETTINGS_UPDATED: Final = "settings.updated"
GUILD_PURGED: Final = "guild.purged"

MAX_RECENT: Final = 500


async def append_audit(
    conn: AsyncConnection,
    guild_id: int,
    action: str,
    *,
    actor_id: int | None,
    subject_id: int | None = None,
    details: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Write one entry on ``conn`` (in the caller's transaction) and return it."""
    if not action or len(action) > 64:
        raise ValueError(f"audit action must be 1-64 characters, got {action!r}")
    values = {
        "guild_id": guild_id,
        "actor_id": actor_id,
        "action": action,
        "subject_id": subject_id,
        "details": dict(details or {}),
        "at": at or utcnow(),
    }
    row = (await conn.execute(audit_log.insert().values(**values).returning(*audit_log.c))).one()
    return audit_from_row(row)


async def member_audit(conn: AsyncConnection, guild_id: int, user_id: int) -> list[AuditEntry]:
    """Entries in a server where the member acted or was acted upon, oldest first."""
    rows = await conn.execute(
        select(audit_log)
        .where(
            audit_log.c.guild_id == guild_id,
            or_(audit_log.c.actor_id == user_id, audit_log.c.subject_id == user_id),
        )
        .order_by(audit_log.c.at, audit_log.c.id)
    )
    return [audit_from_row(r) for r in rows]


class AuditRepo:
    """Append to and read a server's audit log."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(
        self,
        guild_id: int,
        action: str,
        *,
        actor_id: int | None,
        subject_id: int | None = None,
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEntry:
        """Record one action (its own transaction)."""
        async with self._db.write() as conn:
            return await append_audit(
                conn, guild_id, action, actor_id=actor_id, subject_id=subject_id, details=details, at=at
            )

    async def recent(self, guild_id: int, limit: int = 50) -> list[AuditEntry]:
        """The server's latest entries, newest first (at most ``limit``, capped at 500)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(audit_log)
                .where(audit_log.c.guild_id == guild_id)
                .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
                .limit(min(limit, MAX_RECENT))
            )
            return [audit_from_row(r) for r in rows]

    async def count(self, guild_id: int) -> int:
        """How many entries the server's log holds."""
        async with self._db.read() as conn:
            total = await conn.scalar(
                select(func.count()).select_from(audit_log).where(audit_log.c.guild_id == guild_id)
            )
            return int(total or 0)
