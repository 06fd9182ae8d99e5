"""Errors of the database and the repositories, under the one root (``core.errors.VoxcloneError``).

VoxcloneError (core.errors)
├── StorageError          storage             the database cannot be opened or written (storage.db)
│   └── MigrationError    migration           the schema cannot be brought to the latest revision
├── ProfileNotFound       no_profile          the member has no cloned voice in this server
└── ChallengeError        challenge
    ├── ChallengeMissing  challenge_missing   no phrase was issued (or it was replaced)
    ├── ChallengeUsed     challenge_used      the phrase was already used once
    └── ChallengeExpired  challenge_expired   the phrase is older than its time limit
"""

from __future__ import annotations

from core.errors import VoxcloneError
from core.i18n import tr


class StorageError(VoxcloneError):
    code = "storage"


class MigrationError(StorageError):
    code = "migration"


class ProfileNotFound(VoxcloneError):
    code = "no_profile"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or tr("You have no cloned voice in this server yet: use /enroll first."))


class ChallengeError(VoxcloneError):
    code = "challenge"


class ChallengeMissing(ChallengeError):
    code = "challenge_missing"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or tr(
                "There is no open consent phrase for you (a newer one may have replaced it). "
                "Run /enroll to get a new phrase."
            )
        )


class ChallengeUsed(ChallengeError):
    code = "challenge_used"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message or tr("This consent phrase was already used. Run /enroll to get a new phrase.")
        )


class ChallengeExpired(ChallengeError):
    code = "challenge_expired"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or tr(
                "This consent phrase has expired (phrases are valid for 10 minutes). "
                "Run /enroll to get a new one, then record it right away."
            )
        )
