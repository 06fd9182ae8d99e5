"""Errors of the bot's services, under the one root (``core.errors.VoxcloneError``).

    VoxcloneError (core.errors)      code
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

Configuration and intake errors are in ``core.errors``, the database's in ``storage.errors`` and the
speech worker's in ``worker.errors``: all share the root, so one handler per edge shows them all.
"""

from __future__ import annotations

from typing import Final

from core.errors import VoxcloneError
from core.i18n import N_

NOT_ENROLLED: Final = N_("You haven't enrolled a voice in this server yet: start with `/enroll`.")
"""What :class:`NoVoiceProfile` says when the member asking has no voice of their own here (``tr`` it)."""


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
