"""The async client of ``voxclone worker``: a ``SpeechService`` over HTTP, with failover between workers.

URLs are tried in order. Four limits bound a request (``WORKER_*TIMEOUT_S``): connecting; the first
answer (for speech, the first audio chunk), after which the worker must still answer ``/readyz`` or lose
the request to the next one; the silence between two chunks of a stream in flight; and the worker's time
for the whole request. A worker that misses them, cannot be reached, is still loading (``not_ready``) or
answers through a proxy with 502/504 is marked unhealthy: requests go to the others while its ``/readyz``
is asked every few seconds, and the first 200 brings it back. A worker that is ``busy`` is skipped for
this request only. Other errors (bad audio, wrong token...) come back as the ``worker.errors`` the worker
named. A synthesis stream that breaks or stalls after it started raises :class:`StreamInterrupted`
instead of ending quietly with half a sentence; closing the stream early closes the HTTP response, which
stops the worker's GPU work.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from core.audio import OUTPUT_SAMPLE_RATE, OUTPUT_SAMPLE_WIDTH
from core.i18n import N_, current_locale, tr
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
    PHRASE_ADAPTER,
    QUALITY_ADAPTER,
    SPEAKER_ADAPTER,
    TRANSCRIPTION_ADAPTER,
    WATERMARK_ADAPTER,
    AudioBody,
    FrameDecoder,
    FrameError,
    SpeechBody,
    TranscriptionBody,
    VerifyBody,
    WirePcm,
)

log = logging.getLogger("voxclone.worker.client")

UNREACHABLE_MESSAGE: Final = N_(
    "The speech worker is not reachable right now. An admin should check that `voxclone worker` is running."
)
# The defaults of the WORKER_*_S settings (bot/settings.py documents each one).
DEFAULT_CONNECT_TIMEOUT_S: Final = 2.0  # s to open a TCP (and TLS) connection to a worker
DEFAULT_FIRST_CHUNK_TIMEOUT_S: Final = 1.0  # s without an answer before the worker must answer /readyz
DEFAULT_CHUNK_TIMEOUT_S: Final = 10.0  # s of silence allowed between two chunks of a stream in flight
DEFAULT_TOTAL_TIMEOUT_S: Final = 30.0  # s of the worker's time for a whole request
DEFAULT_PROBE_INTERVAL_S: Final = 5.0  # s between two /readyz probes of an unhealthy worker
PROBE_TIMEOUT_S: Final = 1.0  # s: a live worker answers /readyz in milliseconds, even under load
_PROXY_DOWN: Final = frozenset({502, 504})  # a load balancer answering for a worker that is gone
_BYTES_PER_SECOND: Final = OUTPUT_SAMPLE_RATE * OUTPUT_SAMPLE_WIDTH

_T = TypeVar("_T")


class StreamInterrupted(WorkerUnavailable):
    """The worker went away or went silent in the middle of a synthesis stream (``worker_unavailable``)."""


@dataclass
class _Worker:
    url: str
    healthy: bool = True  # an unhealthy worker is tried only after the others, until its /readyz answers
    prober: asyncio.Task[None] | None = None  # asks /readyz until the worker is back

    @property
    def shown(self) -> str:
        """The URL for logs and messages: a password in it is masked."""
        return re.sub(r"://([^:/@]*):[^/]*@", r"://\1:***@", self.url)


@dataclass
class _Budget:
    """The worker's time a request may use: waiting to connect, for answers and for chunks, not for the
    caller (a player that reads a stream at the pace it plays it is not the worker being slow)."""

    total_s: float
    spent_s: float = 0.0

    def left(self) -> float:
        return max(self.total_s - self.spent_s, 0.0)

    def spend_since(self, started: float) -> None:
        self.spent_s += time.monotonic() - started


class HttpSpeechService:
    """``SpeechService`` backed by one or more ``voxclone worker`` servers.

    ``timeout_s`` is the worker's time for a whole request (``WORKER_TIMEOUT_S``); the keyword
    arguments are the other limits, named after their settings.
    """

    def __init__(
        self,
        urls: Sequence[str],
        token: str | None,
        timeout_s: float = DEFAULT_TOTAL_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        first_chunk_timeout_s: float = DEFAULT_FIRST_CHUNK_TIMEOUT_S,
        chunk_timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
    ) -> None:
        if not urls:
            raise ValueError("HttpSpeechService needs at least one worker URL")
        limits = (timeout_s, connect_timeout_s, first_chunk_timeout_s, chunk_timeout_s, probe_interval_s)
        if min(limits) <= 0:
            raise ValueError("HttpSpeechService timeouts and probe interval must be positive")
        self._workers = [_Worker(url.rstrip("/")) for url in urls]
        self._total_s = timeout_s
        self._first_chunk_s = first_chunk_timeout_s
        self._chunk_s = chunk_timeout_s
        self._probe_interval_s = probe_interval_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            transport=transport,
            headers=headers,
            # Connecting is httpx's to time; waiting for answers and chunks is timed here, against the
            # budget, so read and write only get a backstop. No pool limit: the workers' own queues
            # answer "busy", and a request waiting for a free connection would look like a hung worker.
            timeout=httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            follow_redirects=False,
        )

    async def __aenter__(self) -> HttpSpeechService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def urls_in_backoff(self) -> list[str]:
        """Workers marked unhealthy: tried only after the others until their ``/readyz`` answers 200."""
        return [w.url for w in self._workers if not w.healthy]

    # ---- SpeechService -------------------------------------------------------------------------

    async def check_quality(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        data = await self._post("/v1/quality", AudioBody(audio=WirePcm.from_array(pcm, sample_rate)))
        return _parse(QUALITY_ADAPTER, data)

    async def embed(self, pcm: FloatArray, sample_rate: int) -> EmbeddingResult:
        data = await self._post("/v1/embeddings", AudioBody(audio=WirePcm.from_array(pcm, sample_rate)))
        try:
            embedding = VoiceEmbedding.from_wire(data["embedding"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InternalWorkerError(
                "The speech worker sent a voice embedding that cannot be read."
            ) from exc
        return EmbeddingResult(embedding=embedding, quality=_parse(QUALITY_ADAPTER, data.get("quality")))

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        return self._synthesize(SpeechBody.from_request(request).model_dump_json().encode())

    async def transcribe(
        self, pcm: FloatArray, sample_rate: int, language: str | None = None
    ) -> Transcription:
        body = TranscriptionBody(audio=WirePcm.from_array(pcm, sample_rate), language=language)
        return _parse(TRANSCRIPTION_ADAPTER, await self._post("/v1/transcriptions", body))

    async def compare_speakers(self, pcm_a: FloatArray, pcm_b: FloatArray, sample_rate: int) -> SpeakerCheck:
        body = VerifyBody(
            audio_a=WirePcm.from_array(pcm_a, sample_rate), audio_b=WirePcm.from_array(pcm_b, sample_rate)
        )
        data = await self._post("/v1/verify", body)
        return _parse(SPEAKER_ADAPTER, data.get("speaker"))

    async def match_phrase(self, expected: str, heard: str, language: str = "en") -> PhraseMatch:
        data = await self._post("/v1/verify", VerifyBody(expected=expected, heard=heard, language=language))
        return _parse(PHRASE_ADAPTER, data.get("phrase"))

    async def detect_watermark(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        data = await self._post("/v1/watermark/detect", AudioBody(audio=WirePcm.from_array(pcm, sample_rate)))
        return _parse(WATERMARK_ADAPTER, data)

    async def ready(self) -> bool:
        """True when at least one worker has its models loaded (asked of them all at once)."""
        return any(await asyncio.gather(*(self._probe(worker) for worker in self._workers)))

    async def aclose(self) -> None:
        probers = [w.prober for w in self._workers if w.prober is not None]
        for prober in probers:
            prober.cancel()
        await asyncio.gather(*probers, return_exceptions=True)
        await self._http.aclose()

    # ---- health --------------------------------------------------------------------------------

    def _candidates(self) -> list[_Worker]:
        """Healthy workers in the configured order, then the unhealthy ones: a last resort."""
        return [w for w in self._workers if w.healthy] + [w for w in self._workers if not w.healthy]

    def _mark_down(self, worker: _Worker, why: str) -> None:
        """Send requests elsewhere until the worker's ``/readyz`` answers 200 again."""
        worker.healthy = False
        log.warning(
            "speech worker %s is unhealthy (%s); requests go to the other workers, and its /readyz is "
            "asked every %g s",
            worker.shown,
            why,
            self._probe_interval_s,
        )
        if worker.prober is None or worker.prober.done():
            worker.prober = asyncio.get_running_loop().create_task(self._probe_back(worker))

    def _mark_up(self, worker: _Worker) -> None:
        """A worker that answered a request is healthy, whatever its probe thought."""
        worker.healthy = True
        if worker.prober is not None:
            worker.prober.cancel()
            worker.prober = None

    async def _probe_back(self, worker: _Worker) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            if await self._probe(worker):
                worker.healthy = True
                log.warning("speech worker %s answers /readyz again; it gets requests again", worker.shown)
                return

    async def _probe(self, worker: _Worker) -> bool:
        """Whether the worker answers ``/readyz`` with 200 within ``PROBE_TIMEOUT_S``."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                response = await self._http.get(f"{worker.url}/readyz", timeout=PROBE_TIMEOUT_S)
        except (TimeoutError, httpx.HTTPError):
            return False
        return response.status_code == 200

    # ---- failover ------------------------------------------------------------------------------

    async def _attempts(
        self, path: str, content: bytes, stream: bool, budget: _Budget
    ) -> tuple[httpx.Response, _Worker]:
        """The first 200 response from any worker, or the error that explains why there was none."""
        busy = not_ready = None
        for worker in self._candidates():
            if budget.left() <= 0:
                break
            response = await self._exchange(worker, path, content, stream, budget)
            if response is None:
                continue
            if response.status_code == 200:
                self._mark_up(worker)
                return response, worker
            if stream:
                await response.aread()
                await response.aclose()
            error = _rebuild(error_from_json(response.status_code, _json_or_none(response)))
            if isinstance(error, WorkerBusy):
                busy = error
                log.info("speech worker %s is busy; trying the next one", worker.shown)
            elif isinstance(error, ModelNotReady):
                not_ready = error
                self._mark_down(worker, "models not loaded yet")
            elif response.status_code in _PROXY_DOWN and not isinstance(error, WorkerUnavailable):
                self._mark_down(worker, f"HTTP {response.status_code} from a proxy")
            else:
                raise error
        if busy is not None:
            raise WorkerBusy(tr("Every speech worker is busy right now; try again in a few seconds."))
        if not_ready is not None:
            raise not_ready
        if budget.left() <= 0:
            raise WorkerUnavailable(self._too_slow_message())
        raise WorkerUnavailable(tr(UNREACHABLE_MESSAGE))

    async def _exchange(
        self, worker: _Worker, path: str, content: bytes, stream: bool, budget: _Budget
    ) -> httpx.Response | None:
        """One attempt; None when the worker should be skipped (it is then marked down)."""
        request = self._http.build_request(
            "POST",
            worker.url + path,
            content=content,
            # The worker writes its refusals and quality reasons in the member's language.
            headers={"Content-Type": "application/json", "Accept-Language": current_locale()},
        )
        sending = asyncio.ensure_future(self._http.send(request, stream=stream))
        answered = False
        try:
            if await self._answered_while_alive(worker, sending, budget):
                answered = True
                return sending.result()
        except httpx.TimeoutException as exc:
            self._mark_down(worker, f"no connection within the timeout: {type(exc).__name__}")
        except httpx.TransportError as exc:
            self._mark_down(worker, type(exc).__name__)
        finally:
            if not answered:
                await _abandon(sending)
        return None

    async def _answered_while_alive(
        self, worker: _Worker, sending: asyncio.Future[httpx.Response], budget: _Budget
    ) -> bool:
        """Wait for ``sending`` while the worker answers ``/readyz`` after every ``first_chunk_timeout_s``
        of silence: True once it is done (well or not); False when the worker is hung (marked down)."""
        began = time.monotonic()
        while True:
            started = time.monotonic()
            await asyncio.wait({sending}, timeout=min(self._first_chunk_s, budget.left()))
            budget.spend_since(started)
            if sending.done():
                return True
            if budget.left() <= 0:
                self._mark_down(worker, f"no answer within WORKER_TIMEOUT_S ({self._total_s:g} s)")
                raise WorkerUnavailable(self._too_slow_message())
            started = time.monotonic()
            probe = asyncio.ensure_future(self._probe(worker))
            either: set[asyncio.Future[Any]] = {sending, probe}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                budget.spend_since(started)
                await _abandon(probe)
            if sending.done():
                return True
            if not probe.result():
                silent = time.monotonic() - began
                self._mark_down(
                    worker, f"no answer in {silent:.1f} s, nor from /readyz in {PROBE_TIMEOUT_S:g} s"
                )
                return False
            log.debug("speech worker %s is slow but alive; still waiting", worker.shown)

    def _too_slow_message(self) -> str:
        return tr(
            "The speech workers are too slow right now (no answer within {seconds} s). "
            "Try again in a moment; if it keeps happening an admin should check the workers.",
            seconds=format(self._total_s, "g"),
        )

    async def _post(self, path: str, body: BaseModel) -> Any:
        budget = _Budget(self._total_s)
        response, _ = await self._attempts(path, body.model_dump_json().encode(), stream=False, budget=budget)
        data = _json_or_none(response)
        if not isinstance(data, dict):
            raise InternalWorkerError("The speech worker answered with something that is not a JSON object.")
        return data

    # ---- streams -------------------------------------------------------------------------------

    async def _synthesize(self, content: bytes) -> AsyncGenerator[bytes, None]:
        budget = _Budget(self._total_s)
        response, worker = await self._attempts("/v1/speech", content, stream=True, budget=budget)
        try:
            if response.headers.get("x-framing") != FRAMING_VERSION:
                raise InternalWorkerError(
                    f"The speech worker at {worker.shown} speaks another protocol version; "
                    "an admin should run the same voxclone version on the bot and the workers."
                )
            async for chunk in self._read_stream(response, worker, budget):
                yield chunk
        finally:
            await response.aclose()

    async def _read_stream(
        self, response: httpx.Response, worker: _Worker, budget: _Budget
    ) -> AsyncGenerator[bytes, None]:
        decoder = FrameDecoder()
        received = 0
        raw_chunks = response.aiter_raw()
        try:
            while (raw := await self._next_raw(raw_chunks, worker, received, budget)) is not None:
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
        finally:
            await _aclose(raw_chunks)
        raise self._interrupted(worker, received, "connection closed before the end")

    async def _next_raw(
        self, raw_chunks: AsyncIterator[bytes], worker: _Worker, received: int, budget: _Budget
    ) -> bytes | None:
        """The next bytes of the stream, None at its end. A worker silent for ``chunk_timeout_s`` (or
        past the budget) has stalled: the stream fails at once rather than hang the player."""
        wait = min(self._chunk_s, budget.left())
        started = time.monotonic()
        try:
            async with asyncio.timeout(wait):
                return await anext(raw_chunks)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            stall = (
                f"no audio for {wait:g} s" if wait >= self._chunk_s else f"over {self._total_s:g} s in all"
            )
            raise self._interrupted(worker, received, stall, tell=True) from None
        finally:
            budget.spend_since(started)

    def _interrupted(
        self, worker: _Worker, received: int, why: str, *, tell: bool = False
    ) -> StreamInterrupted:
        """Mark the worker down; the error a member sees (``why`` in it when ``tell``)."""
        self._mark_down(worker, f"stream cut: {why}")
        said = f"{why}, " if tell else ""
        return StreamInterrupted(
            tr(
                "The speech worker stopped in the middle of this sentence "
                "({reason}after {seconds} s of audio). Please try again; "
                "if it keeps happening an admin should check that `voxclone worker` is running.",
                reason=said,
                seconds=format(received / _BYTES_PER_SECOND, ".1f"),
            )
        )


async def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it still runs and wait for it; close a response it made that nobody will read."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if task.cancelled() or task.exception() is not None:
        return
    result = task.result()
    if isinstance(result, httpx.Response):
        await result.aclose()


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


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
            error.details["report"] = QUALITY_ADAPTER.validate_python(report)
        except ValidationError:
            log.debug("quality report in an error could not be parsed")
    return error
