"""The async client of ``voxclone worker``: a ``SpeechService`` over HTTP, with failover between workers.

URLs are tried in order. A worker that cannot be reached, times out, is still loading (``not_ready``)
or answers through a proxy with 502/504 is skipped and remembered for a short back-off, so the next
requests go straight to another one; a worker that is ``busy`` is skipped for this request only. Other
errors (bad audio, wrong token...) come back as the ``worker.errors`` the worker named. A synthesis stream
that breaks after it started raises :class:`StreamInterrupted` instead of ending quietly with half a
sentence; closing the stream early closes the HTTP response, which stops the worker's GPU work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from core.audio import OUTPUT_SAMPLE_RATE, OUTPUT_SAMPLE_WIDTH
from worker.errors import (
    InternalWorkerError,
    ModelNotReady,
    QualityRejected,
    SpeechError,
    WorkerBusy,
    WorkerUnavailable,
    error_from_json,
)
from worker.types import (
    EmbeddingResult,
    FloatArray,
    PhraseMatch,
    QualityReport,
    SpeakerCheck,
    SpeechRequest,
    Transcription,
    VoiceEmbedding,
    WatermarkResult,
)
from worker.wire import (
    FRAME_DATA,
    FRAME_END,
    FRAMING_VERSION,
    AudioBody,
    FrameDecoder,
    FrameError,
    SpeechBody,
    TranscriptionBody,
    VerifyBody,
    WirePcm,
)

log = logging.getLogger("voxclone.worker.client")

UNREACHABLE_MESSAGE: Final = (
    "The speech worker is not reachable right now. An admin should check that `voxclone worker` is running."
)
DEFAULT_BACKOFF_S: Final = 15.0  # seconds a failed worker is passed over before it is tried first again
_CONNECT_TIMEOUT_S: Final = 5.0
_PROXY_DOWN: Final = frozenset({502, 504})  # a load balancer answering for a worker that is gone
_BYTES_PER_SECOND: Final = OUTPUT_SAMPLE_RATE * OUTPUT_SAMPLE_WIDTH

_T = TypeVar("_T")
_QUALITY = TypeAdapter(QualityReport)
_TRANSCRIPTION = TypeAdapter(Transcription)
_SPEAKER = TypeAdapter(SpeakerCheck)
_PHRASE = TypeAdapter(PhraseMatch)
_WATERMARK = TypeAdapter(WatermarkResult)


class StreamInterrupted(WorkerUnavailable):
    """The worker went away in the middle of a synthesis stream (code ``worker_unavailable``)."""


@dataclass
class _Worker:
    url: str
    down_until: float = 0.0  # time.monotonic() before which the worker is tried last


class HttpSpeechService:
    """``SpeechService`` backed by one or more ``voxclone worker`` servers."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str | None,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        backoff_s: float = DEFAULT_BACKOFF_S,
    ) -> None:
        if not urls:
            raise ValueError("HttpSpeechService needs at least one worker URL")
        self._workers = [_Worker(url.rstrip("/")) for url in urls]
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(_CONNECT_TIMEOUT_S, timeout_s)),
            follow_redirects=False,
        )

    async def __aenter__(self) -> HttpSpeechService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def urls_in_backoff(self) -> list[str]:
        """Workers that failed recently and are tried only after the others."""
        now = time.monotonic()
        return [w.url for w in self._workers if w.down_until > now]

    # ---- SpeechService -------------------------------------------------------------------------

    async def check_quality(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        data = await self._post("/v1/quality", AudioBody(audio=WirePcm.from_array(pcm, sample_rate)))
        return _parse(_QUALITY, data)

    async def embed(self, pcm: FloatArray, sample_rate: int) -> EmbeddingResult:
        data = await self._post("/v1/embeddings", AudioBody(audio=WirePcm.from_array(pcm, sample_rate)))
        try:
            embedding = VoiceEmbedding.from_wire(data["embedding"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InternalWorkerError(
                "The speech worker sent a voice embedding that cannot be read."
            ) from exc
        return EmbeddingResult(embedding=embedding, quality=_parse(_QUALITY, data.get("quality")))

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        return self._synthesize(SpeechBody.from_request(request).model_dump_json().encode())

    async def transcribe(
        self, pcm: FloatArray, sample_rate: int, language: str | None = None
    ) -> Transcription:
        body = TranscriptionBody(audio=WirePcm.from_array(pcm, sample_rate), language=language)
        return _parse(_TRANSCRIPTION, await self._post("/v1/transcriptions", body))

    async def compare_speakers(self, pcm_a: FloatArray, pcm_b: FloatArray, sample_rate: int) -> SpeakerCheck:
        body = VerifyBody(
            audio_a=WirePcm.from_array(pcm_a, sample_rate), audio_b=WirePcm.from_array(pcm_b, sample_rate)
        )
        data = await self._post("/v1/verify", body)
        return _parse(_SPEAKER, data.get("speaker"))

    async def match_phrase(self, expected: str, heard: str) -> PhraseMatch:
        data = await self._post("/v1/verify", VerifyBody(expected=expected, heard=heard))
        return _parse(_PHRASE, data.get("phrase"))

    async def detect_watermark(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        data = await self._post("/v1/watermark/detect", AudioBody(audio=WirePcm.from_array(pcm, sample_rate)))
        return _parse(_WATERMARK, data)

    async def ready(self) -> bool:
        """True when at least one worker has its models loaded."""
        for worker in self._workers:
            try:
                response = await self._http.get(f"{worker.url}/readyz")
            except httpx.TransportError:
                continue
            if response.status_code == 200:
                return True
        return False

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- failover ------------------------------------------------------------------------------

    def _candidates(self) -> list[_Worker]:
        """Healthy workers in the configured order, then the ones in back-off (soonest back first)."""
        now = time.monotonic()
        healthy = [w for w in self._workers if w.down_until <= now]
        resting = sorted((w for w in self._workers if w.down_until > now), key=lambda w: w.down_until)
        return healthy + resting

    def _mark_down(self, worker: _Worker, why: str) -> None:
        worker.down_until = time.monotonic() + self._backoff_s
        log.warning(
            "speech worker %s is unavailable (%s); passing it over for %g s", worker.url, why, self._backoff_s
        )

    async def _send(self, worker: _Worker, path: str, content: bytes, stream: bool) -> httpx.Response | None:
        """One attempt; None when the worker should be skipped (it is then marked down)."""
        request = self._http.build_request(
            "POST", worker.url + path, content=content, headers={"Content-Type": "application/json"}
        )
        try:
            return await self._http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            self._mark_down(worker, f"no answer within {self._timeout_s:g} s: {type(exc).__name__}")
        except httpx.TransportError as exc:
            self._mark_down(worker, type(exc).__name__)
        return None

    async def _attempts(self, path: str, content: bytes, stream: bool) -> tuple[httpx.Response, _Worker]:
        """The first 200 response from any worker, or the error that explains why there was none."""
        busy = not_ready = None
        for worker in self._candidates():
            response = await self._send(worker, path, content, stream)
            if response is None:
                continue
            if response.status_code == 200:
                return response, worker
            if stream:
                await response.aread()
                await response.aclose()
            error = _rebuild(error_from_json(response.status_code, _json_or_none(response)))
            if isinstance(error, WorkerBusy):
                busy = error
                log.info("speech worker %s is busy; trying the next one", worker.url)
            elif isinstance(error, ModelNotReady):
                not_ready = error
                self._mark_down(worker, "models not loaded yet")
            elif response.status_code in _PROXY_DOWN and not isinstance(error, WorkerUnavailable):
                self._mark_down(worker, f"HTTP {response.status_code} from a proxy")
            else:
                raise error
        if busy is not None:
            raise WorkerBusy("Every speech worker is busy right now; try again in a few seconds.")
        if not_ready is not None:
            raise not_ready
        raise WorkerUnavailable(UNREACHABLE_MESSAGE)

    async def _post(self, path: str, body: BaseModel) -> Any:
        response, _ = await self._attempts(path, body.model_dump_json().encode(), stream=False)
        data = _json_or_none(response)
        if not isinstance(data, dict):
            raise InternalWorkerError("The speech worker answered with something that is not a JSON object.")
        return data

    async def _synthesize(self, content: bytes) -> AsyncGenerator[bytes, None]:
        response, worker = await self._attempts("/v1/speech", content, stream=True)
        try:
            if response.headers.get("x-framing") != FRAMING_VERSION:
                raise InternalWorkerError(
                    f"The speech worker at {worker.url} speaks another protocol version; "
                    "an admin should run the same voxclone version on the bot and the workers."
                )
            async for chunk in self._read_stream(response, worker):
                yield chunk
        finally:
            await response.aclose()

    async def _read_stream(self, response: httpx.Response, worker: _Worker) -> AsyncGenerator[bytes, None]:
        decoder = FrameDecoder()
        received = 0
        try:
            async for raw in response.aiter_raw():
                for frame in decoder.feed(raw):
                    if frame.kind == FRAME_DATA:
                        received += len(frame.payload)
                        yield frame.payload
                    elif frame.kind == FRAME_END:
                        sent = int(frame.json().get("bytes", -1))
                        if sent != received:
                            raise self._interrupted(worker, received, f"{sent - received} bytes missing")
                        return
                    else:
                        raise _rebuild(error_from_json(500, frame.json()))
        except httpx.TransportError as exc:
            raise self._interrupted(worker, received, type(exc).__name__) from exc
        except (FrameError, ValueError) as exc:
            raise InternalWorkerError("The speech worker sent a garbled audio stream.") from exc
        raise self._interrupted(worker, received, "connection closed before the end")

    def _interrupted(self, worker: _Worker, received: int, why: str) -> StreamInterrupted:
        self._mark_down(worker, f"stream cut: {why}")
        return StreamInterrupted(
            f"The speech worker stopped in the middle of this sentence "
            f"(after {received / _BYTES_PER_SECOND:.1f} s of audio). Please try again; "
            "if it keeps happening an admin should check that `voxclone worker` is running."
        )


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _parse(adapter: TypeAdapter[_T], data: Any) -> _T:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise InternalWorkerError("The speech worker sent a result this version cannot read.") from exc


def _rebuild(error: SpeechError) -> SpeechError:
    """Give a rebuilt ``QualityRejected`` its report back as a ``QualityReport``."""
    report = error.details.get("report")
    if isinstance(error, QualityRejected) and isinstance(report, dict):
        try:
            error.details["report"] = _QUALITY.validate_python(report)
        except ValidationError:
            log.debug("quality report in an error could not be parsed")
    return error
