"""Typed results of the speech engines, the same in-process and over HTTP (no torch needed).

PCM in these types is always mono. Inputs are float32 in [-1, 1] at a stated sample rate;
synthesized output is 24 kHz s16le bytes (see ``core.audio``).
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from worker.errors import InvalidAudio

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class VoiceEmbedding:
    """XTTS-v2 conditioning for one voice: what is stored per profile and sent with each request.

    ``gpt_cond_latent`` is ``[1, 32, 1024]`` and ``speaker_embedding`` is ``[1, 512, 1]`` for the real
    model; the shapes follow the checkpoint (a tiny test model has smaller ones). ``model_id`` names
    the checkpoint that made them: latents from one checkpoint are meaningless to another.
    """

    model_id: str
    gpt_cond_latent: FloatArray
    speaker_embedding: FloatArray

    def to_wire(self) -> dict[str, Any]:
        """JSON-safe form: base64 little-endian float32 plus shapes."""
        return {
            "model_id": self.model_id,
            "gpt_cond_latent": _encode_array(self.gpt_cond_latent),
            "speaker_embedding": _encode_array(self.speaker_embedding),
        }

    @classmethod
    def from_wire(cls, data: object) -> VoiceEmbedding:
        """Inverse of :meth:`to_wire`; a malformed payload raises ``ValueError`` whose message starts with
        the field at fault (``gpt_cond_latent.data: ...``)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object with {', '.join(_EMBEDDING_FIELDS)}, got {_kind(data)}")
        model_id = data.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id: expected the name of the speech model, got {_kind(model_id)}")
        return cls(
            model_id=model_id,
            gpt_cond_latent=_decode_array(data.get("gpt_cond_latent"), "gpt_cond_latent"),
            speaker_embedding=_decode_array(data.get("speaker_embedding"), "speaker_embedding"),
        )


_EMBEDDING_FIELDS: Final = ("model_id", "gpt_cond_latent", "speaker_embedding")
_ARRAY_FIELDS: Final = ("shape", "dtype", "data")
# Largest magnitude accepted in a voice's arrays. XTTS-v2 makes its GPT conditioning with an RMSNorm
# (each latent has norm sqrt(1024) = 32 times a learnt gain) and its speaker embedding L2-normalised
# (values at most 1); the tiny test model's reach 2.5 and 0.13. Values far beyond are damage, and
# near float32's limit (3.4e38) they overflow inside the model into NaN audio.
MAX_EMBEDDING_ABS: Final = 1e4


def check_range(pcm: FloatArray) -> FloatArray:
    """``pcm`` if every sample is within [-1, 1] (float full scale); else ``InvalidAudio`` saying how far out.

    Audio far outside is not audio at this scale (16-bit values sent as floats, a gain gone wrong):
    Whisper transcribed such PCM as "))))" after 24 s of work.
    """
    peak = float(np.max(np.abs(pcm))) if pcm.size else 0.0
    if peak > 1.0:
        raise InvalidAudio(
            f"The audio's samples must lie within -1 and 1 (float full scale), but reach {peak:.4g}: "
            "scale it to full scale 1.0 (16-bit samples are divided by 32768) or send s16le."
        )
    return pcm


def _kind(value: object) -> str:
    """How a JSON value is described in an error: its JSON type, never its content."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)


def _encode_array(arr: FloatArray) -> dict[str, Any]:
    a = np.ascontiguousarray(arr, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode_array(obj: object, name: str) -> FloatArray:
    """One array of :meth:`VoiceEmbedding.from_wire`; ``ValueError`` names ``name`` and the bad field."""
    if not isinstance(obj, dict):
        raise ValueError(f"{name}: expected an object with {', '.join(_ARRAY_FIELDS)}, got {_kind(obj)}")
    if obj.get("dtype") != "float32":
        raise ValueError(f"{name}.dtype: only float32 arrays are accepted")
    dims = obj.get("shape")
    if not isinstance(dims, list) or not all(type(n) is int and n >= 0 for n in dims):
        raise ValueError(f"{name}.shape: expected a list of non-negative whole numbers, got {_kind(dims)}")
    data = obj.get("data")
    if not isinstance(data, str):
        raise ValueError(f"{name}.data: expected base64 text, got {_kind(data)}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name}.data: not valid base64") from None
    shape = tuple(dims)
    count = math.prod(shape)
    if len(raw) != count * 4:
        raise ValueError(f"{name}.data: {len(raw)} bytes, but shape {list(shape)} needs {count * 4}")
    array = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    if not np.all(np.abs(array) <= MAX_EMBEDDING_ABS):  # also False for NaN and infinity
        worst = float(np.nan_to_num(np.abs(array), nan=np.inf).max())
        raise ValueError(
            f"{name}.data: values must be finite and at most {MAX_EMBEDDING_ABS:g} in magnitude "
            f"(found {worst:g}): the voice data is damaged"
        )
    return array


@dataclass(frozen=True)
class QualityReport:
    """What the quality gate measured in a reference clip, and why it would reject it.

    ``reasons`` are rejections and ``warnings`` advice, both sentences a member can act on.
    ``kept`` are the (start, end) seconds of speech chosen for cloning (at most 30 s in total).
    """

    accepted: bool
    duration_s: float
    speech_s: float
    level_dbfs: float  # RMS of the speech parts
    peak_dbfs: float
    clipped_fraction: float  # share of samples at or near full scale
    noise_dbfs: float  # RMS of the non-speech parts (the noise floor)
    snr_db: float
    kept: list[tuple[float, float]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EmbeddingResult:
    """A cloned voice and the quality report of the clip it came from."""

    embedding: VoiceEmbedding
    quality: QualityReport


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcription:
    """What was said. With no speech in the audio ``text`` is empty and ``note`` says so (Whisper is never
    run on silence or noise, where it makes words up)."""

    text: str
    language: str
    segments: list[Segment] = field(default_factory=list)
    duration_s: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class SpeakerCheck:
    """Same-speaker verdict from two clips (Resemblyzer cosine similarity)."""

    similarity: float
    threshold: float
    same_speaker: bool


@dataclass(frozen=True)
class PhraseMatch:
    """Whether a transcript says the expected phrase, by word error rate after normalisation."""

    expected: str
    heard: str
    word_error_rate: float
    max_word_error_rate: float
    matched: bool


@dataclass(frozen=True)
class WatermarkResult:
    detected: bool
    confidence: float


@dataclass(frozen=True)
class SpeechRequest:
    """One synthesis: text in one language, spoken in the voice of ``embedding``."""

    text: str
    language: str
    embedding: VoiceEmbedding
    # Pin the length in audio tokens (random-weight test models never stop on their own).
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    seed: int | None = None


# ---- the worker API's consented voices (worker.voices; stored by storage.repos.api_voices) ----


@dataclass(frozen=True)
class ApiVoiceConsent:
    """What allowed a voice: the recording of its speaker reading the statement, and the checks' figures."""

    speaker_name: str
    statement_version: str
    statement: str
    transcript: str
    word_error_rate: float
    speaker_similarity: float
    added_by: str
    recorded_at: datetime
    clip_hash: str
    recording: bytes
    recording_mime: str


@dataclass(frozen=True)
class ApiVoiceInfo:
    """A voice as listed: no conditioning arrays, no recording."""

    name: str
    language: str
    model_id: str
    speech_seconds: float
    created_at: datetime
    added_by: str
    consent_recorded_at: datetime


@dataclass(frozen=True)
class ApiVoice:
    """A voice ready to speak with."""

    name: str
    language: str
    embedding: VoiceEmbedding
    created_at: datetime


@dataclass(frozen=True)
class NewApiVoice:
    """Everything the API's voice library stores for a new voice: the voice, its reference and its consent."""

    name: str
    language: str
    embedding: VoiceEmbedding
    reference_hash: str
    speech_seconds: float
    quality: QualityReport | None
    consent: ApiVoiceConsent
