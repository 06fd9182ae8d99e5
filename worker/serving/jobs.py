"""Synthesis jobs and what carries their chunks back: shared by the scheduler and the batch loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

from worker.errors import SpeechError
from worker.tts.speech import Int16Array, PreparedSpeech, StreamStats
from worker.types import SpeechRequest

if TYPE_CHECKING:
    from worker.batching.synthesis import BatchSynthesis

log = logging.getLogger(__name__)

STALL_TIMEOUT_S = 120.0  # s: a consumer that reads nothing for this long is treated as gone
POLL_S = 0.05  # s: how often a blocked producer re-checks cancellation

T = TypeVar("T")


class SpeechEngine(Protocol):
    """What the scheduler needs from an engine (``worker.serving.engine.XttsEngine`` in production)."""

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
        while not self._slots.acquire(timeout=POLL_S):
            waited += POLL_S
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
