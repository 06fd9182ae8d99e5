"""The interface the bot speaks to: one speech service, in-process or over HTTP.

``worker.local.LocalSpeechService`` runs the engines in this process; ``worker.client.HttpSpeechService``
talks to one or more ``voxclone worker`` servers. Both implement :class:`SpeechService`, so the bot and
the command line never know which one they have.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from worker.types import (
    EmbeddingResult,
    FloatArray,
    PhraseMatch,
    QualityReport,
    SpeakerCheck,
    SpeechRequest,
    Transcription,
    WatermarkResult,
)


class SpeechTools(Protocol):
    """The analysis part of the service: what the one-engine command-line tools need."""

    async def check_quality(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        """Run the quality gate only (no cloning)."""
        ...

    async def transcribe(
        self, pcm: FloatArray, sample_rate: int, language: str | None = None
    ) -> Transcription: ...

    async def compare_speakers(
        self, pcm_a: FloatArray, pcm_b: FloatArray, sample_rate: int
    ) -> SpeakerCheck: ...

    async def detect_watermark(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SpeechService(SpeechTools, Protocol):
    """Every speech operation the bot needs. PCM is mono float32 at ``sample_rate`` Hz."""

    async def embed(self, pcm: FloatArray, sample_rate: int) -> EmbeddingResult:
        """Quality gate, then XTTS conditioning latents; raises ``QualityRejected`` with the report."""
        ...

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        """Stream 24 kHz mono s16le PCM chunks; closing the iterator cancels the GPU work."""
        ...

    async def match_phrase(self, expected: str, heard: str, language: str = "en") -> PhraseMatch:
        """Whether ``heard`` says ``expected``, both normalised by ``language``'s rules."""
        ...

    async def ready(self) -> bool:
        """True once the models are loaded and requests will be served."""
        ...
