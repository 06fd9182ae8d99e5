"""Initial schema: guild settings, voice profiles, embeddings, consent, shares, opt-ins, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written by hand to match ``storage/schema.py`` exactly (a test compares the two). Constraint
names follow the schema's naming convention so later migrations can address them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.migrate import pause_point
from storage.types import SurrogateKey, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMPTY_LIST = sa.text("'[]'")


def _profile_fk(table: str) -> sa.Column[int]:
    return sa.Column(
        "profile_id",
        SurrogateKey,
        sa.ForeignKey("voice_profiles.id", ondelete="CASCADE", name=f"fk_{table}_profile_id_voice_profiles"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("cloning_enabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("enroll_role_ids", sa.JSON, nullable=False, server_default=EMPTY_LIST),
        sa.Column("speak_role_ids", sa.JSON, nullable=False, server_default=EMPTY_LIST),
        sa.Column("allow_sharing", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("voice_message_mode", sa.String(16), nullable=False, server_default="off"),
        sa.Column("voice_message_channel_ids", sa.JSON, nullable=False, server_default=EMPTY_LIST),
        sa.Column("announce", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("max_text_length", sa.Integer, nullable=False, server_default=sa.text("300")),
        sa.Column("cooldown_s", sa.Float, nullable=False, server_default=sa.text("5.0")),
        sa.Column("retention_days", sa.Integer, nullable=True),
        sa.Column("voice_message_max_seconds", sa.Integer, nullable=False, server_default=sa.text("300")),
        sa.Column("voice_message_max_mb", sa.Integer, nullable=False, server_default=sa.text("25")),
        sa.Column("assistant_voice_user_id", sa.BigInteger, nullable=True),
        sa.Column("llm_system_prompt", sa.Text, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=True),
        sa.Column("updated_by", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("guild_id", name="pk_guild_settings"),
        sa.CheckConstraint(
            "voice_message_mode IN ('off', 'transcribe', 'relay', 'assistant')",
            name="ck_guild_settings_voice_message_mode",
        ),
        sa.CheckConstraint("max_text_length > 0", name="ck_guild_settings_max_text_length"),
        sa.CheckConstraint("cooldown_s >= 0", name="ck_guild_settings_cooldown_s"),
        sa.CheckConstraint(
            "retention_days IS NULL OR retention_days > 0", name="ck_guild_settings_retention_days"
        ),
        sa.CheckConstraint(
            "voice_message_max_seconds > 0", name="ck_guild_settings_voice_message_max_seconds"
        ),
        sa.CheckConstraint("voice_message_max_mb > 0", name="ck_guild_settings_voice_message_max_mb"),
    )
    op.create_table(
        "voice_profiles",
        sa.Column("id", SurrogateKey, autoincrement=True, nullable=False),
        sa.Column("guild_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("enrolled_at", UTCDateTime, nullable=False),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_voice_profiles"),
        sa.UniqueConstraint("guild_id", "user_id", name="uq_voice_profiles_guild_id_user_id"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "embeddings",
        sa.Column("id", SurrogateKey, autoincrement=True, nullable=False),
        _profile_fk("embeddings"),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("shape", sa.JSON, nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("clip_hash", sa.String(64), nullable=False),
        sa.Column("speech_seconds", sa.Float, nullable=False),
        sa.Column("quality", sa.JSON, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_embeddings"),
        sa.UniqueConstraint("profile_id", "kind", name="uq_embeddings_profile_id_kind"),
        sqlite_autoincrement=True,
    )
    # The test hook sits between tables: a kill here leaves a half-built schema to roll back.
    pause_point(revision)
    op.create_table(
        "consent_records",
        sa.Column("id", SurrogateKey, autoincrement=True, nullable=False),
        _profile_fk("consent_records"),
        sa.Column("statement_version", sa.String(32), nullable=False),
        sa.Column("phrase", sa.Text, nullable=False),
        sa.Column("transcript", sa.Text, nullable=False),
        sa.Column("match_score", sa.Float, nullable=False),
        sa.Column("speaker_similarity", sa.Float, nullable=True),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
        sa.Column("clip_hash", sa.String(64), nullable=False),
        sa.Column("recording", sa.LargeBinary, nullable=True),
        sa.Column("recording_mime", sa.String(100), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_consent_records"),
        sa.CheckConstraint(
            "(recording IS NULL) = (recording_mime IS NULL)", name="ck_consent_records_recording_mime"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_consent_records_profile_id", "consent_records", ["profile_id"])
    op.create_table(
        "consent_challenges",
        sa.Column("id", SurrogateKey, autoincrement=True, nullable=False),
        sa.Column("guild_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("phrase", sa.Text, nullable=False),
        sa.Column("issued_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("used_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_consent_challenges"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_consent_challenges_guild_id_user_id", "consent_challenges", ["guild_id", "user_id"])
    op.create_table(
        "voice_shares",
        sa.Column("id", SurrogateKey, autoincrement=True, nullable=False),
        _profile_fk("voice_shares"),
        sa.Column("grantee_user_id", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_voice_shares"),
        sa.UniqueConstraint(
            "profile_id", "grantee_user_id", name="uq_voice_shares_profile_id_grantee_user_id"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_voice_shares_grantee_user_id", "voice_shares", ["grantee_user_id"])
    op.create_table(
        "assistant_opt_ins",
        sa.Column("guild_id", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("user_id", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("guild_id", "user_id", name="pk_assistant_opt_ins"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", SurrogateKey, autoincrement=True, nullable=False),
        sa.Column("guild_id", sa.BigInteger, nullable=False),
        sa.Column("actor_id", sa.BigInteger, nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.BigInteger, nullable=True),
        sa.Column("details", sa.JSON, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_guild_id_at", "audit_log", ["guild_id", "at"])


def downgrade() -> None:
    for table in (
        "audit_log",
        "assistant_opt_ins",
        "voice_shares",
        "consent_challenges",
        "consent_records",
        "embeddings",
        "voice_profiles",
        "guild_settings",
    ):
        op.drop_table(table)
