"""Errors the repositories raise for expected situations, each a sentence a member can act on.

They extend the bot's hierarchy (``bot.errors``), so the one error handler shows them:

    PolicyError
    ├── ProfileNotFound       no_profile          the member has no cloned voice in this server
    └── ChallengeError        challenge
        ├── ChallengeMissing  challenge_missing   no phrase was issued (or it was replaced)
        ├── ChallengeUsed     challenge_used      the phrase was already used once
        └── ChallengeExpired  challenge_expired   the phrase is older than its time limit

Database failures themselves are ``bot.errors.StorageError`` (raised by ``storage.db``).
"""

from __future__ import annotations

from bot.errors import PolicyError


class ProfileNotFound(PolicyError):
    code = "no_profile"

    def __init__(
        self, message: str = "You have no cloned voice in this server yet: use /enroll first."
    ) -> None:
        super().__init__(message)


class ChallengeError(PolicyError):
    code = "challenge"


class ChallengeMissing(ChallengeError):
    code = "challenge_missing"

    def __init__(
        self,
        message: str = "There is no open consent phrase for you (a newer one may have replaced it). "
        "Run /enroll to get a new phrase.",
    ) -> None:
        super().__init__(message)


class ChallengeUsed(ChallengeError):
    code = "challenge_used"

    def __init__(
        self,
        message: str = "This consent phrase was already used. Run /enroll to get a new phrase.",
    ) -> None:
        super().__init__(message)


class ChallengeExpired(ChallengeError):
    code = "challenge_expired"

    def __init__(
        self,
        message: str = "This consent phrase has expired (phrases are valid for 10 minutes). "
        "Run /enroll to get a new one, then record it right away.",
    ) -> None:
        super().__init__(message)
