"""From the worker's 24 kHz mono s16le stream to discord.py's 20 ms 48 kHz stereo frames.

``StreamingSource`` is a ``discord.AudioSource`` read by discord.py's player thread; the event loop
feeds it through a bounded, thread-safe buffer and never blocks. An underrun plays silence instead of
ending playback; ``b""`` is returned only once the stream has finished and the buffer is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Final

import discord
import numpy as np

INPUT_RATE: Final = 24_000  # Hz: the worker's output
OUTPUT_RATE: Final = 48_000  # Hz: Discord voice
CHANNELS: Final = 2  # Discord voice is stereo
FRAME_MS: Final = 20  # discord.py reads one 20 ms frame per call
FRAME_SAMPLES: Final = OUTPUT_RATE * FRAME_MS // 1000  # 960 samples per channel
FRAME_BYTES: Final = FRAME_SAMPLES * CHANNELS * 2  # 3840 bytes of s16le stereo
SILENCE_FRAME: Final = b"\x00" * FRAME_BYTES
DEFAULT_BUFFER_SECONDS: Final = 10.0  # s of 48 kHz stereo audio held ahead of playback


def _halfband_taps(num_taps: int = 48) -> np.ndarray:
    """Windowed-sinc low-pass at a quarter of the output rate (12 kHz), gain 2 for zero-stuffing."""
    n = np.arange(num_taps) - (num_taps - 1) / 2
    taps = np.sinc(n / 2) * np.kaiser(num_taps, 8.0)
    return (taps / taps.sum() * 2).astype(np.float64)


class Upsampler2x:
    """Stateful 2× polyphase upsampler: chunk boundaries leave no clicks or gaps."""

    def __init__(self, num_taps: int = 48) -> None:
        taps = _halfband_taps(num_taps)
        self._even = taps[0::2]
        self._odd = taps[1::2]
        self._history = np.zeros(len(self._even) - 1, dtype=np.float64)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """float samples at 24 kHz → float samples at 48 kHz (same duration, same delay every call)."""
        if pcm.size == 0:
            return np.zeros(0, dtype=np.float64)
        x = np.concatenate([self._history, pcm.astype(np.float64)])
        self._history = x[-len(self._history) :] if len(self._history) else self._history
        even = np.convolve(x, self._even, mode="valid")
        odd = np.convolve(x, self._odd, mode="valid")
        out = np.empty(even.size * 2, dtype=np.float64)
        out[0::2] = even
        out[1::2] = odd
        return out


def to_discord_pcm(s16_mono_24k: bytes, upsampler: Upsampler2x) -> bytes:
    """24 kHz mono s16le → 48 kHz stereo s16le (interleaved)."""
    if len(s16_mono_24k) % 2:
        raise ValueError("s16le PCM must have an even number of bytes")
    mono = np.frombuffer(s16_mono_24k, dtype="<i2").astype(np.float64)
    up = np.clip(np.rint(upsampler.process(mono)), -32768, 32767).astype("<i2")
    return np.repeat(up, CHANNELS).tobytes()


class FrameBuffer:
    """Bounded byte buffer between the event loop (writer) and discord.py's player thread (reader)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity_bytes: int) -> None:
        self._loop = loop
        self._capacity = max(capacity_bytes, FRAME_BYTES)
        self._data = bytearray()
        self._lock = threading.Lock()
        self._space = asyncio.Event()
        self._space.set()
        self._finished = False
        self._closed = False
        self.frames_read = 0
        self.underruns = 0

    async def write(self, data: bytes) -> None:
        """Append, waiting (without blocking the loop) while the buffer is full."""
        view = memoryview(data)
        while view:
            if self._closed:
                return
            with self._lock:
                room = self._capacity - len(self._data)
                if room > 0:
                    take = min(room, len(view))
                    self._data += view[:take]
                    view = view[take:]
                    continue
                self._space.clear()
            await self._space.wait()

    def finish(self) -> None:
        """No more data will come: the reader ends once the buffer is drained."""
        with self._lock:
            self._finished = True

    def close(self) -> None:
        """Stop now (skip/stop/disconnect): drop what is buffered and release a waiting writer."""
        with self._lock:
            self._closed = True
            self._finished = True
            self._data.clear()
        self._wake_writer()

    def _wake_writer(self) -> None:
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._space.set)

    @property
    def buffered_seconds(self) -> float:
        with self._lock:
            return len(self._data) / (OUTPUT_RATE * CHANNELS * 2)

    def read_frame(self) -> bytes:
        """One 3840-byte frame; silence on underrun; ``b""`` when finished and drained."""
        with self._lock:
            if len(self._data) >= FRAME_BYTES:
                frame = bytes(self._data[:FRAME_BYTES])
                del self._data[:FRAME_BYTES]
            elif self._finished:
                if not self._data:
                    return b""
                frame = bytes(self._data).ljust(FRAME_BYTES, b"\x00")
                self._data.clear()
            else:
                self.underruns += 1
                return SILENCE_FRAME
            self.frames_read += 1
        self._wake_writer()
        return frame


class StreamingSource(discord.AudioSource):
    """A discord.py audio source fed from a :class:`FrameBuffer`."""

    def __init__(self, buffer: FrameBuffer) -> None:
        self.buffer = buffer

    def read(self) -> bytes:
        return self.buffer.read_frame()

    def is_opus(self) -> bool:
        return False

    def cleanup(self) -> None:
        self.buffer.close()
