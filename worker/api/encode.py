"""Speech as an encoded file, streamed: 24 kHz s16le chunks through ffmpeg into mp3, opus, aac, flac or wav.

The formats and MIME types are OpenAI's (``opus`` is Ogg Opus, ``aac`` is ADTS, ``pcm`` raw 24 kHz
16-bit mono little-endian). ffmpeg runs as a pipe: synthesis chunks are written to its stdin as they
come and whatever it has encoded is sent on at once (``-flush_packets 1``), so the first bytes leave
before synthesis ends. ``speed`` is applied by ffmpeg's pitch-keeping ``atempo`` filter. Only PCM
that the engine made (and watermarked) goes in; ffmpeg parses nothing from outside here.

The engine's watermark survives the encoding: perth's mean confidence on espeak-ng speech marked, then
encoded and decoded again, was 1.0 for mp3 (64 kb/s), aac (64 kb/s) and flac, 0.95 for opus (32 kb/s);
time-stretched by atempo 1.0 at speed 0.8 and 1.25, 0.998 at 0.5, 0.93 at 2.0 and 0.61 at 4.0 (detected
from 0.5: the mark weakens towards the top of the range). Measured on the 2-core dev CPU, 2026-12-05.

A failure after the first bytes cannot become an HTTP status any more: the response is then left
incomplete, so the server closes the connection and the client sees a cut stream, never a file that
merely looks finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Final

import anyio
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.audio import OUTPUT_SAMPLE_RATE
from worker.api.stream import close_iterator
from worker.errors import InvalidRequest

log = logging.getLogger("voxclone.worker.api")

READ_BYTES: Final = 16 * 1024  # bytes asked of ffmpeg's stdout at a time (it answers with what it has)
MIN_SPEED: Final = 0.25  # OpenAI's range for `speed`
MAX_SPEED: Final = 4.0
_ATEMPO_RANGE: Final = (0.5, 2.0)  # what one atempo filter takes in ffmpeg 5; chained for the rest
OGG_PAGE_US: Final = 200_000  # µs of Opus per Ogg page: the muxer's default (1 s) would hold bytes back


@dataclass(frozen=True)
class AudioFormat:
    """One of OpenAI's ``response_format`` values: its MIME type and ffmpeg's output options."""

    name: str
    media_type: str
    ffmpeg_output: tuple[str, ...]


FORMATS: Final = {
    f.name: f
    for f in (
        AudioFormat("mp3", "audio/mpeg", ("-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3")),
        AudioFormat(
            "opus",
            "audio/ogg; codecs=opus",
            ("-c:a", "libopus", "-b:a", "32k", "-page_duration", str(OGG_PAGE_US), "-f", "ogg"),
        ),
        AudioFormat("aac", "audio/aac", ("-c:a", "aac", "-b:a", "64k", "-f", "adts")),
        AudioFormat("flac", "audio/flac", ("-c:a", "flac", "-f", "flac")),
        AudioFormat("wav", "audio/wav", ("-c:a", "pcm_s16le", "-f", "wav")),
        AudioFormat("pcm", "audio/pcm", ("-c:a", "pcm_s16le", "-f", "s16le")),
    )
}
SUPPORTED_FORMATS: Final = tuple(FORMATS)


class StreamAborted(Exception):
    """The stream failed after its first bytes were sent; the response must be left incomplete."""


def atempo_chain(speed: float) -> list[str]:
    """``atempo`` filters whose product is ``speed`` (each within what one filter takes)."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidRequest(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}.")
    low, high = _ATEMPO_RANGE
    factors: list[float] = []
    rest = speed
    while rest > high:
        factors.append(high)
        rest /= high
    while rest < low:
        factors.append(low)
        rest /= low
    factors.append(rest)
    return [f"atempo={f:.6g}" for f in factors if abs(f - 1.0) > 1e-9]


def ffmpeg_argv(fmt: AudioFormat, speed: float) -> list[str]:
    """ffmpeg reading 24 kHz mono s16le on stdin and writing ``fmt`` on stdout, packet by packet."""
    filters = atempo_chain(speed)
    return [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
        # No probing: the input is known, and probing would wait for 5 s of audio before any output.
        "-probesize", "32", "-analyzeduration", "0",
        "-f", "s16le", "-ar", str(OUTPUT_SAMPLE_RATE), "-ac", "1", "-i", "pipe:0",
        *(["-filter:a", ",".join(filters)] if filters else []),
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        *fmt.ffmpeg_output, "-flush_packets", "1", "pipe:1",
    ]  # fmt: skip


async def encode(
    first: bytes, chunks: AsyncIterator[bytes], fmt: AudioFormat, speed: float
) -> AsyncGenerator[bytes, None]:
    """The encoded bytes of ``first`` and then ``chunks``, as ffmpeg makes them; raises StreamAborted."""
    if fmt.name == "pcm" and speed == 1.0:  # already what was asked for: no process in between
        async for data in _passthrough(first, chunks):
            yield data
        return
    proc = await asyncio.create_subprocess_exec(
        *ffmpeg_argv(fmt, speed),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so killing it never reaches the worker
    )
    feeder = asyncio.create_task(_feed(proc, first, chunks))
    stdout = proc.stdout
    try:
        if stdout is None:
            raise RuntimeError("ffmpeg was started without a stdout pipe")
        while data := await stdout.read(READ_BYTES):
            yield data
        await feeder  # a synthesis failure surfaces here
        stderr = await proc.stderr.read() if proc.stderr is not None else b""
        if await proc.wait() != 0:
            log.error("ffmpeg failed encoding %s: %s", fmt.name, stderr.decode("utf-8", "replace")[-500:])
            raise StreamAborted(f"ffmpeg exited with status {proc.returncode}")
    finally:
        feeder.cancel()
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            _kill(proc)
            await proc.wait()


async def _passthrough(first: bytes, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    if first:
        yield first
    try:
        async for chunk in chunks:
            if chunk:
                yield chunk
    except Exception as exc:
        log.warning("synthesis failed mid-stream: %s", getattr(exc, "code", type(exc).__name__))
        raise StreamAborted("synthesis failed mid-stream") from exc


async def _feed(proc: asyncio.subprocess.Process, first: bytes, chunks: AsyncIterator[bytes]) -> None:
    """Write the synthesis into ffmpeg's stdin, then close it; on failure kill ffmpeg and raise."""
    stdin = proc.stdin
    if stdin is None:
        raise RuntimeError("ffmpeg was started without a stdin pipe")
    try:
        stdin.write(first)
        await stdin.drain()
        async for chunk in chunks:
            stdin.write(chunk)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise StreamAborted("ffmpeg stopped reading") from exc
    except Exception as exc:
        log.warning("synthesis failed mid-stream: %s", getattr(exc, "code", type(exc).__name__))
        _kill(proc)  # no tidy ending: what ffmpeg would flush now would look like a whole file
        raise StreamAborted("synthesis failed mid-stream") from exc
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class EncodedStreamResponse(StreamingResponse):
    """Streams ``body``; always closes it and the synthesis ``chunks`` (client gone, failure or done).

    On :class:`StreamAborted` the response is left without its final empty body message: the server
    then closes the connection, which tells the client the file is incomplete.
    """

    def __init__(
        self, body: AsyncGenerator[bytes, None], chunks: AsyncIterator[bytes], media_type: str
    ) -> None:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type=media_type, headers=headers)
        self._body = body
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except StreamAborted as exc:
            log.warning("speech stream cut: %s", exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._body.aclose()
            await close_iterator(self._chunks)


__all__ = [
    "FORMATS",
    "MAX_SPEED",
    "MIN_SPEED",
    "SUPPORTED_FORMATS",
    "AudioFormat",
    "EncodedStreamResponse",
    "StreamAborted",
    "atempo_chain",
    "encode",
    "ffmpeg_argv",
]
