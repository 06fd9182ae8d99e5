"""The worker API's consented voices: ``api_voices`` and their consent records, ``api_voice_consents``.

Revision ID: 0004_api_voices
Revises: 0003_read_aloud
Create Date: 2026-12-05

Written by hand to match ``storage/schema.py`` (a test compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.migrate import pause_point
from storage.types import SurrogateKey, UTCDateTime

revision: str = "0004_api_voices"
down_revision: str | None = "0003_read_aloud"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_voices",
        sa.Column("id", SurrogateKey, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("gpt_cond_latent", sa.LargeBinary, nullable=False),
        sa.Column("gpt_cond_shape", sa.JSON, nullable=False),
        sa.Column("speaker_embedding", sa.LargeBinary, nullable=False),
        sa.Column("speaker_shape", sa.JSON, nullable=False),
        sa.Column("reference_hash", sa.String(64), nullable=False),
        sa.Column("speech_seconds", sa.Float, nullable=False),
        sa.Column("quality", sa.JSON, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_voices"),
        sa.UniqueConstraint("name", name="uq_api_voices_name"),
        sqlite_autoincrement=True,
    )
    pause_point(revision)
    op.create_table(
        "api_voice_consents",
        sa.Column("id", SurrogateKey, autoincrement=True, nullable=False),
        sa.Column(
            "voice_id",
            SurrogateKey,
            sa.ForeignKey(
                "api_voices.id", ondelete="CASCADE", name="fk_api_voice_consents_voice_id_api_voices"
            ),
            nullable=False,
        ),
        sa.Column("speaker_name", sa.String(64), nullable=False),
        sa.Column("statement_version", sa.String(32), nullable=False),
        sa.Column("statement", sa.Text, nullable=False),
        sa.Column("transcript", sa.Text, nullable=False),
        sa.Column("word_error_rate", sa.Float, nullable=False),
        sa.Column("speaker_similarity", sa.Float, nullable=False),
        sa.Column("added_by", sa.String(200), nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
        sa.Column("clip_hash", sa.String(64), nullable=False),
        sa.Column("recording", sa.LargeBinary, nullable=False),
        sa.Column("recording_mime", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_voice_consents"),
        sa.UniqueConstraint("voice_id", name="uq_api_voice_consents_voice_id"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("api_voice_consents")
    op.drop_table("api_voices")
