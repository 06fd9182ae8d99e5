"""Storage: the only place with SQL. SQLite (default) or PostgreSQL, SQLAlchemy Core, Alembic.

Open a :class:`Database`, run :func:`upgrade`, then build :class:`Repositories` around it::

    await upgrade(settings.database_url)
    async with Database(settings.database_url) as db:
        repos = Repositories(db)
"""

from __future__ import annotations

from storage.checks import CheckReport
from storage.db import Database
from storage.errors import ChallengeError, ChallengeExpired, ChallengeMissing, ChallengeUsed, ProfileNotFound
from storage.migrate import check, current_revision, head_revision, upgrade
from storage.models import (
    AuditEntry,
    Challenge,
    ConsentRecord,
    DeletionReport,
    EmbeddingInfo,
    GuildDeletionReport,
    GuildSettings,
    MemberExport,
    ReferenceClip,
    StoredSize,
    StoredVoice,
    VoiceMessageMode,
    VoiceProfile,
    VoiceShare,
)
from storage.repos import (
    AssistantOptInRepo,
    AuditRepo,
    ChallengeRepo,
    GuildSettingsRepo,
    ProfileRepo,
    Repositories,
    ShareRepo,
)
from storage.urls import mask_url

__all__ = [
    "AssistantOptInRepo",
    "AuditEntry",
    "AuditRepo",
    "Challenge",
    "ChallengeError",
    "ChallengeExpired",
    "ChallengeMissing",
    "ChallengeRepo",
    "ChallengeUsed",
    "CheckReport",
    "ConsentRecord",
    "Database",
    "DeletionReport",
    "EmbeddingInfo",
    "GuildDeletionReport",
    "GuildSettings",
    "GuildSettingsRepo",
    "MemberExport",
    "ProfileNotFound",
    "ProfileRepo",
    "ReferenceClip",
    "Repositories",
    "ShareRepo",
    "StoredSize",
    "StoredVoice",
    "VoiceMessageMode",
    "VoiceProfile",
    "VoiceShare",
    "check",
    "current_revision",
    "head_revision",
    "mask_url",
    "upgrade",
]
