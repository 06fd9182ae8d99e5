"""Keep one consent record per voice: delete those of voices that re-enrolling replaced.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Until now every re-enrolment added a consent record, recording included, and kept the old ones,
although the voice they allowed was gone (a database of 40 members grew to 608 MB). From now on
``ProfileRepo.save_enrollment`` deletes them with the voice they belonged to; this deletes the ones
already piled up, keeping per profile the newest record: the consent for the voice in use. No
schema change. On SQLite the freed pages are zeroed (``secure_delete``) and reused; ``VACUUM``
gives them back to the file system.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.migrate import pause_point

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "DELETE FROM consent_records WHERE id NOT IN "
            "(SELECT max(id) FROM consent_records GROUP BY profile_id)"
        )
    )
    pause_point(revision)


def downgrade() -> None:
    """Nothing to restore: the deleted recordings are gone, which is the point."""
