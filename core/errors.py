"""The one error root, and the errors of the foundations; each package adds its own subtree.

    VoxcloneError                    code              a stable ``code`` and a sentence a member can act on
    ├── ConfigError                  config            a setting is missing or wrong (start-up only)
    ├── StartupError                 startup           a service needed at start-up cannot be reached
    ├── IntakeError                  (per subclass)    an uploaded file could not become PCM (core.intake)
    │   ├── NotAudio                 not_audio
    │   ├── UnsupportedCodec         unsupported_codec
    │   ├── AudioTooLong             too_long
    │   ├── AudioTooLarge            too_large
    │   ├── CorruptAudio             corrupt
    │   ├── EmptyAudio               empty
    │   └── IntakeTimeout            intake_timeout
    ├── StorageError, ProfileNotFound, ChallengeError ...     storage.errors
    ├── SpeechError ...                                       worker.errors
    └── PolicyError, EnrollmentError, VoiceChannelError, AssistantError ...   bot.errors

Each edge (the command tree, the command line, the worker's HTTP app) has one handler for the root.
"""

from __future__ import annotations

from typing import ClassVar


class VoxcloneError(Exception):
    """Base of every voxclone error. ``message`` is safe to show to a member or an operator."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(VoxcloneError):
    code = "config"


class StartupError(VoxcloneError):
    code = "startup"


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
