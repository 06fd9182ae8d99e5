"""Worker PCM → Discord frames: exact durations, chunk-invariant resampling, bounded buffering, Opus."""

from __future__ import annotations

import asyncio
import threading
import time

import discord.opus
import numpy as np
import pytest

from bot.pcm import (
    FRAME_BYTES,
    SILENCE_FRAME,
    FrameBuffer,
    StreamingSource,
    Upsampler2x,
    to_discord_pcm,
)


def _tone(seconds: float, freq: float = 440.0, rate: int = 24_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")


def test_upsampling_is_independent_of_chunking() -> None:
    pcm = _tone(0.5).astype(np.float64)
    whole = Upsampler2x().process(pcm)
    up = Upsampler2x()
    rng = np.random.default_rng(1)
    pieces, i = [], 0
    while i < pcm.size:
        n = int(rng.integers(1, 700))
        pieces.append(up.process(pcm[i : i + n]))
        i += n
    assert np.allclose(np.concatenate(pieces), whole)
    assert whole.size == 2 * pcm.size


def test_upsampled_tone_keeps_its_pitch_and_level() -> None:
    pcm = _tone(1.0, freq=1000.0)
    out = np.frombuffer(to_discord_pcm(pcm.tobytes(), Upsampler2x()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(out[:, 0], out[:, 1])
    left = out[1000:, 0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(left))
    peak_hz = np.argmax(spectrum) * 48_000 / left.size
    assert abs(peak_hz - 1000) < 5
    assert abs(np.sqrt(np.mean(left**2)) / (0.5 * 32767 / np.sqrt(2)) - 1) < 0.02


def test_odd_byte_count_is_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        to_discord_pcm(b"\x00\x01\x02", Upsampler2x())


async def test_frames_add_up_to_the_stream_and_encode_as_opus() -> None:
    loop = asyncio.get_running_loop()
    buf = FrameBuffer(loop, capacity_bytes=FRAME_BYTES * 10)  # small: the writer must wait for the reader
    source = StreamingSource(buf)
    seconds = 1.37
    pcm = _tone(seconds)
    frames: list[bytes] = []
    done = threading.Event()

    def player() -> None:  # what discord.py's AudioPlayer thread does
        while True:
            underruns = buf.underruns
            frame = source.read()
            if not frame:
                break
            if buf.underruns == underruns:  # an underrun's silence is filler, not stream audio
                frames.append(frame)
            else:
                time.sleep(0.001)
        done.set()

    thread = threading.Thread(target=player)
    thread.start()
    up = Upsampler2x()
    for i in range(0, pcm.size, 2_400):  # 100 ms chunks like a worker stream
        await buf.write(to_discord_pcm(pcm[i : i + 2_400].tobytes(), up))
    buf.finish()
    await asyncio.to_thread(done.wait, 10)
    thread.join()
    assert all(len(f) == FRAME_BYTES for f in frames)
    expected_frames = int(np.ceil(seconds * 1000 / 20))
    assert abs(len(frames) - expected_frames) <= 1
    assert buf.frames_read == len(frames)
    encoder = discord.opus.Encoder()
    packets = [encoder.encode(f, 960) for f in frames]
    assert all(0 < len(p) < 1276 for p in packets)


async def test_underrun_plays_silence_and_close_ends_playback() -> None:
    loop = asyncio.get_running_loop()
    buf = FrameBuffer(loop, capacity_bytes=FRAME_BYTES * 4)
    source = StreamingSource(buf)
    assert source.read() == SILENCE_FRAME
    assert buf.underruns == 1
    await buf.write(b"\x01" * (FRAME_BYTES + 10))
    assert source.read() == b"\x01" * FRAME_BYTES
    source.cleanup()
    assert source.read() == b""


async def test_close_releases_a_waiting_writer() -> None:
    loop = asyncio.get_running_loop()
    buf = FrameBuffer(loop, capacity_bytes=FRAME_BYTES)
    writer = asyncio.create_task(buf.write(b"\x00" * FRAME_BYTES * 5))
    await asyncio.sleep(0.05)
    assert not writer.done()
    buf.close()
    await asyncio.wait_for(writer, 1)
