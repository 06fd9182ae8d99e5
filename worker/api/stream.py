"""``POST /v1/speech``: the service's PCM chunks as a framed HTTP stream (format in ``worker.wire``).

The first chunk is awaited before the response starts, so errors found early (busy, unknown language,
a voice from another checkpoint) are ordinary JSON errors with an HTTP status. After that, a failure
is sent as an error frame and a client that goes away closes the service's iterator, which stops the
GPU work: the response closes it in a ``finally`` that runs on completion, error and disconnect alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Final

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.audio import OUTPUT_SAMPLE_RATE, OUTPUT_SAMPLE_WIDTH
from worker.api.metrics import WorkerMetrics
from worker.errors import InternalWorkerError, SpeechError
from worker.service import SpeechService
from worker.types import SpeechRequest
from worker.wire import (
    FRAMING_VERSION,
    STREAM_MEDIA_TYPE,
    data_frame,
    end_frame,
    error_frame,
)

log = logging.getLogger("voxclone.worker.api")

UNEXPECTED_MESSAGE: Final = "The speech worker failed unexpectedly; an admin can find details in its log."
STREAM_STATUS_KEY: Final = "voxclone.stream_status"  # scope key: how a 200 stream really ended
CLIENT_CLOSED: Final = 499  # status counted for a stream whose client left before its end (as nginx logs it)

_BYTES_PER_SECOND: Final = OUTPUT_SAMPLE_RATE * OUTPUT_SAMPLE_WIDTH  # 48,000 bytes of s16 per second
STREAM_HEADERS: Final = {
    "X-Sample-Rate": str(OUTPUT_SAMPLE_RATE),
    "X-Sample-Format": "s16le",
    "X-Channels": "1",
    "X-Framing": FRAMING_VERSION,
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",  # reverse proxies must not hold chunks back
}


async def close_iterator(chunks: AsyncIterator[bytes]) -> None:
    """Close a service iterator (cancelling its work), even from a cancelled task."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except RuntimeError as exc:  # "already running": it is being torn down by a cancellation
            log.debug("speech iterator close skipped: %s", exc)


@dataclass
class StreamOutcome:
    """How a stream ended: 200 when its end frame went out, the error's status when an error frame did,
    :data:`CLIENT_CLOSED` when the client left first."""

    status: int = CLIENT_CLOSED


class PcmStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes the service's iterator, also on client disconnect.

    It leaves the stream's :class:`StreamOutcome` status in the scope (:data:`STREAM_STATUS_KEY`) for the
    request metrics: the 200 in the header says only that the stream started.
    """

    def __init__(
        self, frames: AsyncGenerator[bytes, None], chunks: AsyncIterator[bytes], outcome: StreamOutcome
    ) -> None:
        super().__init__(frames, media_type=STREAM_MEDIA_TYPE, headers=STREAM_HEADERS)
        self._frames = frames
        self._chunks = chunks
        self._outcome = outcome

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._frames.aclose()
            await close_iterator(self._chunks)
            scope[STREAM_STATUS_KEY] = self._outcome.status


async def stream_speech(
    service: SpeechService, request: SpeechRequest, metrics: WorkerMetrics, started: float
) -> PcmStreamResponse:
    """Start synthesis, wait for the first chunk, and return the streaming response."""
    first, chunks = await start_synthesis(service, request)
    metrics.first_chunk.observe(time.perf_counter() - started)
    outcome = StreamOutcome()
    return PcmStreamResponse(_frames(first, chunks, metrics, started, outcome), chunks, outcome)


async def start_synthesis(
    service: SpeechService, request: SpeechRequest
) -> tuple[bytes, AsyncIterator[bytes]]:
    """Start synthesis and wait for its first chunk (``b""`` when there is none), so that early failures
    are ordinary error responses. A failure or a cancellation before the first chunk closes the chunks."""
    try:
        chunks = service.synthesize(request)
    except SpeechError:
        raise
    except Exception as exc:
        raise unexpected("synthesis failed to start") from exc
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""
    except SpeechError:
        await close_iterator(chunks)
        raise
    except BaseException as exc:
        await close_iterator(chunks)
        if isinstance(exc, Exception):
            raise unexpected("synthesis failed before the first chunk") from exc
        raise
    return first, chunks


def unexpected(what: str) -> InternalWorkerError:
    """Log the exception being handled (``what`` failed) and return the error a client is shown."""
    log.exception(what)
    return InternalWorkerError(UNEXPECTED_MESSAGE)


async def _frames(
    first: bytes,
    chunks: AsyncIterator[bytes],
    metrics: WorkerMetrics,
    started: float,
    outcome: StreamOutcome,
) -> AsyncGenerator[bytes, None]:
    total = 0
    completed = False
    metrics.active_streams.inc()
    try:
        if first:
            total += len(first)
            yield data_frame(first)
        try:
            async for chunk in chunks:
                if chunk:
                    total += len(chunk)
                    yield data_frame(chunk)
        except SpeechError as exc:
            log.warning("synthesis failed mid-stream: %s", exc.code)
            outcome.status = exc.http_status
            yield error_frame(exc.to_json())
            return
        except Exception:
            log.exception("synthesis failed mid-stream")
            failure = InternalWorkerError("The speech worker failed in the middle of this sentence.")
            outcome.status = failure.http_status
            yield error_frame(failure.to_json())
            return
        completed = True
        yield end_frame(total)
        outcome.status = 200
    finally:
        metrics.active_streams.dec()
        metrics.observe_stream(total / _BYTES_PER_SECOND, time.perf_counter() - started, completed)
        await close_iterator(chunks)
