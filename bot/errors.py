"""Errors of the bot side, each with a stable code and a sentence a member can act on.

    VoxcloneError                    code
    ├── ConfigError                  config            a setting is missing or wrong (start-up only)
    ├── StorageError                 storage           the database cannot be opened or written
    │   └── MigrationError           migration
    ├── IntakeError                  (per subclass)    an uploaded file could not become PCM
    │   ├── NotAudio                 not_audio
    │   ├── UnsupportedCodec         unsupported_codec
    │   ├── AudioTooLong             too_long
    │   ├── AudioTooLarge            too_large
    │   ├── CorruptAudio             corrupt
    │   ├── EmptyAudio               empty
    │   └── IntakeTimeout            intake_timeout
    └── PolicyError                  (per subclass)    consent or server settings forbid the action

Speech-worker failures are ``worker.errors.SpeechError``; the bot's error handler shows both kinds.
"""

from __future__ import annotations

from typing import ClassVar


class VoxcloneError(Exception):
    """Base of the bot's errors. ``message`` is safe to show to a member or an operator."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(VoxcloneError):
    code = "config"


class StorageError(VoxcloneError):
    code = "storage"


class MigrationError(StorageError):
    code = "migration"


class IntakeError(VoxcloneError):
    code = "intake"


class NotAudio(IntakeError):
    code = "not_audio"


class UnsupportedCodec(IntakeError):
    code = "unsupported_codec"


class AudioTooLong(IntakeError):
    code = "too_long"


class AudioTooLarge(IntakeError):
    code = "too_large"


class CorruptAudio(IntakeError):
    code = "corrupt"


class EmptyAudio(IntakeError):
    code = "empty"


class IntakeTimeout(IntakeError):
    code = "intake_timeout"


class PolicyError(VoxcloneError):
    code = "policy"
