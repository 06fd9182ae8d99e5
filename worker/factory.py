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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.i18n import N_, tr
from worker.client import HttpSpeechService
from worker.errors import ModelNotReady, SpeechError
from worker.models import resolve_asr_model, resolve_xtts_dir
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


def resolve_xtts(settings: Settings, *, model_dir: Path | None = None, progress: bool = True) -> Path:
    """Find (or download) XTTS-v2 only; blocking. Raises ``ModelUnavailable``."""
    return resolve_xtts_dir(
        model_dir or settings.model_dir,
        settings.model_cache_dir,
        tos_agreed=settings.coqui_tos_agreed,
        endpoint=settings.hf_endpoint,
        progress=progress,
    )


def resolve_local_models(
    settings: Settings, *, model_dir: Path | None = None, progress: bool = True
) -> LocalModels:
    """Find (or download) XTTS-v2 and the Whisper model; blocking. Raises ``ModelUnavailable``."""
    xtts_dir = resolve_xtts(settings, model_dir=model_dir, progress=progress)
    asr_model = resolve_asr_model(
        settings.asr_backend,
        settings.asr_model,
        settings.model_cache_dir,
        endpoint=settings.hf_endpoint,
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
        engine=settings.engine,
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
        engine=settings.engine,
        analysis=False,
    )


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

    async def match_phrase(self, expected: str, heard: str, language: str = "en") -> PhraseMatch:
        return await self._engine().match_phrase(expected, heard, language)

    async def detect_watermark(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        return await self._engine().detect_watermark(pcm, sample_rate)

    async def ready(self) -> bool:
        return self._service is not None and await self._service.ready()

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._service is not None:
            await self._service.aclose()
