"""One thread owns the speech model; asyncio callers queue synthesis jobs and stream their chunks back.

Jobs wait in a bounded queue; when it is full, :meth:`SynthesisScheduler.submit` raises
:class:`~worker.errors.WorkerBusy` at once instead of letting the backlog (and everyone's latency) grow.
Chunks travel back to the event loop through a bounded per-request channel
(``loop.call_soon_threadsafe``); a consumer that closes its stream sets the job's cancel event, and
the engine stops that request within one decode step.

An engine that can batch (``XttsEngine``) is served by continuous batching (:mod:`worker.batch_serve`):
up to ``max_batch`` requests decode together, joining and leaving between steps. Any other engine is
served one job at a time, in arrival order, by :meth:`SynthesisScheduler._serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from worker.errors import InternalWorkerError, SpeechError, SynthesisCancelled, WorkerBusy
from worker.types import SpeechRequest
from worker.xtts import Int16Array, PreparedSpeech, StreamStats

if TYPE_CHECKING:
    from worker.batch import BatchSynthesis
    from worker.batch_serve import BatchLoop

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


@runtime_checkable
class BatchingEngine(SpeechEngine, Protocol):
    """An engine that can also decode several requests together (continuous batching)."""

    @property
    def default_max_batch(self) -> int: ...

    def open_batch(self, capacity: int) -> BatchSynthesis: ...


def _nothing() -> None:
    return None


class _End:
    """Marks the end of a channel; carries the error that ended it, if any."""

    def __init__(self, error: SpeechError | None) -> None:
        self.error = error


class ChunkChannel(Generic[T]):
    """A bounded hand-off from one producer thread to one asyncio consumer."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, capacity: int, on_take: Callable[[], None] = _nothing
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._loop = loop
        self._items: asyncio.Queue[T | _End] = asyncio.Queue()
        self._slots = threading.Semaphore(capacity)
        self._ended = False
        self._on_take = on_take  # tells the producer a slot came free
        self.gone = False  # the consumer's event loop is closed: nobody will read

    def try_put(self, item: T) -> bool:
        """Hand ``item`` over if the consumer has room, without waiting; False when full or gone."""
        return self._slots.acquire(blocking=False) and self._send(item)

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
            self.gone = True
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
        self._on_take()
        return item


@dataclass
class SynthesisJob:
    speech: PreparedSpeech
    channel: ChunkChannel[Int16Array]
    cancel: threading.Event = field(default_factory=threading.Event)
    stats: StreamStats = field(default_factory=StreamStats)
    queued_at: float = field(default_factory=time.perf_counter)
    notify: Callable[[], None] = _nothing  # wakes the engine thread (a cancel needs no poll to be seen)


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
        self._job.notify()

    async def aclose(self) -> None:
        self.cancel()


class SynthesisScheduler:
    """Runs synthesis on one worker thread: up to ``max_batch`` at once, ``max_queue`` more waiting."""

    def __init__(
        self,
        engine: SpeechEngine,
        max_queue: int,
        *,
        buffer_chunks: int = DEFAULT_BUFFER_CHUNKS,
        max_batch: int | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        batching = isinstance(engine, BatchingEngine)
        if max_batch is not None and (max_batch < 1 or (max_batch > 1 and not batching)):
            raise ValueError("max_batch must be at least 1, and 1 for an engine that cannot batch")
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max_batch or (engine.default_max_batch if batching else 1)  # type: ignore[attr-defined]
        self.buffer_chunks = buffer_chunks
        self._queue: queue.Queue[SynthesisJob] = queue.Queue()  # bounded by submit()
        self._submit_lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set on new work, a freed channel slot, a cancel, shutdown
        self._current: SynthesisJob | None = None
        self._batch: BatchLoop | None = None
        target = self._serve
        if batching:
            from worker.batch_serve import BatchLoop

            self._batch = BatchLoop(engine, self._queue, self.max_batch, self._stopping, self._wake)  # type: ignore[arg-type]
            target = self._batch.run
        self._thread = threading.Thread(target=target, name="voxclone-synthesis", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the engine (not counting those it is running)."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        """Whether the engine is working on (or still handing over) at least one job."""
        if self._batch is not None:
            return self._batch.busy
        return self._current is not None

    def _free_rows(self) -> int:
        """Jobs the engine can start right now without waiting for another to finish."""
        in_use = len(self._batch.running) if self._batch is not None else int(self._current is not None)
        return max(0, self.max_batch - in_use)

    def submit(self, request: SpeechRequest) -> SynthesisStream:
        """Validate ``request`` and queue it; call from the event loop that will read the stream.

        Raises the engine's validation errors (language, voice, text) or ``WorkerBusy`` right away.
        """
        if self._stopping.is_set():
            raise SynthesisCancelled("The speech engine is shutting down: try again in a moment.")
        speech = self.engine.prepare(request)
        channel = ChunkChannel[Int16Array](asyncio.get_running_loop(), self.buffer_chunks, self._wake.set)
        job = SynthesisJob(speech, channel, notify=self._wake.set)
        with self._submit_lock:
            # Room for ``max_queue`` waiting jobs beyond those the engine will admit as soon as it looks.
            depth = self._queue.qsize()
            if depth >= self.max_queue + self._free_rows():
                raise WorkerBusy(BUSY_MESSAGE, queue_depth=depth, max_queue=self.max_queue)
            self._queue.put_nowait(job)
        self._wake.set()
        return SynthesisStream(job)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread: cancel the running jobs and every waiting one."""
        self._stopping.set()
        current = self._current
        if current is not None:
            current.cancel.set()
        if self._batch is not None:
            self._batch.cancel_all()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.cancel.set()
            job.channel.end(SynthesisCancelled("The speech engine shut down before this request ran."))
        self._wake.set()
        self._thread.join(timeout)

    def _serve(self) -> None:
        """The worker thread for an engine that cannot batch: one job at a time, in arrival order."""
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
