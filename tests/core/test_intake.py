"""core.intake with real ffmpeg: every accepted format decodes, every bad upload gets the right refusal."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import (
    AudioTooLarge,
    AudioTooLong,
    CorruptAudio,
    EmptyAudio,
    IntakeError,
    IntakeTimeout,
    NotAudio,
    UnsupportedCodec,
)
from core.intake import (
    AudioProbe,
    decode_argv,
    decode_audio,
    decode_audio_async,
    interpret_decode,
    probe_audio,
    probe_audio_async,
)
from tests.support.audio import read_wav, write_wav

LIMITS = {"max_seconds": 120.0, "max_bytes": 20_000_000}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True, capture_output=True)


def rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


@pytest.fixture(scope="module")
def reference(speech_wav: Path) -> tuple[np.ndarray, int]:
    return read_wav(speech_wav)


@pytest.mark.parametrize("rate", [16_000, 24_000])
def test_voice_message_decodes_to_the_right_length(
    speech_ogg: Path, reference: tuple[np.ndarray, int], rate: int
) -> None:
    ref, ref_rate = reference
    audio = decode_audio(speech_ogg, sample_rate=rate, **LIMITS)
    assert audio.pcm.dtype == np.float32 and audio.pcm.ndim == 1
    assert audio.sample_rate == rate
    assert audio.duration_s == pytest.approx(ref.size / ref_rate, abs=0.03)
    assert audio.pcm.size == pytest.approx(ref.size / ref_rate * rate, abs=0.03 * rate)
    assert (audio.format_name, audio.codec_name) == ("ogg", "opus")
    assert np.max(np.abs(audio.pcm)) <= 1.0
    assert rms_db(audio.pcm) == pytest.approx(rms_db(ref), abs=1.5)


def test_bytes_and_path_give_the_same_audio(speech_ogg: Path) -> None:
    from_path = decode_audio(speech_ogg, sample_rate=16_000, **LIMITS)
    from_bytes = decode_audio(speech_ogg.read_bytes(), sample_rate=16_000, **LIMITS)
    np.testing.assert_array_equal(from_path.pcm, from_bytes.pcm)


@pytest.mark.parametrize(
    ("suffix", "codec_args", "codec"),
    [
        ("mp3", ["-c:a", "libmp3lame", "-b:a", "64k"], "mp3"),
        ("m4a", ["-c:a", "aac", "-b:a", "64k"], "aac"),
        ("webm", ["-c:a", "libopus", "-ar", "48000"], "opus"),
        ("wav", ["-c:a", "pcm_s16le", "-ac", "2"], "pcm_s16le"),
        ("flac", ["-c:a", "flac"], "flac"),
    ],
)
def test_common_formats_decode(
    speech_wav: Path,
    reference: tuple[np.ndarray, int],
    tmp_path: Path,
    suffix: str,
    codec_args: list[str],
    codec: str,
) -> None:
    ref, ref_rate = reference
    src = tmp_path / f"clip.{suffix}"
    ffmpeg("-i", str(speech_wav), *codec_args, str(src))
    audio = decode_audio(src, sample_rate=24_000, **LIMITS)
    assert audio.codec_name == codec
    assert audio.pcm.ndim == 1  # stereo mixed down
    assert audio.duration_s == pytest.approx(ref.size / ref_rate, abs=0.1)
    assert rms_db(audio.pcm) == pytest.approx(rms_db(ref), abs=1.5)


def test_video_track_is_ignored(speech_wav: Path, tmp_path: Path) -> None:
    src = tmp_path / "clip.webm"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-i", str(speech_wav), "-shortest",
           "-c:v", "libvpx", "-c:a", "libopus", "-ar", "48000", str(src))  # fmt: skip
    audio = decode_audio(src, sample_rate=16_000, **LIMITS)
    assert audio.codec_name == "opus"
    assert audio.duration_s > 5


def test_probe_reports_format_codec_and_duration(speech_ogg: Path, reference: tuple[np.ndarray, int]) -> None:
    probe = probe_audio(speech_ogg, max_bytes=LIMITS["max_bytes"])
    assert (probe.format_name, probe.codec_name, probe.sample_rate, probe.channels) == (
        "ogg",
        "opus",
        48_000,
        1,
    )
    assert probe.duration_s == pytest.approx(reference[0].size / reference[1], abs=0.03)


async def test_async_probe_and_decode(speech_ogg: Path) -> None:
    data = await asyncio.to_thread(speech_ogg.read_bytes)
    probe = await probe_audio_async(data, max_bytes=LIMITS["max_bytes"])
    assert probe.codec_name == "opus"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    audio = await decode_audio_async(speech_ogg, sample_rate=16_000, **LIMITS)
    task.cancel()
    assert audio.duration_s > 5
    assert ticks >= 3, "the event loop was blocked while ffmpeg ran"


def test_text_renamed_ogg_is_not_audio(tmp_path: Path) -> None:
    fake = tmp_path / "voice-message.ogg"
    fake.write_text("Hello! This is a text file pretending to be a voice message.\n" * 20)
    with pytest.raises(NotAudio, match="not audio I can read") as err:
        decode_audio(fake, sample_rate=16_000, **LIMITS)
    assert "voice message" in err.value.message


def test_image_is_not_audio(tmp_path: Path) -> None:
    image = tmp_path / "photo.ogg"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x32:rate=1", "-frames:v", "1", "-f", "image2", str(image))
    with pytest.raises(NotAudio):
        decode_audio(image, sample_rate=16_000, **LIMITS)


@pytest.mark.parametrize(
    "playlist",
    [
        "#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/evil.ts\n",
        "ffconcat version 1.0\nfile 'http://127.0.0.1:9/evil.ogg'\n",
    ],
)
def test_playlists_pointing_at_the_network_are_refused(tmp_path: Path, playlist: str) -> None:
    src = tmp_path / "innocent.ogg"
    src.write_text(playlist)
    with pytest.raises(NotAudio):
        decode_audio(src, sample_rate=16_000, **LIMITS)


def test_video_without_sound_is_not_audio(tmp_path: Path) -> None:
    src = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-t", "1", "-c:v", "mpeg4", str(src))
    with pytest.raises(NotAudio, match="no sound"):
        decode_audio(src, sample_rate=16_000, **LIMITS)


def test_unsupported_codec_is_named(speech_wav: Path, tmp_path: Path) -> None:
    src = tmp_path / "adpcm.wav"
    ffmpeg("-i", str(speech_wav), "-c:a", "adpcm_ms", str(src))
    with pytest.raises(UnsupportedCodec, match="adpcm_ms"):
        decode_audio(src, sample_rate=16_000, **LIMITS)


@pytest.mark.parametrize(
    ("suffix", "codec"), [("ogg", "libopus"), ("m4a", "aac"), ("mp3", "libmp3lame"), ("webm", "libopus")]
)
def test_truncated_upload_is_corrupt(speech_wav: Path, tmp_path: Path, suffix: str, codec: str) -> None:
    whole = tmp_path / f"whole.{suffix}"
    ffmpeg("-i", str(speech_wav), "-ar", "48000", "-c:a", codec, str(whole))
    data = whole.read_bytes()
    with pytest.raises(CorruptAudio, match="damaged or incomplete"):
        decode_audio(data[: int(len(data) * 0.6)], sample_rate=16_000, **LIMITS)


def test_two_hour_file_is_refused_quickly(tmp_path: Path) -> None:
    minute = tmp_path / "minute.ogg"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "60", "-c:a", "libopus", "-b:a", "6k",
           "-frame_duration", "120", str(minute))  # fmt: skip
    long = tmp_path / "two-hours.ogg"
    ffmpeg("-stream_loop", "119", "-i", str(minute), "-c", "copy", str(long))
    assert long.stat().st_size < 5_000_000
    start = time.monotonic()
    with pytest.raises(AudioTooLong) as err:
        decode_audio(long, sample_rate=16_000, **LIMITS)
    assert time.monotonic() - start < 1.0
    assert "2 h 0 min" in err.value.message and "2 min 0 s" in err.value.message


def test_cap_holds_when_the_container_understates_its_length(tmp_path: Path) -> None:
    # A chained Ogg file: ffprobe reports only the last link (6 s), ffmpeg decodes all four (24 s).
    links = []
    for i in range(4):
        links.append(tmp_path / f"link{i}.ogg")
        ffmpeg("-f", "lavfi", "-i", "sine=f=300:r=48000", "-t", "6", "-c:a", "libopus", "-b:a", "16k",
               "-serial_offset", str(1000 * (i + 1)), str(links[-1]))  # fmt: skip
    chained = b"".join(p.read_bytes() for p in links)
    assert probe_audio(chained, max_bytes=LIMITS["max_bytes"]).duration_s == pytest.approx(6, abs=0.1)
    with pytest.raises(AudioTooLong, match="longer than the limit of 10 s"):
        decode_audio(chained, sample_rate=16_000, max_seconds=10, max_bytes=LIMITS["max_bytes"])
    assert decode_audio(chained, sample_rate=16_000, **LIMITS).duration_s == pytest.approx(24, abs=0.1)


def test_decode_is_bounded_in_the_command_line() -> None:
    argv = decode_argv("file:/tmp/x", sample_rate=16_000, max_seconds=30)
    joined = " ".join(argv)
    assert "-protocol_whitelist file,pipe" in joined and "-format_whitelist ogg," in joined
    assert "-codec_whitelist opus," in joined and "-vn" in argv and "-nostdin" in argv
    assert argv[argv.index("-t") + 1] == "30.500"
    probe = AudioProbe("ogg", "opus", None, 48_000, 1)
    too_much = np.zeros(int(30.5 * 16_000), dtype="<f4").tobytes()
    with pytest.raises(AudioTooLong):
        interpret_decode(probe, too_much, "", 0, sample_rate=16_000, max_seconds=30)


def test_too_large_names_both_sizes(speech_ogg: Path) -> None:
    with pytest.raises(AudioTooLarge, match=r"kB; the limit is 10 kB"):
        decode_audio(speech_ogg, sample_rate=16_000, max_seconds=60, max_bytes=10_000)


def test_empty_inputs(tmp_path: Path, speech_wav: Path) -> None:
    with pytest.raises(EmptyAudio):
        decode_audio(b"", sample_rate=16_000, **LIMITS)
    with pytest.raises(EmptyAudio):
        decode_audio(
            write_wav(tmp_path / "nothing.wav", np.zeros(0, np.float32), 16_000), sample_rate=16_000, **LIMITS
        )
    headers_only = tmp_path / "headers.ogg"
    ffmpeg("-i", str(speech_wav), "-t", "0", "-c:a", "libopus", str(headers_only))
    with pytest.raises(EmptyAudio, match="no sound I could decode"):
        decode_audio(headers_only, sample_rate=16_000, **LIMITS)


def test_digital_silence_is_not_empty(tmp_path: Path) -> None:
    """All-zero audio decodes: judging silence is the quality gate's job, not intake's."""
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16_000 * 2, np.float32), 16_000)
    audio = decode_audio(silent, sample_rate=16_000, **LIMITS)
    assert audio.duration_s == pytest.approx(2.0) and not audio.pcm.any()


def test_timeout_kills_and_reports(speech_ogg: Path) -> None:
    start = time.monotonic()
    with pytest.raises(IntakeTimeout, match="took too long"):
        decode_audio(speech_ogg, sample_rate=16_000, timeout_s=0.001, **LIMITS)
    assert time.monotonic() - start < 1.0


def child_decoders() -> list[int]:
    """ffmpeg/ffprobe processes this test process started that are still alive (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        name = fields[0].split("(", 1)[1]
        if name in ("ffmpeg", "ffprobe") and int(fields[1].split()[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


async def test_cancelling_async_decode_kills_ffmpeg(speech_ogg: Path) -> None:
    task = asyncio.create_task(decode_audio_async(speech_ogg, sample_rate=16_000, **LIMITS))
    for _ in range(200):  # wait until ffprobe or ffmpeg is running
        await asyncio.sleep(0.002)
        if child_decoders():
            break
    task.cancel()
    start = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 1.0
    assert child_decoders() == []


def test_missing_path_is_a_member_readable_error(tmp_path: Path) -> None:
    with pytest.raises(IntakeError, match="cannot open"):
        decode_audio(tmp_path / "nope.ogg", sample_rate=16_000, **LIMITS)
