"""The speech worker: XTTS-v2 cloning, Whisper transcription, quality gate, verification, watermark.

Importing this package needs no torch: the engines are imported lazily by the code that runs them,
so the bot process can use the types, the errors and the HTTP client on its own.
"""

from worker.errors import SpeechError
from worker.types import (
    EmbeddingResult,
    PhraseMatch,
    QualityReport,
    Segment,
    SpeakerCheck,
    SpeechRequest,
    Transcription,
    VoiceEmbedding,
    WatermarkResult,
)

__all__ = [
    "EmbeddingResult",
    "PhraseMatch",
    "QualityReport",
    "Segment",
    "SpeakerCheck",
    "SpeechError",
    "SpeechRequest",
    "Transcription",
    "VoiceEmbedding",
    "WatermarkResult",
]
