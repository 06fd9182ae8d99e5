"""Per-server settings: read with defaults, change some fields atomically.

A server without a row has the defaults of :class:`storage.models.GuildSettings` (cloning off).
``update`` is one ``INSERT ... ON CONFLICT DO UPDATE`` of just the named fields, so two admins
changing different settings at the same moment do not undo each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from sqlalchemy import Row, select

from storage.db import Database
from storage.models import GuildSettings
from storage.repos._common import upsert
from storage.repos.audit import SETTINGS_UPDATED, append_audit
from storage.schema import VOICE_MESSAGE_MODES, guild_settings
from storage.types import utcnow

MAX_SYSTEM_PROMPT_CHARS: Final = 4000
MAX_TEXT_LENGTH_LIMIT: Final = 2000  # Discord's own message limit

_EDITABLE: Final = frozenset(
    f.name
    for f in dataclasses.fields(GuildSettings)
    if f.name not in ("guild_id", "updated_at", "updated_by")
)
_ID_LISTS: Final = frozenset(
    {"enroll_role_ids", "speak_role_ids", "voice_message_channel_ids", "read_aloud_channel_ids"}
)
_BOOLS: Final = frozenset({"cloning_enabled", "allow_sharing", "announce"})
_LIMITS: Final = {  # name: (lowest, highest, unit)
    "voice_message_max_seconds": (5, 1800, "seconds"),
    "voice_message_max_mb": (1, 100, "MB"),
}


class GuildSettingsRepo:
    """Read and change one server's settings."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, guild_id: int) -> GuildSettings:
        """The server's settings, or the defaults if it never changed any."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(guild_settings).where(guild_settings.c.guild_id == guild_id))
            ).first()
        return _from_row(row) if row is not None else GuildSettings(guild_id=guild_id)

    async def update(self, guild_id: int, /, *, updated_by: int | None, **changes: Any) -> GuildSettings:
        """Set the named fields (e.g. ``cloning_enabled=True``) and return the new settings.

        Raises ``ValueError`` for an unknown field or a value of the wrong kind; the change and
        its audit line (field names only, never values) commit together.
        """
        if not changes:
            raise ValueError("update() needs at least one field to change")
        values = {name: _validate(name, value) for name, value in changes.items()}
        now = utcnow()
        values |= {"updated_at": now, "updated_by": updated_by}
        async with self._db.write() as conn:
            stmt = upsert(conn, guild_settings).values(guild_id=guild_id, **values)
            await conn.execute(stmt.on_conflict_do_update(index_elements=["guild_id"], set_=values))
            await append_audit(
                conn,
                guild_id,
                SETTINGS_UPDATED,
                actor_id=updated_by,
                details={"fields": sorted(changes)},
                at=now,
            )
            row = (
                await conn.execute(select(guild_settings).where(guild_settings.c.guild_id == guild_id))
            ).one()
        return _from_row(row)


def _from_row(row: Row[Any]) -> GuildSettings:
    m = row._mapping
    return GuildSettings(
        guild_id=m["guild_id"],
        cloning_enabled=bool(m["cloning_enabled"]),
        enroll_role_ids=_ids(m["enroll_role_ids"]),
        speak_role_ids=_ids(m["speak_role_ids"]),
        allow_sharing=bool(m["allow_sharing"]),
        voice_message_mode=m["voice_message_mode"],
        voice_message_channel_ids=_ids(m["voice_message_channel_ids"]),
        read_aloud_channel_ids=_ids(m["read_aloud_channel_ids"]),
        announce=bool(m["announce"]),
        max_text_length=int(m["max_text_length"]),
        cooldown_s=float(m["cooldown_s"]),
        retention_days=m["retention_days"],
        voice_message_max_seconds=int(m["voice_message_max_seconds"]),
        voice_message_max_mb=int(m["voice_message_max_mb"]),
        assistant_voice_user_id=m["assistant_voice_user_id"],
        llm_system_prompt=m["llm_system_prompt"],
        updated_at=m["updated_at"],
        updated_by=m["updated_by"],
    )


def _ids(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, list) else ()


def _validate(name: str, value: Any) -> Any:
    """The value as stored, or ``ValueError`` naming the field and what it accepts."""
    if name not in _EDITABLE:
        raise ValueError(f"unknown guild setting {name!r}; known: {', '.join(sorted(_EDITABLE))}")
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if name in _ID_LISTS:
        if isinstance(value, str | bytes) or not all(_is_id(v) for v in value):
            raise ValueError(f"{name} must be a list of Discord ids, got {value!r}")
        return sorted(set(int(v) for v in value))
    if name == "voice_message_mode":
        if value not in VOICE_MESSAGE_MODES:
            raise ValueError(
                f"voice_message_mode must be one of {', '.join(VOICE_MESSAGE_MODES)}, got {value!r}"
            )
        return value
    if name == "max_text_length":
        if not _is_int(value) or not 1 <= value <= MAX_TEXT_LENGTH_LIMIT:
            raise ValueError(f"max_text_length must be a whole number from 1 to {MAX_TEXT_LENGTH_LIMIT}")
        return value
    if name == "cooldown_s":
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 3600:
            raise ValueError("cooldown_s must be a number of seconds from 0 to 3600")
        return float(value)
    if name in _LIMITS:
        low, high, unit = _LIMITS[name]
        if not _is_int(value) or not low <= value <= high:
            raise ValueError(f"{name} must be a whole number of {unit} from {low} to {high}")
        return value
    if name == "retention_days":
        if value is not None and (not _is_int(value) or not 1 <= value <= 36500):
            raise ValueError("retention_days must be empty (keep until deleted) or 1 to 36500 days")
        return value
    if name == "assistant_voice_user_id":
        if value is not None and not _is_id(value):
            raise ValueError(f"assistant_voice_user_id must be a Discord id or empty, got {value!r}")
        return value
    # llm_system_prompt
    if value is not None and (not isinstance(value, str) or len(value) > MAX_SYSTEM_PROMPT_CHARS):
        raise ValueError(f"llm_system_prompt must be text of at most {MAX_SYSTEM_PROMPT_CHARS} characters")
    return value or None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) and 0 < value < 2**63
