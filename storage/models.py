"""What the repositories return: frozen dataclasses, never rows or dicts.

Times are aware UTC datetimes; Discord ids are ints. ``MemberExport.to_dict`` is the JSON-safe
form that ``/voice export`` hands to a member (bytes as base64).
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from worker.types import QualityReport, VoiceEmbedding

VoiceMessageMode = Literal["off", "transcribe", "relay", "assistant"]


@dataclass(frozen=True)
class GuildSettings:
    """A server's choices. A server that never changed anything gets these defaults: cloning off."""

    guild_id: int
    cloning_enabled: bool = False
    enroll_role_ids: tuple[int, ...] = ()  # empty: every member may enroll (once cloning is on)
    speak_role_ids: tuple[int, ...] = ()  # empty: every enrolled member may speak
    allow_sharing: bool = False
    voice_message_mode: VoiceMessageMode = "off"
    voice_message_channel_ids: tuple[int, ...] = ()
    read_aloud_channel_ids: tuple[int, ...] = ()  # text channels read aloud where the bot is in voice
    announce: bool = True
    max_text_length: int = 300  # characters per /speak
    cooldown_s: float = 5.0  # per member, between two utterances
    retention_days: int | None = None  # None: voices are kept until deleted
    voice_message_max_seconds: int = 300  # longest voice message handled (transcribe/relay/assistant)
    voice_message_max_mb: int = 25  # largest voice message or audio attachment handled, in MB
    assistant_voice_user_id: int | None = None
    llm_system_prompt: str | None = None
    updated_at: datetime | None = None  # None: never changed (defaults)
    updated_by: int | None = None


@dataclass(frozen=True)
class VoiceProfile:
    """One member's cloned voice in one server (the arrays are loaded separately)."""

    id: int
    guild_id: int
    user_id: int
    language: str
    created_at: datetime
    enrolled_at: datetime  # when the current voice was recorded (re-enrolling moves it)
    last_used_at: datetime | None


@dataclass(frozen=True)
class ReferenceClip:
    """Facts about the clip a voice was cloned from (the audio itself is never stored)."""

    clip_hash: str  # sha256 hex of the reference PCM
    speech_seconds: float
    quality: QualityReport | None = None


@dataclass(frozen=True)
class EmbeddingInfo:
    """One stored array, without its data: what the export and the operator see."""

    kind: str  # "gpt_cond_latent" | "speaker_embedding"
    model_id: str
    shape: tuple[int, ...]
    dtype: str
    clip_hash: str
    speech_seconds: float
    quality: QualityReport | None
    created_at: datetime


@dataclass(frozen=True)
class StoredVoice:
    """A profile with its conditioning, ready to send with a synthesis request."""

    profile: VoiceProfile
    embedding: VoiceEmbedding
    clip: ReferenceClip


@dataclass(frozen=True)
class ConsentRecord:
    """A member reading the consent phrase: kept as long as the voice it allowed.

    ``recording`` is the clip exactly as uploaded (e.g. OGG/Opus), ``recording_mime`` its type;
    both None for a record without one. Only the export and ``ProfileRepo.consent_recording``
    load the bytes: records read for display have ``recording=None`` while ``recording_mime``
    still says whether one is kept. The bytes never appear in ``repr`` (no member audio in logs).
    """

    statement_version: str
    phrase: str
    transcript: str
    match_score: float  # word error rate of the transcript against the phrase
    speaker_similarity: float | None
    recorded_at: datetime
    clip_hash: str
    id: int | None = None  # set once stored
    recording: bytes | None = field(default=None, repr=False)
    recording_mime: str | None = None


@dataclass(frozen=True)
class Challenge:
    """A one-time consent phrase issued to one member in one server."""

    id: int
    guild_id: int
    user_id: int
    phrase: str
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None
    language: str = "en"  # what the phrase is in: the reading is transcribed in it, the voice enrolled in it


@dataclass(frozen=True)
class VoiceShare:
    guild_id: int
    owner_user_id: int
    grantee_user_id: int
    created_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    """One line of a server's audit log. ``details`` holds ids and counts, never content."""

    id: int
    guild_id: int
    actor_id: int | None  # None: the bot itself
    action: str
    subject_id: int | None
    details: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class StoredSize:
    """Voice data kept for one member or a whole server (``/voice status``, ``/consent show``)."""

    voices: int
    consent_records: int
    recording_bytes: int  # the consent recordings, as uploaded
    voice_bytes: int  # the conditioning arrays

    @property
    def total_bytes(self) -> int:
        return self.recording_bytes + self.voice_bytes


@dataclass(frozen=True)
class DeletionReport:
    """What deleting one member's voice data removed."""

    guild_id: int
    user_id: int
    profile_deleted: bool
    embeddings: int
    consent_records: int
    shares_granted: int
    shares_received: int
    challenges: int
    assistant_opt_in: bool
    was_assistant_voice: bool

    @property
    def anything(self) -> bool:
        return self.profile_deleted or any(
            (self.shares_received, self.challenges, self.assistant_opt_in, self.was_assistant_voice)
        )


@dataclass(frozen=True)
class GuildDeletionReport:
    """What removing a whole server (the bot left it) deleted."""

    guild_id: int
    settings_deleted: bool
    profiles: int
    embeddings: int
    consent_records: int
    shares: int
    challenges: int
    assistant_opt_ins: int
    audit_entries: int


@dataclass(frozen=True)
class MemberExport:
    """Everything stored about one member in one server (for ``/voice export``)."""

    guild_id: int
    user_id: int
    exported_at: datetime
    profile: VoiceProfile | None
    embedding: VoiceEmbedding | None
    embedding_info: tuple[EmbeddingInfo, ...] = ()
    consent_records: tuple[ConsentRecord, ...] = ()
    challenges: tuple[Challenge, ...] = ()
    shares_granted: tuple[VoiceShare, ...] = ()
    shares_received: tuple[VoiceShare, ...] = ()
    assistant_opt_in: bool = False
    audit_entries: tuple[AuditEntry, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: datetimes as ISO 8601, arrays as base64 little-endian float32 with shapes.

        Each consent record's ``recording`` is inline as standard base64 (padded) of the bytes
        exactly as uploaded, beside its ``recording_mime``; None where no recording is kept.
        """
        out: dict[str, Any] = _jsonable(dataclasses.asdict(dataclasses.replace(self, embedding=None)))
        out["embedding"] = self.embedding.to_wire() if self.embedding is not None else None
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def quality_to_json(quality: QualityReport | None) -> dict[str, Any] | None:
    if quality is None:
        return None
    result: dict[str, Any] = _jsonable(dataclasses.asdict(quality))
    return result


def quality_from_json(data: Any) -> QualityReport | None:
    """Inverse of :func:`quality_to_json`; ignores keys a newer version may have added."""
    if not isinstance(data, dict):
        return None
    known = {f.name for f in dataclasses.fields(QualityReport)}
    values = {k: v for k, v in data.items() if k in known}
    values["kept"] = [(float(a), float(b)) for a, b in values.get("kept", [])]
    values["reasons"] = list(values.get("reasons", []))
    values["warnings"] = list(values.get("warnings", []))
    return QualityReport(**values)
