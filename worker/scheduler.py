"""One thread owns the speech model; asyncio callers queue synthesis jobs and stream their chunks back.

The GPU runs one decode loop at a time, so synthesis jobs wait in a bounded queue; when it is full,
:meth:`SynthesisScheduler.submit` raises :class:`~worker.errors.WorkerBusy` at once instead of letting
the backlog (and everyone's latency) grow. Chunks travel back to the event loop through a bounded
per-request channel (``loop.call_soon_threadsafe``); a consumer that closes its stream sets the job's
cancel event, and the engine stops within one decode step.

The policy "one request at a time" lives in :meth:`SynthesisScheduler._serve` alone. Continuous batching
(issue 6) replaces it with a loop that admits queued jobs between decode steps and advances all their
``worker.xtts_gpt.SequenceState`` rows together; submission, channels and cancellation stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from worker.errors import InternalWorkerError, SpeechError, SynthesisCancelled, WorkerBusy
from worker.types import SpeechRequest
from worker.xtts import Int16Array, PreparedSpeech, StreamStats

log = logging.getLogger(__name__)

BUSY_MESSAGE = "The speech engine is busy right now: try again in a few seconds."
DEFAULT_BUFFER_CHUNKS = 64  # chunks (about a minute of audio) a slow listener may fall behind by
STALL_TIMEOUT_S = 120.0  # s: a consumer that reads nothing for this long is treated as gone
_POLL_S = 0.05  # s: how often a blocked producer re-checks cancellation

T = TypeVar("T")


class SpeechEngine(Protocol):
    """What the scheduler needs from an engine (``worker.xtts.XttsEngine`` in production)."""

    def prepare(self, request: SpeechRequest) -> PreparedSpeech: ...

    def generate(
        self, speech: PreparedSpeech, cancel: threading.Event, stats: StreamStats | None = None
    ) -> Generator[Int16Array, None, None]: ...


class _End:
    """Marks the end of a channel; carries the error that ended it, if any."""

    def __init__(self, error: SpeechError | None) -> None:
        self.error = error


class ChunkChannel(Generic[T]):
    """A bounded hand-off from one producer thread to one asyncio consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._loop = loop
        self._items: asyncio.Queue[T | _End] = asyncio.Queue()
        self._slots = threading.Semaphore(capacity)
        self._ended = False

    def put(self, item: T, cancel: threading.Event, stall_timeout_s: float = STALL_TIMEOUT_S) -> bool:
        """Hand ``item`` over, waiting while the consumer is behind; False when nobody will read it."""
        waited = 0.0
        while not self._slots.acquire(timeout=_POLL_S):
            waited += _POLL_S
            if cancel.is_set():
                return False
            if waited >= stall_timeout_s:
                log.warning("a synthesis consumer read nothing for %.0f s: cancelling it", waited)
                cancel.set()
                return False
        return self._send(item)

    def end(self, error: SpeechError | None = None) -> None:
        """No more items; the consumer raises ``error`` when given one. Idempotent."""
        if not self._ended:
            self._ended = True
            self._send(_End(error))

    def _send(self, item: T | _End) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the consumer is gone
            return False
        return True

    async def get(self) -> T | None:
        """The next item, None at the end, or the producer's error."""
        item = await self._items.get()
        if isinstance(item, _End):
            self._items.put_nowait(item)  # later calls see the end too
            if item.error is not None:
                raise item.error
            return None
        self._slots.release()
        return item


@dataclass
class SynthesisJob:
    speech: PreparedSpeech
    channel: ChunkChannel[Int16Array]
    cancel: threading.Event = field(default_factory=threading.Event)
    stats: StreamStats = field(default_factory=StreamStats)
    queued_at: float = field(default_factory=time.perf_counter)


class SynthesisStream:
    """Async iterator over one request's int16 chunks; closing it cancels the work."""

    def __init__(self, job: SynthesisJob) -> None:
        self._job = job

    @property
    def stats(self) -> StreamStats:
        return self._job.stats

    def __aiter__(self) -> SynthesisStream:
        return self

    async def __anext__(self) -> Int16Array:
        chunk = await self._job.channel.get()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def cancel(self) -> None:
        self._job.cancel.set()

    async def aclose(self) -> None:
        self.cancel()


class SynthesisScheduler:
    """Runs synthesis jobs on one worker thread, at most ``max_queue`` waiting behind the current one."""

    def __init__(
        self, engine: SpeechEngine, max_queue: int, *, buffer_chunks: int = DEFAULT_BUFFER_CHUNKS
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.engine = engine
        self.max_queue = max_queue
        self.buffer_chunks = buffer_chunks
        self._queue: queue.Queue[SynthesisJob] = queue.Queue(maxsize=max_queue)
        self._stopping = threading.Event()
        self._current: SynthesisJob | None = None
        self._thread = threading.Thread(target=self._serve, name="voxclone-synthesis", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the engine (not counting the one it is running)."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._current is not None

    def submit(self, request: SpeechRequest) -> SynthesisStream:
        """Validate ``request`` and queue it; call from the event loop that will read the stream.

        Raises the engine's validation errors (language, voice, text) or ``WorkerBusy`` right away.
        """
        if self._stopping.is_set():
            raise SynthesisCancelled("The speech engine is shutting down: try again in a moment.")
        speech = self.engine.prepare(request)
        job = SynthesisJob(speech, ChunkChannel(asyncio.get_running_loop(), self.buffer_chunks))
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise WorkerBusy(BUSY_MESSAGE, queue_depth=self.max_queue) from None
        return SynthesisStream(job)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread: cancel the running job and every waiting one."""
        self._stopping.set()
        current = self._current
        if current is not None:
            current.cancel.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.cancel.set()
            job.channel.end(SynthesisCancelled("The speech engine shut down before this request ran."))
        self._thread.join(timeout)

    def _serve(self) -> None:
        """The worker thread: one job at a time, in arrival order."""
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._current = job
            try:
                self._run(job)
            finally:
                self._current = None

    def _run(self, job: SynthesisJob) -> None:
        if job.cancel.is_set():  # the consumer left while the job was queued
            job.channel.end(SynthesisCancelled("The request was cancelled."))
            return
        try:
            with contextlib.closing(self.engine.generate(job.speech, job.cancel, job.stats)) as chunks:
                for chunk in chunks:
                    if not job.channel.put(np.ascontiguousarray(chunk), job.cancel):
                        job.cancel.set()
                        break
        except SpeechError as exc:
            job.channel.end(exc)
            return
        except Exception:
            log.exception("speech synthesis failed")
            job.channel.end(InternalWorkerError("Speech synthesis failed on the worker: try again."))
            return
        if job.cancel.is_set():
            job.stats.cancelled = True
            job.channel.end(SynthesisCancelled("The request was cancelled."))
        else:
            job.channel.end()
        log.debug(
            "synthesis done: %d tokens, %.2f s audio in %.2f s (waited %.2f s)",
            job.stats.tokens, job.stats.audio_s, job.stats.elapsed_s, job.stats.started - job.queued_at,
        )  # fmt: skip
