"""Repositories: the only code that writes SQL. One per aggregate, each returning dataclasses.

``Repositories(db)`` builds them all around one open :class:`storage.db.Database`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.db import Database
from storage.repos.audit import AuditRepo
from storage.repos.challenges import ChallengeRepo
from storage.repos.profiles import ProfileRepo
from storage.repos.settings import GuildSettingsRepo
from storage.repos.shares import AssistantOptInRepo, ShareRepo


@dataclass(frozen=True)
class Repositories:
    """Every repository over one database (what the bot's services are given)."""

    db: Database
    settings: GuildSettingsRepo = field(init=False)
    profiles: ProfileRepo = field(init=False)
    challenges: ChallengeRepo = field(init=False)
    shares: ShareRepo = field(init=False)
    assistant: AssistantOptInRepo = field(init=False)
    audit: AuditRepo = field(init=False)

    def __post_init__(self) -> None:
        for name, repo in (
            ("settings", GuildSettingsRepo(self.db)),
            ("profiles", ProfileRepo(self.db)),
            ("challenges", ChallengeRepo(self.db)),
            ("shares", ShareRepo(self.db)),
            ("assistant", AssistantOptInRepo(self.db)),
            ("audit", AuditRepo(self.db)),
        ):
            object.__setattr__(self, name, repo)


__all__ = [
    "AssistantOptInRepo",
    "AuditRepo",
    "ChallengeRepo",
    "GuildSettingsRepo",
    "ProfileRepo",
    "Repositories",
    "ShareRepo",
]
