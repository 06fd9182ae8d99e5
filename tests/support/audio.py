"""Real test speech: espeak-ng voices, encoded the way Discord sends voice messages (OGG/Opus 48 kHz mono)."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

VOICE_MESSAGE_RATE = 48_000  # Hz: Discord voice messages are 48 kHz mono Opus


def espeak_wav(path: Path, text: str, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> Path:
    """Speak ``text`` with espeak-ng into a WAV file (22.05 kHz mono s16)."""
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return path


def to_voice_message(src: Path, dst: Path) -> Path:
    """Encode any audio file as a Discord-style voice message: OGG/Opus, mono, 48 kHz, 32 kb/s."""
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(src),
            "-ac",
            "1",
            "-ar",
            "48000",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            str(dst),
        ],
        check=True,
        capture_output=True,
    )
    return dst


def speech_message(tmp: Path, name: str, text: str, voice: str = "en-us", **kw: int) -> Path:
    """espeak-ng speech as an OGG/Opus voice message in ``tmp``."""
    wav = espeak_wav(tmp / f"{name}.wav", text, voice, **kw)
    return to_voice_message(wav, tmp / f"{name}.ogg")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as float32 mono in [-1, 1] and its sample rate."""
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        frames = w.readframes(w.getnframes())
        channels = w.getnchannels()
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    return pcm, rate


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> Path:
    """Write float32 mono PCM as a 16-bit WAV."""
    data = (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    return path
