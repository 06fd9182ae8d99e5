"""Consent phrases in the member's language: ``consent_challenges.language``.

Revision ID: 0005_challenge_language
Revises: 0004_api_voices
Create Date: 2026-12-04

The language a phrase is in decides what its reading is transcribed and compared in and what the voice
is enrolled in. Every phrase issued before this revision was English, hence the server default.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.migrate import pause_point

revision: str = "0005_challenge_language"
down_revision: str | None = "0004_api_voices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "consent_challenges",
        sa.Column("language", sa.String(16), nullable=False, server_default="en"),
    )
    pause_point(revision)


def downgrade() -> None:
    with op.batch_alter_table("consent_challenges") as batch:
        batch.drop_column("language")
