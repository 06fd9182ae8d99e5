"""Read-aloud channels: the text channels a server has read aloud in its members' own voices.

Revision ID: 0003_read_aloud
Revises: 0002
Create Date: 2026-12-04

One JSON list of channel ids on ``guild_settings``, like ``voice_message_channel_ids``; empty for
every existing server (nothing is read aloud until an admin picks a channel).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.migrate import pause_point

revision: str = "0003_read_aloud"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "guild_settings",
        sa.Column("read_aloud_channel_ids", sa.JSON, nullable=False, server_default=sa.text("'[]'")),
    )
    pause_point(revision)


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("read_aloud_channel_ids")
