"""Errors of the bot side, each with a stable code and a sentence a member can act on.

    VoxcloneError                    code
    ├── ConfigError                  config            a setting is missing or wrong (start-up only)
    ├── StartupError                 startup           a service the bot needs cannot be reached at start-up
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
    ├── PolicyError                  (per subclass)    consent or server settings forbid the action
    │   ├── CloningDisabled          cloning_disabled
    │   ├── RoleNotAllowed           role_not_allowed
    │   ├── NotAdmin                 not_admin
    │   ├── NoVoiceProfile           no_voice
    │   ├── VoiceNotShared           not_shared
    │   ├── SharingDisabled          sharing_disabled
    │   ├── CooldownActive           cooldown
    │   ├── TextRejected             text_rejected     empty, or longer than the server's limit
    │   └── AssistantVoiceNotOptedIn assistant_not_opted_in  the assistant voice's owner did not opt in
    ├── EnrollmentError              (per subclass)    (no or expired phrase: storage.errors.Challenge*)
    │   ├── PhraseMismatch           phrase_mismatch
    │   ├── NotOwnRecording          not_own_recording
    │   └── ReferenceMismatch        reference_mismatch  the extra clip is another speaker
    ├── VoiceChannelError            (per subclass)
    │   ├── NotInVoiceChannel        not_in_voice
    │   ├── MissingVoicePermissions  voice_permissions
    │   ├── BusyElsewhere            busy_elsewhere
    │   ├── QueueFull                queue_full
    │   └── NothingPlaying           nothing_playing
    └── AssistantError               (per subclass)    the chat-completions endpoint failed (bot.assistant)
        ├── AssistantNotConfigured   assistant_not_configured  no LLM_BASE_URL
        ├── AssistantUnavailable     assistant_unavailable     down or unreachable
        ├── AssistantTimeout         assistant_timeout         connect, first word or next chunk too slow
        ├── AssistantRefused         assistant_refused         401/403/404/429/5xx from the endpoint
        └── AssistantBadResponse     assistant_bad_response    not the chat completions protocol, or empty

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


class StartupError(VoxcloneError):
    code = "startup"


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


class CloningDisabled(PolicyError):
    code = "cloning_disabled"


class RoleNotAllowed(PolicyError):
    code = "role_not_allowed"


class NotAdmin(PolicyError):
    code = "not_admin"


class NoVoiceProfile(PolicyError):
    code = "no_voice"


class VoiceNotShared(PolicyError):
    code = "not_shared"


class SharingDisabled(PolicyError):
    code = "sharing_disabled"


class CooldownActive(PolicyError):
    code = "cooldown"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TextRejected(PolicyError):
    code = "text_rejected"


class EnrollmentError(VoxcloneError):
    code = "enrollment"


class PhraseMismatch(EnrollmentError):
    code = "phrase_mismatch"


class NotOwnRecording(EnrollmentError):
    code = "not_own_recording"


class ReferenceMismatch(EnrollmentError):
    code = "reference_mismatch"


class AssistantVoiceNotOptedIn(PolicyError):
    code = "assistant_not_opted_in"


class VoiceChannelError(VoxcloneError):
    code = "voice_channel"


class NotInVoiceChannel(VoiceChannelError):
    code = "not_in_voice"


class MissingVoicePermissions(VoiceChannelError):
    code = "voice_permissions"


class BusyElsewhere(VoiceChannelError):
    code = "busy_elsewhere"


class QueueFull(VoiceChannelError):
    code = "queue_full"


class NothingPlaying(VoiceChannelError):
    code = "nothing_playing"


class AssistantError(VoxcloneError):
    code = "assistant"


class AssistantNotConfigured(AssistantError):
    code = "assistant_not_configured"


class AssistantUnavailable(AssistantError):
    code = "assistant_unavailable"


class AssistantTimeout(AssistantError):
    code = "assistant_timeout"


class AssistantRefused(AssistantError):
    code = "assistant_refused"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AssistantBadResponse(AssistantError):
    code = "assistant_bad_response"
