"""One thread owns the speech model; asyncio callers queue synthesis jobs and stream their chunks back.

The queue is bounded (:class:`~worker.errors.WorkerBusy` when full); an engine that can batch is served by
:mod:`worker.serving.loop`, any other one job at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import TYPE_CHECKING

import numpy as np

from core.i18n import N_, tr
from worker.errors import InternalWorkerError, SpeechError, SynthesisCancelled, WorkerBusy
from worker.serving.jobs import BatchingEngine, ChunkChannel, SpeechEngine, SynthesisJob
from worker.serving.loop import BatchLoop
from worker.tts.speech import Int16Array, StreamStats
from worker.types import SpeechRequest

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

BUSY_MESSAGE = N_("The speech engine is busy right now: try again in a few seconds.")
DEFAULT_BUFFER_CHUNKS = 64  # chunks (about a minute of audio) a slow listener may fall behind by


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
            raise SynthesisCancelled(tr("The speech engine is shutting down: try again in a moment."))
        speech = self.engine.prepare(request)
        channel = ChunkChannel[Int16Array](asyncio.get_running_loop(), self.buffer_chunks, self._wake.set)
        job = SynthesisJob(speech, channel, notify=self._wake.set)
        with self._submit_lock:
            # Room for ``max_queue`` waiting jobs beyond those the engine will admit as soon as it looks.
            depth = self._queue.qsize()
            if depth >= self.max_queue + self._free_rows():
                raise WorkerBusy(tr(BUSY_MESSAGE), queue_depth=depth, max_queue=self.max_queue)
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
