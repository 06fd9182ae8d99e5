"""The database schema as SQLAlchemy Core tables: the one source of truth.

``storage/migrations/versions`` creates exactly these tables (a test compares them with Alembic's
autogenerate comparison). Discord ids are ``BigInteger``; timestamps are aware UTC.

Surrogate keys use SQLite AUTOINCREMENT: an id is never reused, so a stale consent-phrase or
profile id can never name a newer row.

The audit log has no foreign key to profiles on purpose: it records deletions and must outlive
what it describes. Everything else about a voice hangs off ``voice_profiles`` with
``ON DELETE CASCADE``, so deleting the profile row deletes the voice in one statement, the
consent recordings (kept in ``consent_records``) included.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)

from storage.types import SurrogateKey, UTCDateTime

VOICE_MESSAGE_MODES: Final = ("off", "transcribe", "relay", "assistant")
MIME_CHARS: Final = 100  # longest stored MIME type, parameters included

# Constraint names follow one convention so migrations can refer to them on both databases.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

guild_settings = Table(
    "guild_settings",
    metadata,
    Column("guild_id", BigInteger, primary_key=True, autoincrement=False),
    Column("cloning_enabled", Boolean, nullable=False, server_default=false()),
    Column("enroll_role_ids", JSON, nullable=False, server_default=text("'[]'")),
    Column("speak_role_ids", JSON, nullable=False, server_default=text("'[]'")),
    Column("allow_sharing", Boolean, nullable=False, server_default=false()),
    Column("voice_message_mode", String(16), nullable=False, server_default="off"),
    Column("voice_message_channel_ids", JSON, nullable=False, server_default=text("'[]'")),
    Column("read_aloud_channel_ids", JSON, nullable=False, server_default=text("'[]'")),
    Column("announce", Boolean, nullable=False, server_default=true()),
    Column("max_text_length", Integer, nullable=False, server_default=text("300")),
    Column("cooldown_s", Float, nullable=False, server_default=text("5.0")),
    Column("retention_days", Integer, nullable=True),
    Column("voice_message_max_seconds", Integer, nullable=False, server_default=text("300")),
    Column("voice_message_max_mb", Integer, nullable=False, server_default=text("25")),
    Column("assistant_voice_user_id", BigInteger, nullable=True),
    Column("llm_system_prompt", Text, nullable=True),
    Column("updated_at", UTCDateTime, nullable=True),
    Column("updated_by", BigInteger, nullable=True),
    CheckConstraint(
        "voice_message_mode IN ('off', 'transcribe', 'relay', 'assistant')", name="voice_message_mode"
    ),
    CheckConstraint("max_text_length > 0", name="max_text_length"),
    CheckConstraint("cooldown_s >= 0", name="cooldown_s"),
    CheckConstraint("retention_days IS NULL OR retention_days > 0", name="retention_days"),
    CheckConstraint("voice_message_max_seconds > 0", name="voice_message_max_seconds"),
    CheckConstraint("voice_message_max_mb > 0", name="voice_message_max_mb"),
)

voice_profiles = Table(
    "voice_profiles",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column("guild_id", BigInteger, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("language", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("enrolled_at", UTCDateTime, nullable=False),  # when the current voice was recorded
    Column("last_used_at", UTCDateTime, nullable=True),
    UniqueConstraint("guild_id", "user_id"),
    sqlite_autoincrement=True,
)

embeddings = Table(
    "embeddings",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column(
        "profile_id",
        SurrogateKey,
        ForeignKey("voice_profiles.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", String(32), nullable=False),  # gpt_cond_latent | speaker_embedding
    Column("model_id", String(200), nullable=False),
    Column("shape", JSON, nullable=False),  # list of ints
    Column("dtype", String(16), nullable=False),  # numpy dtype string, little-endian ("<f4")
    Column("data", LargeBinary, nullable=False),
    Column("clip_hash", String(64), nullable=False),  # sha256 hex of the reference PCM
    Column("speech_seconds", Float, nullable=False),
    Column("quality", JSON, nullable=True),  # worker.types.QualityReport as a JSON object
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("profile_id", "kind"),
    sqlite_autoincrement=True,
)

consent_records = Table(
    "consent_records",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column(
        "profile_id",
        SurrogateKey,
        ForeignKey("voice_profiles.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("statement_version", String(32), nullable=False),
    Column("phrase", Text, nullable=False),
    Column("transcript", Text, nullable=False),
    Column("match_score", Float, nullable=False),  # word error rate of transcript vs phrase
    Column("speaker_similarity", Float, nullable=True),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("clip_hash", String(64), nullable=False),
    # The consent clip exactly as the member uploaded it (e.g. OGG/Opus), the record's evidence.
    Column("recording", LargeBinary, nullable=True),
    Column("recording_mime", String(MIME_CHARS), nullable=True),
    CheckConstraint("(recording IS NULL) = (recording_mime IS NULL)", name="recording_mime"),
    Index(None, "profile_id"),
    sqlite_autoincrement=True,
)

consent_challenges = Table(
    "consent_challenges",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column("guild_id", BigInteger, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("phrase", Text, nullable=False),
    # The language the phrase is in (a Whisper/XTTS code): what it is transcribed and compared in.
    Column("language", String(16), nullable=False, server_default="en"),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Index(None, "guild_id", "user_id"),
    sqlite_autoincrement=True,
)

voice_shares = Table(
    "voice_shares",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column(
        "profile_id",
        SurrogateKey,
        ForeignKey("voice_profiles.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("grantee_user_id", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("profile_id", "grantee_user_id"),
    Index(None, "grantee_user_id"),
    sqlite_autoincrement=True,
)

assistant_opt_ins = Table(
    "assistant_opt_ins",
    metadata,
    Column("guild_id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("created_at", UTCDateTime, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column("guild_id", BigInteger, nullable=False),
    Column("actor_id", BigInteger, nullable=True),  # None: the bot itself (retention, guild removal)
    Column("action", String(64), nullable=False),
    Column("subject_id", BigInteger, nullable=True),
    Column("details", JSON, nullable=False, server_default=text("'{}'")),
    Column("at", UTCDateTime, nullable=False),
    Index(None, "guild_id", "at"),
    sqlite_autoincrement=True,
)

# The voices the worker's OpenAI-shaped API serves (`voxclone voices add`): people whose recorded
# consent an operator added, not members of a server. Removing a voice deletes its consent record.
api_voices = Table(
    "api_voices",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("language", String(16), nullable=False),  # what the voice speaks when a request names none
    Column("model_id", String(200), nullable=False),
    # The XTTS conditioning: little-endian float32 bytes with their shapes (storage.repos._common).
    Column("gpt_cond_latent", LargeBinary, nullable=False),
    Column("gpt_cond_shape", JSON, nullable=False),
    Column("speaker_embedding", LargeBinary, nullable=False),
    Column("speaker_shape", JSON, nullable=False),
    Column("reference_hash", String(64), nullable=False),  # sha256 hex of the reference PCM
    Column("speech_seconds", Float, nullable=False),
    Column("quality", JSON, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("name"),
    sqlite_autoincrement=True,
)

api_voice_consents = Table(
    "api_voice_consents",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column("voice_id", SurrogateKey, ForeignKey("api_voices.id", ondelete="CASCADE"), nullable=False),
    Column("speaker_name", String(64), nullable=False),
    Column("statement_version", String(32), nullable=False),
    Column("statement", Text, nullable=False),  # what the speaker was asked to read
    Column("transcript", Text, nullable=False),  # what Whisper heard
    Column("word_error_rate", Float, nullable=False),
    Column("speaker_similarity", Float, nullable=False),  # consent recording against the reference clip
    Column("added_by", String(200), nullable=False),  # the operator who ran `voxclone voices add`
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("clip_hash", String(64), nullable=False),
    Column("recording", LargeBinary, nullable=False),  # the consent clip as given, the record's evidence
    Column("recording_mime", String(MIME_CHARS), nullable=False),
    UniqueConstraint("voice_id"),
    sqlite_autoincrement=True,
)

TABLE_NAMES: Final = tuple(sorted(metadata.tables))
