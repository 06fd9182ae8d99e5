"""The scheduler's engine thread under continuous batching: admit, step, hand chunks over, repeat.

A slow listener's row sits out steps until it catches up (or is cancelled after ``STALL_TIMEOUT_S``); a
failure in one request's post-processing ends only that request.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from worker.errors import InternalWorkerError, SpeechError, SynthesisCancelled
from worker.serving.jobs import POLL_S, STALL_TIMEOUT_S, BatchingEngine, SynthesisJob

if TYPE_CHECKING:
    from worker.batching.synthesis import BatchSynthesis, RowOutput
    from worker.tts.speech import Int16Array

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.2  # s: how long the thread sleeps with nothing to do before re-checking shutdown


@dataclass
class _Running:
    job: SynthesisJob
    outbox: deque[Int16Array] = field(default_factory=deque)
    done: bool = False  # the engine has made every chunk; some may still wait in the outbox
    blocked_since: float | None = None


class BatchLoop:
    """Serves queued jobs ``capacity`` at a time on a batching engine."""

    def __init__(
        self,
        engine: BatchingEngine,
        jobs: queue.Queue[SynthesisJob],
        capacity: int,
        stopping: threading.Event,
        wake: threading.Event,
    ) -> None:
        self.engine = engine
        self.jobs = jobs
        self.capacity = capacity
        self.stopping = stopping
        self.wake = wake
        self.running: dict[int, _Running] = {}  # owned by the engine thread; read elsewhere via `busy`
        self._keys = itertools.count()

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def cancel_all(self) -> None:
        """Ask every running job to stop (called from another thread at shutdown)."""
        for running in list(self.running.values()):
            running.job.cancel.set()

    def run(self) -> None:
        """The engine thread's body, until the scheduler stops."""
        session: BatchSynthesis | None = None
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                if session is None and (session := self._open()) is None:
                    continue
                self._admit(session)
                self._drop_cancelled(session)
                self._deliver()
                held = {key for key, running in self.running.items() if running.outbox}
                if not any(key not in held for key in session.keys):
                    self.wake.wait(POLL_S if self.running else _IDLE_WAIT_S)
                    continue
                try:
                    outputs = session.step(held)
                except Exception:
                    log.exception("a batched synthesis step failed")
                    self._fail(
                        session, InternalWorkerError("Speech synthesis failed on the worker: try again.")
                    )
                    session = None
                    continue
                self._collect(outputs)
                self._deliver()
        except Exception:
            log.exception("the synthesis thread stopped")
        finally:
            for running in self.running.values():
                running.job.stats.cancelled = True
                running.job.channel.end(
                    SynthesisCancelled("The speech engine shut down during this request.")
                )
            self.running.clear()
            if session is not None:
                session.close()

    def _open(self) -> BatchSynthesis | None:
        """A new session; if the engine cannot open one, the queued jobs fail instead of hanging."""
        try:
            return self.engine.open_batch(self.capacity)
        except Exception:
            log.exception("the speech engine could not start a synthesis batch")
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            job.channel.end(InternalWorkerError("The speech engine could not start: try again later."))
        self.wake.wait(_IDLE_WAIT_S)
        return None

    # ----- between steps -----------------------------------------------------------------------------

    def _admit(self, session: BatchSynthesis) -> None:
        while session.free > 0:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job.cancel.is_set():  # the consumer left while the job was queued
                job.channel.end(SynthesisCancelled("The request was cancelled."))
                continue
            key = next(self._keys)
            session.add(key, job.speech, job.stats)
            self.running[key] = _Running(job)

    def _drop_cancelled(self, session: BatchSynthesis) -> None:
        for key, running in list(self.running.items()):
            if running.job.cancel.is_set():
                session.remove(key)
                running.job.stats.cancelled = True
                running.job.channel.end(SynthesisCancelled("The request was cancelled."))
                del self.running[key]

    def _collect(self, outputs: list[RowOutput]) -> None:
        for out in outputs:
            running = self.running[out.key]  # type: ignore[index]
            running.outbox.extend(out.chunks)
            if out.error is not None:
                running.job.channel.end(out.error)
                del self.running[out.key]  # type: ignore[arg-type]
            elif out.done:
                running.done = True

    def _deliver(self) -> None:
        """Move outboxes into channels as far as each listener has room; end the streams that are done."""
        now = time.perf_counter()
        for key, running in list(self.running.items()):
            job = running.job
            while running.outbox and job.channel.try_put(running.outbox[0]):
                running.outbox.popleft()
                running.blocked_since = None
            if running.outbox:
                running.blocked_since = running.blocked_since or now
                if job.channel.gone:
                    job.cancel.set()
                elif now - running.blocked_since >= STALL_TIMEOUT_S:
                    log.warning(
                        "a synthesis consumer read nothing for %.0f s: cancelling it", STALL_TIMEOUT_S
                    )
                    job.cancel.set()
            elif running.done:
                job.channel.end()
                del self.running[key]
                stats = job.stats
                log.debug(
                    "synthesis done: %d tokens, %.2f s audio in %.2f s (waited %.2f s)",
                    stats.tokens, stats.audio_s, stats.elapsed_s, stats.started - job.queued_at,
                )  # fmt: skip

    def _fail(self, session: BatchSynthesis, error: SpeechError) -> None:
        for key in session.keys:
            running = self.running.pop(key, None)  # type: ignore[call-overload]
            if running is not None:
                running.job.channel.end(error)
        session.close(reuse=False)
