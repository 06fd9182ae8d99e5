"""Typed results of the speech engines, the same in-process and over HTTP (no torch needed).

PCM in these types is always mono. Inputs are float32 in [-1, 1] at a stated sample rate;
synthesized output is 24 kHz s16le bytes (see ``core.audio``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

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
    def from_wire(cls, data: dict[str, Any]) -> VoiceEmbedding:
        """Inverse of :meth:`to_wire`; raises ``ValueError`` on a malformed payload."""
        return cls(
            model_id=str(data["model_id"]),
            gpt_cond_latent=_decode_array(data["gpt_cond_latent"]),
            speaker_embedding=_decode_array(data["speaker_embedding"]),
        )


def _encode_array(arr: FloatArray) -> dict[str, Any]:
    a = np.ascontiguousarray(arr, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode_array(obj: dict[str, Any]) -> FloatArray:
    if obj.get("dtype") != "float32":
        raise ValueError("only float32 arrays are accepted")
    shape = tuple(int(n) for n in obj["shape"])
    raw = base64.b64decode(obj["data"], validate=True)
    count = int(np.prod(shape)) if shape else 1
    if len(raw) != count * 4:
        raise ValueError(f"array data is {len(raw)} bytes, shape {shape} needs {count * 4}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


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
    text: str
    language: str
    segments: list[Segment] = field(default_factory=list)
    duration_s: float = 0.0


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
