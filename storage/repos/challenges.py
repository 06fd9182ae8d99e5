"""One-time consent phrases: issued to one member, valid for a few minutes, usable once.

Consuming is one conditional ``UPDATE ... RETURNING`` (unused, unexpired, this member's), so two
recordings racing for the same phrase cannot both pass, on SQLite or on PostgreSQL. The same
statement (:func:`consume_challenge`) runs inside the enrollment's transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database
from storage.errors import ChallengeExpired, ChallengeMissing, ChallengeUsed
from storage.models import Challenge
from storage.repos._common import challenge_from_row
from storage.schema import consent_challenges
from storage.types import utcnow

CHALLENGE_TTL: Final = timedelta(minutes=10)
MAX_PHRASE_CHARS: Final = 500
MAX_LANGUAGE_CHARS: Final = 16  # a Whisper/XTTS language code ("en", "fr", "zh-cn")
PURGE_GRACE: Final = timedelta(days=1)  # expired phrases stay this long, then go


class ChallengeRepo:
    """Issue, look up and consume consent phrases."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def issue(
        self,
        guild_id: int,
        user_id: int,
        phrase: str,
        *,
        language: str = "en",
        ttl: timedelta = CHALLENGE_TTL,
        now: datetime | None = None,
    ) -> Challenge:
        """A new phrase in ``language`` for the member; it replaces any earlier one they were given here."""
        phrase = phrase.strip()
        if not 0 < len(phrase) <= MAX_PHRASE_CHARS:
            raise ValueError(f"phrase must be 1-{MAX_PHRASE_CHARS} characters")
        if not 0 < len(language) <= MAX_LANGUAGE_CHARS or language != language.strip():
            raise ValueError(
                f"language must be a code of 1-{MAX_LANGUAGE_CHARS} characters, got {language!r}"
            )
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        now = now or utcnow()
        async with self._db.write() as conn:
            await conn.execute(
                delete(consent_challenges).where(
                    consent_challenges.c.guild_id == guild_id, consent_challenges.c.user_id == user_id
                )
            )
            row = (
                await conn.execute(
                    consent_challenges.insert()
                    .values(
                        guild_id=guild_id,
                        user_id=user_id,
                        phrase=phrase,
                        language=language,
                        issued_at=now,
                        expires_at=now + ttl,
                    )
                    .returning(*consent_challenges.c)
                )
            ).one()
        return challenge_from_row(row)

    async def active(self, guild_id: int, user_id: int, now: datetime | None = None) -> Challenge | None:
        """The member's open phrase (unused and unexpired), if any."""
        now = now or utcnow()
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(consent_challenges)
                    .where(
                        consent_challenges.c.guild_id == guild_id,
                        consent_challenges.c.user_id == user_id,
                        consent_challenges.c.used_at.is_(None),
                        consent_challenges.c.expires_at > now,
                    )
                    .order_by(consent_challenges.c.id.desc())
                    .limit(1)
                )
            ).first()
        return challenge_from_row(row) if row is not None else None

    async def consume(
        self, challenge_id: int, *, guild_id: int, user_id: int, now: datetime | None = None
    ) -> Challenge:
        """Mark the phrase used and return it; only the first call succeeds.

        Raises :class:`ChallengeMissing` (unknown, or not this member's), :class:`ChallengeUsed`
        or :class:`ChallengeExpired`.
        """
        async with self._db.write() as conn:
            return await consume_challenge(conn, challenge_id, guild_id=guild_id, user_id=user_id, now=now)

    async def purge_expired(self, now: datetime | None = None, *, grace: timedelta = PURGE_GRACE) -> int:
        """Delete phrases that expired more than ``grace`` ago; returns how many."""
        cutoff = (now or utcnow()) - grace
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(consent_challenges).where(consent_challenges.c.expires_at < cutoff)
            )
            return max(int(result.rowcount), 0)


async def consume_challenge(
    conn: AsyncConnection, challenge_id: int, *, guild_id: int, user_id: int, now: datetime | None = None
) -> Challenge:
    """:meth:`ChallengeRepo.consume` inside the caller's write transaction.

    ``ProfileRepo.save_enrollment`` uses it so the phrase is spent in the same transaction that
    stores the voice: a failed save leaves it usable, a spent one never stores a second voice.
    """
    now = now or utcnow()
    mine = (
        consent_challenges.c.id == challenge_id,
        consent_challenges.c.guild_id == guild_id,
        consent_challenges.c.user_id == user_id,
    )
    row = (
        await conn.execute(
            update(consent_challenges)
            .where(*mine, consent_challenges.c.used_at.is_(None), consent_challenges.c.expires_at > now)
            .values(used_at=now)
            .returning(*consent_challenges.c)
        )
    ).first()
    if row is not None:
        return challenge_from_row(row)
    found = (await conn.execute(select(consent_challenges).where(*mine))).first()
    if found is None:
        raise ChallengeMissing()
    if challenge_from_row(found).used_at is not None:
        raise ChallengeUsed()
    raise ChallengeExpired()
