"""Members' uploads never land on disk: intake reads them from memory, even when the bot is killed mid-read.

The bot process is a child here, with a private TMPDIR; a stand-in ffprobe/ffmpeg on its PATH stops
itself as it starts, so the kill -9 comes while the upload is being read, every time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core import intake
from core.errors import CorruptAudio, NotAudio
from core.intake import decode_audio, decode_audio_async, probe_audio, sweep_stale_intake_dirs
from tests.support.audio import speech_message

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"max_seconds": 120.0, "max_bytes": 20_000_000}
CHILD_TIMEOUT_S = 30.0

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from core.intake import decode_audio_async

    data = Path(sys.argv[1]).read_bytes()  # what Discord handed the bot: bytes in memory
    asyncio.run(decode_audio_async(data, sample_rate=24_000, max_seconds=120, max_bytes=20_000_000))
    print("decoded")
    """
)

# Announces its pid, stops itself (SIGSTOP) until the test kills it, then would run the real program.
SHIM = '#!/bin/sh\necho $$ > "{marker}"\nkill -STOP $$\nexec "{real}" "$@"\n'


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("intake-clip")
    return speech_message(folder, "consent", "please clone my voice, the quick brown fox jumps over the dog")


def _wait_for(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.01)
    raise TimeoutError(f"{path.name} did not appear")


@pytest.mark.parametrize("stalls", ["ffprobe", "ffmpeg"])
def test_kill_9_while_reading_an_upload_leaves_nothing_on_disk(
    clip: Path, tmp_path: Path, stalls: str
) -> None:
    private_tmp, shims, marker = tmp_path / "tmp", tmp_path / "bin", tmp_path / "marker"
    private_tmp.mkdir()
    shims.mkdir()
    real = shutil.which(stalls)
    assert real is not None
    shim = shims / stalls
    shim.write_text(SHIM.format(marker=marker, real=real))
    shim.chmod(0o755)
    env = {
        **os.environ,
        "TMPDIR": str(private_tmp),
        "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    bot = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(clip)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader = None
    try:
        reader = int(_wait_for(marker, CHILD_TIMEOUT_S))  # the upload is being read right now
        bot.send_signal(signal.SIGKILL)
        bot.communicate(timeout=CHILD_TIMEOUT_S)
        assert bot.returncode == -signal.SIGKILL
    finally:
        if bot.returncode is None:
            bot.kill()
            bot.communicate()
        if reader is not None:
            os.kill(reader, signal.SIGKILL)  # the stopped reader, in its own session
    left = sorted(str(p.relative_to(private_tmp)) for p in private_tmp.rglob("*"))
    assert left == [], f"member audio left on disk: {left}"


def test_bytes_are_decoded_without_a_temporary_file(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("intake asked for a temporary file")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory", "TemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    data = clip.read_bytes()
    from_bytes = decode_audio(data, sample_rate=16_000, **LIMITS)
    assert probe_audio(data, max_bytes=LIMITS["max_bytes"]).codec_name == "opus"
    monkeypatch.undo()
    np.testing.assert_array_equal(from_bytes.pcm, decode_audio(clip, sample_rate=16_000, **LIMITS).pcm)


def test_an_m4a_with_its_index_at_the_end_decodes_from_memory(tmp_path: Path) -> None:
    """Phones write the m4a index (moov) last; read from a pipe, ffmpeg could not seek back to the audio."""
    src = tmp_path / "phone.m4a"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=f=300:r=48000", "-t", "90",
         "-c:a", "aac", "-b:a", "128k", str(src)],
        check=True,
    )  # fmt: skip
    data = src.read_bytes()
    assert data.index(b"moov") > data.index(b"mdat") and len(data) > 1_000_000
    audio = decode_audio(data, sample_rate=16_000, **LIMITS)
    assert audio.codec_name == "aac" and audio.duration_s == pytest.approx(90, abs=0.1)


async def test_without_memfd_the_upload_goes_through_stdin(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Systems without memfd_create: ffmpeg reads the bytes from its standard input instead."""
    monkeypatch.setattr(intake, "_memory_file", lambda data: None)
    data = await asyncio.to_thread(clip.read_bytes)
    audio = await decode_audio_async(data, sample_rate=16_000, **LIMITS)
    assert (audio.format_name, audio.codec_name) == ("ogg", "opus") and audio.duration_s > 2
    assert probe_audio(data, max_bytes=LIMITS["max_bytes"]).codec_name == "opus"
    with pytest.raises(CorruptAudio):
        decode_audio(data[: len(data) * 6 // 10], sample_rate=16_000, **LIMITS)
    with pytest.raises(NotAudio):
        decode_audio(b"just some text, not a recording\n" * 30, sample_rate=16_000, **LIMITS)


def test_folders_left_by_earlier_versions_are_swept(tmp_path: Path) -> None:
    stale, fresh = tmp_path / "voxclone-intake-old1", tmp_path / "voxclone-intake-new1"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "upload").write_bytes(b"OggS member audio")
    other = tmp_path / "someone-elses"
    other.mkdir()
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))

    assert sweep_stale_intake_dirs(tmp_path) == 1
    assert not stale.exists()
    assert fresh.exists() and other.exists()  # an intake may be reading it; not ours
    assert sweep_stale_intake_dirs(tmp_path) == 0
