"""Build the speech service the settings ask for: workers over HTTP, or the engines in this process.

``WORKER_URLS`` set → :class:`~worker.client.HttpSpeechService` (no torch imported). Empty → the model
folders are resolved (downloaded on first use, see ``worker.models``) and
``worker.local.LocalSpeechService`` loads them. :class:`DeferredSpeechService` lets ``voxclone worker``
answer health checks (and ``not_ready``) while the engines load in the background.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from core.i18n import N_, tr
from worker.client import HttpSpeechService
from worker.errors import ModelNotReady, SpeechError
from worker.models import DEFAULT_HF_ENDPOINT, resolve_asr_model, resolve_xtts_dir
from worker.service import SpeechService
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

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger("voxclone.worker.factory")

LOADING_MESSAGE = N_("The speech models are still loading; try again in a minute.")


@dataclass(frozen=True)
class LocalModels:
    """Where the in-process engines load their weights from."""

    xtts_dir: Path
    asr_backend: str
    asr_model: str  # a faster-whisper folder or an openai-whisper .pt file


def tos_agreed(environ: Mapping[str, str]) -> bool:
    """Whether the operator accepted the Coqui Public Model License (``COQUI_TOS_AGREED=1``)."""
    return environ.get("COQUI_TOS_AGREED", "").strip().lower() in {"1", "true", "yes"}


def resolve_xtts(
    settings: Settings,
    *,
    model_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """Find (or download) XTTS-v2 only; blocking. Raises ``ModelUnavailable``."""
    env = os.environ if environ is None else environ
    return resolve_xtts_dir(
        model_dir or settings.model_dir,
        settings.model_cache_dir,
        tos_agreed=tos_agreed(env) or bool(getattr(settings, "coqui_tos_agreed", False)),
        endpoint=env.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT),
        progress=progress,
    )


def resolve_local_models(
    settings: Settings,
    *,
    model_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    progress: bool = True,
) -> LocalModels:
    """Find (or download) XTTS-v2 and the Whisper model; blocking. Raises ``ModelUnavailable``."""
    env = os.environ if environ is None else environ
    endpoint = env.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT)
    xtts_dir = resolve_xtts(settings, model_dir=model_dir, environ=env, progress=progress)
    asr_model = resolve_asr_model(
        settings.asr_backend,
        settings.asr_model,
        settings.model_cache_dir,
        endpoint=endpoint,
        progress=progress,
    )
    return LocalModels(xtts_dir=xtts_dir, asr_backend=settings.asr_backend, asr_model=asr_model)


async def load_local_service(settings: Settings, models: LocalModels) -> SpeechService:
    """Load every engine in this process (torch is imported here, not before)."""
    # Importing torch takes seconds: off the event loop, which meanwhile answers health checks and signals.
    await asyncio.to_thread(importlib.import_module, "worker.local")
    from worker.local import LocalSpeechService

    return await LocalSpeechService.load(
        models.xtts_dir,
        asr_backend=models.asr_backend,
        asr_model=models.asr_model,
        device=settings.device,
        max_queue=settings.worker_max_queue,
        download_root=settings.model_cache_dir,
        max_batch=settings.worker_max_batch,
        fast_decode=settings.fast_decode,
    )


async def load_synthesis_service(settings: Settings, xtts_dir: Path) -> SpeechService:
    """XTTS-v2, the quality gate and the watermark, without Whisper or verification (``voxclone say``)."""
    await asyncio.to_thread(importlib.import_module, "worker.local")
    from worker.local import LocalSpeechService

    return await LocalSpeechService.load(
        xtts_dir,
        device=settings.device,
        max_queue=settings.worker_max_queue,
        max_batch=settings.worker_max_batch,
        fast_decode=settings.fast_decode,
        analysis=False,
    )


# What each single engine of LocalTools is, for "loading ..." lines.
ENGINE_NAMES: Final = {
    "asr": "Whisper",
    "gate": "the quality gate (voice activity detection)",
    "verifier": "speaker verification (Resemblyzer)",
    "watermarker": "the watermark detector (perth)",
}


class LocalTools:
    """Single engines loaded on first use, for the command-line tools that need only one of them.

    ``voxclone transcribe`` should not need XTTS-v2 on disk, nor ``check-voice`` Whisper. Each method
    validates its input and calls its engine exactly as ``LocalSpeechService`` does.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        environ: Mapping[str, str] | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._environ = os.environ if environ is None else environ
        self._engines: dict[str, Any] = {}
        self._announce = announce or (lambda line: log.info("%s", line))

    async def _engine(self, name: str) -> Any:
        if name not in self._engines:
            what = ENGINE_NAMES.get(name, name)
            if name == "asr":
                what = f"Whisper ({self._settings.asr_backend}, {self._settings.asr_model})"
            self._announce(f"loading {what} ...")
            started = time.perf_counter()
            self._engines[name] = await asyncio.to_thread(self._load, name)
            self._announce(f"loaded in {time.perf_counter() - started:.1f} s")
        return self._engines[name]

    def _load(self, name: str) -> Any:
        from worker.local import resolve_device

        if name == "asr":
            from worker.analysis.asr import load_transcriber

            s = self._settings
            endpoint = self._environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT)
            model = resolve_asr_model(s.asr_backend, s.asr_model, s.model_cache_dir, endpoint=endpoint)
            return load_transcriber(s.asr_backend, model, resolve_device(s.device), s.model_cache_dir)
        if name == "gate":
            from worker.analysis.quality import QualityGate

            return QualityGate()
        if name == "verifier":
            from worker.analysis.verify import SpeakerVerifier

            return SpeakerVerifier()
        from worker.analysis.watermark import Watermarker

        return Watermarker()

    async def check_quality(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        from worker.local import check_input

        gate = await self._engine("gate")
        report: QualityReport = await asyncio.to_thread(
            gate.analyze, check_input(pcm, sample_rate), sample_rate
        )
        return report

    async def transcribe(
        self, pcm: FloatArray, sample_rate: int, language: str | None = None
    ) -> Transcription:
        from worker.analysis.quality import to_analysis_rate
        from worker.local import check_input, transcribe_speech

        gate, transcriber = await self._engine("gate"), await self._engine("asr")
        pcm16k = await asyncio.to_thread(to_analysis_rate, check_input(pcm, sample_rate), sample_rate)
        return await asyncio.to_thread(transcribe_speech, gate, transcriber, pcm16k, language)

    async def compare_speakers(self, pcm_a: FloatArray, pcm_b: FloatArray, sample_rate: int) -> SpeakerCheck:
        from worker.local import check_input, require_speech

        gate, verifier = await self._engine("gate"), await self._engine("verifier")
        a, b = check_input(pcm_a, sample_rate), check_input(pcm_b, sample_rate)
        for clip, which in ((a, "first"), (b, "second")):
            await asyncio.to_thread(require_speech, gate, clip, sample_rate, which)
        check: SpeakerCheck = await asyncio.to_thread(verifier.compare, a, b, sample_rate)
        return check

    async def detect_watermark(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        from worker.local import check_input

        watermarker = await self._engine("watermarker")
        audio = check_input(pcm, sample_rate)
        result: WatermarkResult = await asyncio.to_thread(watermarker.detect, audio, sample_rate)
        return result

    async def aclose(self) -> None:
        self._engines.clear()


def create_http_service(settings: Settings, urls: list[str] | None = None) -> HttpSpeechService:
    """The HTTP client of ``urls`` (default ``WORKER_URLS``), with the settings' timeouts."""
    token = settings.worker_token.get_secret_value() if settings.worker_token else None
    return HttpSpeechService(
        urls or settings.worker_urls,
        token,
        settings.worker_timeout_s,
        connect_timeout_s=settings.worker_connect_timeout_s,
        first_chunk_timeout_s=settings.worker_first_chunk_timeout_s,
        chunk_timeout_s=settings.worker_chunk_timeout_s,
        probe_interval_s=settings.worker_probe_interval_s,
    )


async def create_speech_service(settings: Settings, *, model_dir: Path | None = None) -> SpeechService:
    """The service the bot (and the command line) uses, per ``settings``."""
    if settings.worker_urls:
        return create_http_service(settings)
    models = await asyncio.to_thread(resolve_local_models, settings, model_dir=model_dir)
    return await load_local_service(settings, models)


class DeferredSpeechService:
    """A SpeechService whose engines load in the background; until then calls answer ``not_ready``."""

    def __init__(self, load: Callable[[], Awaitable[SpeechService]]) -> None:
        self._load = load
        self._task: asyncio.Task[SpeechService] | None = None
        self._service: SpeechService | None = None
        self._failure: SpeechError | None = None

    def start(self) -> asyncio.Task[SpeechService]:
        """Begin loading (idempotent); await the task to learn whether it worked."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self._task

    async def _run(self) -> SpeechService:
        try:
            self._service = await self._load()
        except SpeechError as exc:
            self._failure = exc
            raise
        return self._service

    def _engine(self) -> SpeechService:
        if self._service is not None:
            return self._service
        if self._failure is not None:
            raise type(self._failure)(self._failure.message)
        raise ModelNotReady(tr(LOADING_MESSAGE))

    @property
    def queue_depth(self) -> float:
        value = getattr(self._service, "queue_depth", 0) if self._service is not None else 0
        return float(value() if callable(value) else value)

    async def check_quality(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        return await self._engine().check_quality(pcm, sample_rate)

    async def embed(self, pcm: FloatArray, sample_rate: int) -> EmbeddingResult:
        return await self._engine().embed(pcm, sample_rate)

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        return self._engine().synthesize(request)

    async def transcribe(
        self, pcm: FloatArray, sample_rate: int, language: str | None = None
    ) -> Transcription:
        return await self._engine().transcribe(pcm, sample_rate, language)

    async def compare_speakers(self, pcm_a: FloatArray, pcm_b: FloatArray, sample_rate: int) -> SpeakerCheck:
        return await self._engine().compare_speakers(pcm_a, pcm_b, sample_rate)

    async def match_phrase(self, expected: str, heard: str) -> PhraseMatch:
        return await self._engine().match_phrase(expected, heard)

    async def detect_watermark(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        return await self._engine().detect_watermark(pcm, sample_rate)

    async def ready(self) -> bool:
        return self._service is not None and await self._service.ready()

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._service is not None:
            await self._service.aclose()
