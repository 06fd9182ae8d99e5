"""The worker API's wire format, shared by the server (``worker.api.app``) and the client (``worker.client``).

Torch- and FastAPI-free, so the bot process can import it.

Requests are JSON. PCM travels as ``{"sample_rate": 48000, "encoding": "f32le", "data": "<base64>"}``:
mono, little-endian float32 in [-1, 1] (``f32le``) or 16-bit integers (``s16le``), at one of the rates
in ``core.audio.ACCEPTED_INPUT_RATES``. Voices travel as ``VoiceEmbedding.to_wire()``. Results are the
dataclasses of ``worker.types`` as JSON objects; a non-finite float (the level of pure silence is
``-inf`` dBFS) is sent as the string ``"-Infinity"``, ``"Infinity"`` or ``"NaN"`` so the body stays
strict JSON.

``POST /v1/speech`` answers ``200`` with a framed stream of 24 kHz mono s16le PCM. Each frame is a
5-byte header, one kind byte and a big-endian uint32 payload length, then the payload:

    D  data   raw s16le samples (an even number of bytes)
    E  end    JSON ``{"bytes": <PCM bytes sent>, "audio_s": <seconds>}``: the stream is complete
    X  error  JSON ``{"error": {"code", "message"}}``: synthesis failed after the headers were sent

A stream that ends without an ``E`` frame, or whose ``E`` frame counts other bytes than arrived, was
cut (worker killed, connection lost): the client raises instead of playing a truncated sentence.
Errors found before the first chunk are ordinary JSON error responses with an HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from core.audio import ACCEPTED_INPUT_RATES, OUTPUT_SAMPLE_RATE, OUTPUT_SAMPLE_WIDTH
from worker.errors import InvalidAudio, InvalidRequest
from worker.types import (
    FloatArray,
    PhraseMatch,
    QualityReport,
    SpeakerCheck,
    SpeechRequest,
    Transcription,
    VoiceEmbedding,
    WatermarkResult,
    check_range,
)

STREAM_MEDIA_TYPE: Final = "application/vnd.voxclone.pcm-frames"
FRAMING_VERSION: Final = "voxclone-frames-1"
FRAME_HEADER: Final = struct.Struct(">cI")  # kind byte, payload length in bytes
FRAME_DATA: Final = b"D"
FRAME_END: Final = b"E"
FRAME_ERROR: Final = b"X"
MAX_FRAME_BYTES: Final = 8 * 1024 * 1024  # a 24 kHz s16 chunk of 8 MiB is ~175 s: far above any real chunk
MAX_TEXT_CHARS: Final = 2000  # characters per /v1/speech request; the bot splits longer text
MAX_NEW_TOKENS: Final = 4000  # audio tokens (~186 s at 46.4 ms each)

_ENCODING_WIDTH: Final = {"f32le": 4, "s16le": 2}
_S16_SCALE: Final = 32768.0  # full scale of a signed 16-bit sample


class WirePcm(BaseModel):
    """Mono PCM in a JSON request."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int
    encoding: Literal["f32le", "s16le"] = "f32le"
    data: str = Field(description="base64 of the little-endian samples")

    @classmethod
    def from_array(cls, pcm: FloatArray, sample_rate: int) -> WirePcm:
        """Encode float32 PCM losslessly (``f32le``)."""
        raw = np.ascontiguousarray(pcm, dtype="<f4").tobytes()
        return cls(sample_rate=sample_rate, encoding="f32le", data=base64.b64encode(raw).decode("ascii"))

    def to_array(self) -> FloatArray:
        """Decode and check the samples; every problem is an ``InvalidAudio`` a caller can fix."""
        if self.sample_rate not in ACCEPTED_INPUT_RATES:
            rates = ", ".join(str(r) for r in sorted(ACCEPTED_INPUT_RATES))
            raise InvalidAudio(f"Audio at {self.sample_rate} Hz is not accepted; send one of {rates} Hz.")
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidAudio("The audio data is not valid base64.") from None
        width = _ENCODING_WIDTH[self.encoding]
        if not raw:
            raise InvalidAudio("The audio is empty: there are no samples to work with.")
        if len(raw) % width:
            raise InvalidAudio(
                f"The audio data is {len(raw)} bytes, "
                f"not a whole number of {width}-byte {self.encoding} samples."
            )
        if self.encoding == "s16le":
            return (np.frombuffer(raw, dtype="<i2").astype(np.float32) / _S16_SCALE).astype(np.float32)
        pcm = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.isfinite(pcm).all():
            raise InvalidAudio("The audio contains NaN or infinite samples.")
        return check_range(pcm)


class AudioBody(BaseModel):
    """``/v1/embeddings``, ``/v1/quality``, ``/v1/watermark/detect``."""

    model_config = ConfigDict(extra="forbid")
    audio: WirePcm


class TranscriptionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    audio: WirePcm
    language: str | None = Field(default=None, max_length=16)


class VerifyBody(BaseModel):
    """Either two clips (same speaker?), or an expected and a heard phrase (phrase match), or both."""

    model_config = ConfigDict(extra="forbid")
    audio_a: WirePcm | None = None
    audio_b: WirePcm | None = None
    expected: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    heard: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    language: str = Field(default="en", min_length=1, max_length=16)  # of the phrase: how both are normalised


class SpeechBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    language: str = Field(min_length=1, max_length=16)
    embedding: dict[str, Any]
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    min_new_tokens: int | None = Field(default=None, ge=0, le=MAX_NEW_TOKENS)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _lengths_in_order(self) -> SpeechBody:
        low, high = self.min_new_tokens, self.max_new_tokens
        if low is not None and high is not None and low > high:
            raise ValueError("min_new_tokens must not exceed max_new_tokens")
        return self

    @classmethod
    def from_request(cls, request: SpeechRequest) -> SpeechBody:
        return cls(
            text=request.text,
            language=request.language,
            embedding=request.embedding.to_wire(),
            max_new_tokens=request.max_new_tokens,
            min_new_tokens=request.min_new_tokens,
            seed=request.seed,
        )

    def to_request(self) -> SpeechRequest:
        try:
            embedding = VoiceEmbedding.from_wire(self.embedding)
        except ValueError as exc:  # "gpt_cond_latent.data: what is wrong"
            where, _, what = str(exc).partition(": ")
            field, what = (f"embedding.{where}", what) if what else ("embedding", where)
            raise InvalidRequest(
                f"The voice embedding in this request is malformed: {field}: {what}. Enroll the voice again.",
                field=field,
            ) from None
        return SpeechRequest(
            text=self.text,
            language=self.language,
            embedding=embedding,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens,
            seed=self.seed,
        )


_T = TypeVar("_T")

# The results as JSON objects, both ways: the server dumps them, the client validates them.
QUALITY_ADAPTER: Final = TypeAdapter(QualityReport)
TRANSCRIPTION_ADAPTER: Final = TypeAdapter(Transcription)
SPEAKER_ADAPTER: Final = TypeAdapter(SpeakerCheck)
PHRASE_ADAPTER: Final = TypeAdapter(PhraseMatch)
WATERMARK_ADAPTER: Final = TypeAdapter(WatermarkResult)


def to_json_obj(adapter: TypeAdapter[_T], value: _T) -> Any:
    """A result dataclass as strict-JSON data (non-finite floats become strings)."""
    return finite_json(adapter.dump_python(value, mode="python"))


def jsonable(obj: Any) -> Any:
    """Plain strict-JSON data from dataclasses, dicts, lists and scalars (for error details)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return finite_json(obj)


def finite_json(obj: Any) -> Any:
    """Replace non-finite floats by the strings pydantic parses back (``"-Infinity"``...)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


# ---- the /v1/speech stream ------------------------------------------------------------------------


def data_frame(pcm: bytes) -> bytes:
    return FRAME_HEADER.pack(FRAME_DATA, len(pcm)) + pcm


def end_frame(total_bytes: int) -> bytes:
    audio_s = total_bytes / OUTPUT_SAMPLE_WIDTH / OUTPUT_SAMPLE_RATE
    payload = json.dumps({"bytes": total_bytes, "audio_s": round(audio_s, 4)}).encode()
    return FRAME_HEADER.pack(FRAME_END, len(payload)) + payload


def error_frame(error_json: dict[str, Any]) -> bytes:
    payload = json.dumps(jsonable(error_json), default=str).encode()
    return FRAME_HEADER.pack(FRAME_ERROR, len(payload)) + payload


class FrameError(ValueError):
    """The byte stream is not a valid frame sequence."""


@dataclass(frozen=True)
class Frame:
    kind: bytes
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


class FrameDecoder:
    """Incremental parser: feed raw bytes as they arrive, get whole frames back."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.ended = False

    def feed(self, data: bytes) -> list[Frame]:
        if self.ended and data:
            raise FrameError("data after the end of the stream")
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= FRAME_HEADER.size:
            kind, length = FRAME_HEADER.unpack_from(self._buf)
            if kind not in (FRAME_DATA, FRAME_END, FRAME_ERROR):
                raise FrameError(f"unknown frame kind {kind!r}")
            if length > MAX_FRAME_BYTES:
                raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
            end = FRAME_HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append(Frame(kind, bytes(self._buf[FRAME_HEADER.size : end])))
            del self._buf[:end]
            if kind in (FRAME_END, FRAME_ERROR):
                self.ended = True
                if self._buf:
                    raise FrameError("data after the end of the stream")
                break
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest."""
        return len(self._buf)
