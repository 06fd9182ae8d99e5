"""The speech engines in this process: the :class:`~worker.service.SpeechService` the bot uses by default.

:class:`LocalSpeechService` wires the XTTS engine (behind
:class:`~worker.serving.scheduler.SynthesisScheduler`), the quality gate, Whisper, speaker verification and
the watermark together. Every blocking call leaves the event loop (``asyncio.to_thread``); synthesis streams
chunks as they are made. ``voxclone worker`` serves the same object over HTTP. :class:`LocalTools` runs the
same analysis for the command-line tools, loading only the engine each one needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np

from core.audio import ACCEPTED_INPUT_RATES, ANALYSIS_SAMPLE_RATE
from core.i18n import tr
from worker.errors import InvalidAudio, ModelUnavailable, QualityRejected
from worker.models import resolve_asr_model
from worker.serving.engine import XttsEngine, validate_pcm
from worker.serving.scheduler import DEFAULT_BUFFER_CHUNKS, SynthesisScheduler
from worker.types import (
    EmbeddingResult,
    FloatArray,
    PhraseMatch,
    QualityReport,
    SpeakerCheck,
    SpeechRequest,
    Transcription,
    WatermarkResult,
    check_range,
)

if TYPE_CHECKING:
    from core.engine_settings import EngineSettings
    from core.settings import Settings
    from worker.analysis.asr import Transcriber
    from worker.analysis.quality import QualityGate
    from worker.analysis.verify import SpeakerVerifier
    from worker.analysis.watermark import Watermarker

log = logging.getLogger(__name__)

_E = TypeVar("_E")
NO_SPEECH_NOTE: Final = (
    "No speech was found in this audio (only silence or noise): there is nothing to transcribe."
)
MIN_COMPARE_SPEECH_S: Final = 1.0  # s of speech (silero-vad) each clip of a speaker comparison needs
_RATES_TEXT = ", ".join(f"{rate / 1000:g}" for rate in sorted(ACCEPTED_INPUT_RATES))


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_input(pcm: Any, sample_rate: int) -> FloatArray:
    """PCM from a caller: mono float32, finite, within [-1, 1], non-empty, at a rate the API accepts;
    else InvalidAudio."""
    if sample_rate not in ACCEPTED_INPUT_RATES:
        raise InvalidAudio(f"Audio at {sample_rate} Hz is not accepted: send {_RATES_TEXT} kHz PCM.")
    return check_range(validate_pcm(pcm, sample_rate))


def transcribe_speech(
    gate: QualityGate, transcriber: Transcriber, pcm16k: FloatArray, language: str | None
) -> Transcription:
    """Whisper on ``pcm16k`` only when silero-vad finds speech in it: on silence or noise Whisper makes
    words up ("You"), so there the transcript is empty and its note says why. Blocking."""
    if gate.speech_segments(pcm16k):
        return transcriber.transcribe(pcm16k, language)
    log.info("transcription skipped: no speech found")
    duration_s = round(pcm16k.size / ANALYSIS_SAMPLE_RATE, 3)
    return Transcription(text="", language=language or "", duration_s=duration_s, note=NO_SPEECH_NOTE)


def require_speech(gate: QualityGate, pcm: FloatArray, sample_rate: int, which: str) -> None:
    """``InvalidAudio`` unless silero-vad finds :data:`MIN_COMPARE_SPEECH_S` of speech in ``pcm``: a clip of
    noise or silence is no voice to compare (Resemblyzer would still score it). Blocking."""
    from worker.analysis.quality import to_analysis_rate

    found = sum(end - start for start, end in gate.speech_segments(to_analysis_rate(pcm, sample_rate)))
    if found < MIN_COMPARE_SPEECH_S:
        raise InvalidAudio(
            f"The {which} clip has no speech in it ({found:.1f} s heard, at least {MIN_COMPARE_SPEECH_S:g} s "
            "needed to recognise a voice): it is silence or noise. Send a recording of someone talking."
        )


class LocalAnalysis(ABC):
    """The analysis operations on engines in this process: the input is checked, then the engine runs off
    the event loop. Subclasses say how each engine is had: loaded up front (:class:`LocalSpeechService`)
    or on first use (:class:`LocalTools`)."""

    @abstractmethod
    async def _gate(self) -> QualityGate: ...

    @abstractmethod
    async def _transcriber(self) -> Transcriber: ...

    @abstractmethod
    async def _verifier(self) -> SpeakerVerifier: ...

    @abstractmethod
    async def _watermarker(self) -> Watermarker: ...

    async def check_quality(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        audio = check_input(pcm, sample_rate)
        gate = await self._gate()
        return await asyncio.to_thread(gate.analyze, audio, sample_rate)

    async def transcribe(
        self, pcm: FloatArray, sample_rate: int, language: str | None = None
    ) -> Transcription:
        from worker.analysis.quality import to_analysis_rate

        audio = check_input(pcm, sample_rate)
        gate, transcriber = await self._gate(), await self._transcriber()
        pcm16k = await asyncio.to_thread(to_analysis_rate, audio, sample_rate)
        return await asyncio.to_thread(transcribe_speech, gate, transcriber, pcm16k, language)

    async def compare_speakers(self, pcm_a: FloatArray, pcm_b: FloatArray, sample_rate: int) -> SpeakerCheck:
        a = check_input(pcm_a, sample_rate)
        b = check_input(pcm_b, sample_rate)
        gate, verifier = await self._gate(), await self._verifier()
        for clip, which in ((a, "first"), (b, "second")):
            await asyncio.to_thread(require_speech, gate, clip, sample_rate, which)
        return await asyncio.to_thread(verifier.compare, a, b, sample_rate)

    async def detect_watermark(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        audio = check_input(pcm, sample_rate)
        watermarker = await self._watermarker()
        return await asyncio.to_thread(watermarker.detect, audio, sample_rate)


class LocalSpeechService(LocalAnalysis):
    """Every speech operation, run by engines loaded in this process."""

    def __init__(
        self,
        *,
        xtts: XttsEngine,
        quality_gate: QualityGate,
        transcriber: Transcriber | None,
        verifier: SpeakerVerifier | None,
        watermarker: Watermarker,
        max_queue: int = 32,
        buffer_chunks: int = DEFAULT_BUFFER_CHUNKS,
        max_batch: int | None = None,
    ) -> None:
        self.xtts = xtts
        self.quality_gate = quality_gate
        self.transcriber = transcriber
        self.verifier = verifier
        self.watermarker = watermarker
        # Every synthesized chunk carries the watermark: the engine applies it before a chunk leaves.
        xtts.watermark = watermarker
        self.scheduler = SynthesisScheduler(xtts, max_queue, buffer_chunks=buffer_chunks, max_batch=max_batch)
        self._closed = False

    @classmethod
    async def load(
        cls,
        xtts_dir: Path,
        *,
        asr_backend: str = "faster-whisper",
        asr_model: str = "small",
        device: str = "auto",
        max_queue: int = 32,
        download_root: Path | None = None,
        max_batch: int | None = None,
        engine: EngineSettings | None = None,
        analysis: bool = True,
    ) -> LocalSpeechService:
        """Load every engine (in worker threads, side by side) and start the synthesis thread.

        ``max_batch``: requests decoded together (None: the engine's default, 32 on CUDA, 4 on CPU).
        ``engine``: the engine's switches, ``Settings.engine`` (None: every default, CUDA graphs on CUDA).
        ``analysis=False`` leaves out Whisper and speaker verification: cloning and speaking only
        (``voxclone say``), so no Whisper model is needed; ``transcribe`` and ``compare_speakers`` then
        raise ModelUnavailable.
        """
        from worker.analysis.asr import load_transcriber
        from worker.analysis.quality import QualityGate
        from worker.analysis.verify import SpeakerVerifier
        from worker.analysis.watermark import Watermarker

        resolved = resolve_device(device)
        log.info("loading speech engines on %s", resolved)

        async def nothing() -> None:
            return None

        xtts, gate, transcriber, verifier, watermarker = await asyncio.gather(
            asyncio.to_thread(
                XttsEngine.load,
                Path(xtts_dir),
                resolved,
                settings=engine,
            ),
            asyncio.to_thread(QualityGate),
            asyncio.to_thread(load_transcriber, asr_backend, asr_model, resolved, download_root)
            if analysis
            else nothing(),
            asyncio.to_thread(SpeakerVerifier) if analysis else nothing(),
            asyncio.to_thread(Watermarker),
        )
        return cls(
            xtts=xtts,
            quality_gate=gate,
            transcriber=transcriber,
            verifier=verifier,
            watermarker=watermarker,
            max_queue=max_queue,
            max_batch=max_batch,
        )

    @property
    def queue_depth(self) -> int:
        """Synthesis requests waiting for the engine (exported as a metric by the HTTP worker)."""
        return self.scheduler.queue_depth

    async def embed(self, pcm: FloatArray, sample_rate: int) -> EmbeddingResult:
        """Quality gate, then XTTS latents from the best ≤ 30 s of speech it kept."""
        from worker.analysis.quality import extract_kept

        audio = check_input(pcm, sample_rate)
        report = await asyncio.to_thread(self.quality_gate.analyze, audio, sample_rate)
        if not report.accepted:
            reason = (
                report.reasons[0] if report.reasons else tr("The recording cannot be used to clone a voice.")
            )
            raise QualityRejected(reason, report=report)
        speech = extract_kept(audio, sample_rate, report.kept)
        embedding = await asyncio.to_thread(self.xtts.embed, speech, sample_rate)
        return EmbeddingResult(embedding=embedding, quality=report)

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        """24 kHz mono s16le chunks; closing this iterator (or cancelling its reader) stops the GPU work."""
        stream = self.scheduler.submit(request)
        try:
            async for chunk in stream:
                yield chunk.astype("<i2", copy=False).tobytes()
        finally:
            stream.cancel()

    async def match_phrase(self, expected: str, heard: str, language: str = "en") -> PhraseMatch:
        from worker.analysis.verify import match_phrase

        return match_phrase(expected, heard, language=language)

    async def _gate(self) -> QualityGate:
        return self.quality_gate

    async def _transcriber(self) -> Transcriber:
        return self._loaded(self.transcriber, "Whisper")

    async def _verifier(self) -> SpeakerVerifier:
        return self._loaded(self.verifier, "speaker verification")

    async def _watermarker(self) -> Watermarker:
        return self.watermarker

    @staticmethod
    def _loaded(engine: _E | None, name: str) -> _E:
        if engine is None:
            raise ModelUnavailable(f"{name} is not loaded in this process (loaded without analysis).")
        return engine

    async def ready(self) -> bool:
        return not self._closed

    async def aclose(self) -> None:
        """Cancel running and queued synthesis and stop the engine thread."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self.scheduler.close)


# What each single engine of LocalTools is, for "loading ..." lines.
ENGINE_NAMES: Final = {
    "asr": "Whisper",
    "gate": "the quality gate (voice activity detection)",
    "verifier": "speaker verification (Resemblyzer)",
    "watermarker": "the watermark detector (perth)",
}


class LocalTools(LocalAnalysis):
    """Single engines loaded on first use, for the command-line tools that need only one of them.

    ``voxclone transcribe`` should not need XTTS-v2 on disk, nor ``check-voice`` Whisper. The operations
    are :class:`LocalSpeechService`'s own (:class:`LocalAnalysis`); only how an engine is had differs.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._engines: dict[str, Any] = {}
        self._announce = announce or (lambda line: log.info("%s", line))

    async def _engine(self, name: str, load: Callable[[], _E]) -> _E:
        """The engine called ``name``, loaded with ``load`` (in a worker thread) the first time."""
        if name not in self._engines:
            what = ENGINE_NAMES.get(name, name)
            if name == "asr":
                what = f"Whisper ({self._settings.asr_backend}, {self._settings.asr_model})"
            self._announce(f"loading {what} ...")
            started = time.perf_counter()
            self._engines[name] = await asyncio.to_thread(load)
            self._announce(f"loaded in {time.perf_counter() - started:.1f} s")
        engine: _E = self._engines[name]
        return engine

    async def _gate(self) -> QualityGate:
        from worker.analysis.quality import QualityGate

        return await self._engine("gate", QualityGate)

    async def _transcriber(self) -> Transcriber:
        return await self._engine("asr", self._load_whisper)

    async def _verifier(self) -> SpeakerVerifier:
        from worker.analysis.verify import SpeakerVerifier

        return await self._engine("verifier", SpeakerVerifier)

    async def _watermarker(self) -> Watermarker:
        from worker.analysis.watermark import Watermarker

        return await self._engine("watermarker", Watermarker)

    def _load_whisper(self) -> Transcriber:
        from worker.analysis.asr import load_transcriber

        s = self._settings
        model = resolve_asr_model(s.asr_backend, s.asr_model, s.model_cache_dir, endpoint=s.hf_endpoint)
        return load_transcriber(s.asr_backend, model, resolve_device(s.device), s.model_cache_dir)

    async def aclose(self) -> None:
        self._engines.clear()


def pcm16_to_float(data: bytes) -> FloatArray:
    """s16le bytes (as :meth:`LocalSpeechService.synthesize` yields them) as float32 in [-1, 1]."""
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


__all__ = [
    "LocalAnalysis",
    "LocalSpeechService",
    "LocalTools",
    "check_input",
    "pcm16_to_float",
    "require_speech",
    "resolve_device",
    "transcribe_speech",
]
