"""Faults on real ``voxclone worker`` processes: one killed mid-stream (SIGKILL), one hung (SIGSTOP: its
kernel still accepts connections and takes requests), full queues. Each test asserts what the member or
the operator sees, and that nothing is lost: what was accepted is delivered whole, the next message in the
queue plays, the next request reaches a healthy worker (within 3 s of its first choice hanging).

The two workers run the random-weight tiny XTTS-v2 on loopback, one request decoded at a time and one
waiting (``WORKER_MAX_BATCH=1``, ``WORKER_MAX_QUEUE=1``), so that two requests fill one. The clients are
built from the settings, with their defaults unless a test says otherwise. Every test is bounded in time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import discord
import httpx
import pytest
from discord.ext import commands

from bot.player import GuildPlayer, Utterance
from core.intake import decode_audio
from core.settings import load_settings
from storage import Database, Repositories, upgrade
from tests.support.audio import speech_message
from tests.support.discord_harness import GuildFixture, Harness, HarnessVoiceClient
from tests.worker.api.test_app import TOKEN
from tests.worker.test_cli import WorkerProcess, clean_env, metrics_of, voxclone, xtts_bytes
from tests.worker.test_client import collect
from worker.client import HttpSpeechService
from worker.errors import WorkerBusy
from worker.factory import create_http_service
from worker.types import SpeechRequest, VoiceEmbedding

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back home across the field."
FAILOVER_TARGET_S = 3.0  # a new request reaches a healthy worker within this long of its first choice hanging
LONG = 120  # audio tokens (5.6 s of audio, several seconds to make on this CPU)
SHORT = 20  # audio tokens (0.93 s)
ONE_AT_A_TIME = {"WORKER_MAX_BATCH": "1", "WORKER_MAX_QUEUE": "1"}
REPO = Path(__file__).resolve().parents[1]
# A phrase tiny.en transcribes reliably from espeak-ng (tests fix the phrase; production draws one at random).
CONSENT_PHRASE = "please clone my voice, the quick brown fox jumps over the lazy dog, thank you"
GUILD, MEMBER = 4242, 7


class Workers:
    """Two worker processes; ``fresh()`` gives them back running, restarting any a test killed."""

    def __init__(self, home: Path, model_dir: Path) -> None:
        self.home = home
        self.model_dir = model_dir
        self.procs = [self._start(), self._start()]
        for proc in self.procs:
            proc.wait_ready()

    def _start(self) -> WorkerProcess:
        return WorkerProcess(self.home, self.model_dir, **ONE_AT_A_TIME)

    def fresh(self) -> tuple[WorkerProcess, WorkerProcess]:
        for i, proc in enumerate(self.procs):
            if proc.proc.poll() is not None:
                self.procs[i] = self._start()
            else:
                resume(proc)
        for proc in self.procs:
            proc.wait_ready()
        return self.procs[0], self.procs[1]

    def close(self) -> None:
        for proc in self.procs:
            resume(proc)
            proc.signal(signal.SIGKILL)


def stop(worker: WorkerProcess) -> None:
    """SIGSTOP: the process freezes, but its listening socket still completes connections."""
    os.killpg(worker.proc.pid, signal.SIGSTOP)


def resume(worker: WorkerProcess) -> None:
    if worker.proc.poll() is None:
        os.killpg(worker.proc.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def pool(home: Path, tiny_xtts_dir: Path) -> Iterator[Workers]:
    workers = Workers(home, tiny_xtts_dir)
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def pair(pool: Workers) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    first, second = pool.fresh()
    try:
        yield first, second
    finally:
        resume(first)
        resume(second)


@pytest.fixture(scope="module")
def voice_clip(home: Path) -> Path:
    return speech_message(home, "voice", SENTENCE)


@pytest.fixture(scope="module")
def embedding(pool: Workers, voice_clip: Path) -> VoiceEmbedding:
    """The voice of ``voice_clip``, cloned by a worker; each worker has spoken once (a process's first
    synthesis is slow, and the tests time later ones)."""
    clip = decode_audio(voice_clip, sample_rate=22_050, max_seconds=60, max_bytes=10_000_000)

    async def embed() -> VoiceEmbedding:
        async with HttpSpeechService([w.url for w in pool.fresh()], TOKEN) as client:
            voice = (await client.embed(clip.pcm, clip.sample_rate)).embedding
        for worker in pool.procs:
            async with HttpSpeechService([worker.url], TOKEN) as client:
                await collect(client.synthesize(said(voice, SHORT)))
        return voice

    return asyncio.run(embed())


def said(embedding: VoiceEmbedding, tokens: int, seed: int = 1) -> SpeechRequest:
    return SpeechRequest("Hello there, this is a sentence.", "en", embedding, tokens, tokens, seed=seed)


class Recorder(httpx.AsyncHTTPTransport):
    """The real transport, noting when each request leaves for which worker."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[float, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        worker = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.sent.append((time.monotonic(), worker, request.url.path))
        return await super().handle_async_request(request)

    def first(self, worker: str, path: str, after: float) -> float:
        """Seconds from ``after`` to the first request to ``worker`` for ``path``."""
        return min(t for t, w, p in self.sent if w == worker and p == path and t >= after) - after


def client_for(*workers: WorkerProcess, **env: str) -> HttpSpeechService:
    """The bot's client, built from the settings as the bot builds it."""
    urls = ",".join(w.url for w in workers)
    return create_http_service(load_settings({"WORKER_URLS": urls, "WORKER_TOKEN": TOKEN, **env}))


# ---- a hung worker (SIGSTOP) ----------------------------------------------------------------------


async def test_new_request_reaches_a_healthy_worker_within_3_s_of_a_hung_one(
    pair: tuple[WorkerProcess, WorkerProcess], embedding: VoiceEmbedding
) -> None:
    first, second = pair
    recorder = Recorder()
    stop(first)
    async with (
        asyncio.timeout(40),
        HttpSpeechService([first.url, second.url], TOKEN, transport=recorder) as client,
    ):
        started = time.monotonic()
        stream = client.synthesize(said(embedding, SHORT))
        audio = await anext(stream)
        first_audio_s = time.monotonic() - started
        audio += await collect(stream)
        reached_s = recorder.first(second.url, "/v1/speech", started)
        print(f"\nhung worker: the request reached the healthy one after {reached_s:.2f} s, "
              f"first audio after {first_audio_s:.2f} s")  # fmt: skip
        assert reached_s < FAILOVER_TARGET_S
        assert len(audio) == xtts_bytes(SHORT)  # the whole sentence, from the healthy worker
        assert client.urls_in_backoff == [first.url]

        started = time.monotonic()  # the next request does not wait for the hung worker at all
        assert len(await collect(client.synthesize(said(embedding, SHORT, seed=2)))) == xtts_bytes(SHORT)
        assert recorder.first(second.url, "/v1/speech", started) < 0.2
        assert not [p for t, w, p in recorder.sent if t >= started and w == first.url and p != "/readyz"]

        resume(first)  # back: its /readyz answers, and the background probe puts it back in rotation
        resumed = time.monotonic()
        for _ in range(150):
            if not client.urls_in_backoff:
                break
            await asyncio.sleep(0.1)
        back_s = time.monotonic() - resumed
        print(f"resumed worker back in rotation after {back_s:.2f} s (a /readyz probe every 5 s)")
        assert client.urls_in_backoff == [] and back_s < 5 + 1 + 0.5
        assert (first.url, "/readyz") in [(w, p) for _, w, p in recorder.sent]  # asked, not guessed
        started = time.monotonic()
        assert len(await collect(client.synthesize(said(embedding, SHORT, seed=3)))) == xtts_bytes(SHORT)
        assert recorder.first(first.url, "/v1/speech", started) < 0.2  # the first worker serves again


@asynccontextmanager
async def guild_player(
    client: HttpSpeechService,
) -> AsyncIterator[tuple[GuildPlayer, list[str], GuildFixture]]:
    """A server's player on the real discord.py voice path, posting what members read into a list."""
    bot = commands.Bot(command_prefix="!", intents=discord.Intents(guilds=True, voice_states=True))
    harness = Harness(bot)
    fx = harness.add_guild()
    posted: list[str] = []

    async def notify(channel_id: int, text: str) -> None:
        posted.append(text)

    player = GuildPlayer(fx.guild, client, notify, voice_cls=HarnessVoiceClient, idle_timeout_s=60)
    try:
        yield player, posted, fx
    finally:
        await player.close()
        harness.close()


def utterance(request: SpeechRequest, channel_id: int) -> Utterance:
    return Utterance(request, 1, 1, channel_id, announcement="Ada's cloned voice is speaking")


async def two_messages_first_cut(
    client: HttpSpeechService, embedding: VoiceEmbedding, cut: WorkerProcess, sig: signal.Signals
) -> tuple[Utterance, Utterance, list[str], float]:
    """Queue a long and a short message; ``sig`` the worker of the long one once it plays. Returns them,
    what was posted, and the seconds from the signal to the end of the long one."""
    async with guild_player(client) as (player, posted, fx):
        long = utterance(said(embedding, LONG), fx.text_channel.id)
        short = utterance(said(embedding, SHORT), fx.text_channel.id)
        await player.enqueue(fx.voice_channel, long)
        await player.enqueue(fx.voice_channel, short)
        await asyncio.wait_for(long.started.wait(), 30)
        os.killpg(cut.proc.pid, sig)
        signalled = time.monotonic()
        await asyncio.wait_for(long.finished.wait(), 30)
        cut_after = time.monotonic() - signalled
        await asyncio.wait_for(short.finished.wait(), 60)
        return long, short, posted, cut_after


def assert_the_next_message_played_whole(short: Utterance) -> None:
    assert short.error is None
    assert short.samples_synthesized * 2 == xtts_bytes(SHORT)
    assert abs(short.frames_played * 0.020 - short.samples_synthesized / 24_000) <= 0.021


async def test_stream_in_flight_on_a_hung_worker_fails_within_the_chunk_timeout(
    pair: tuple[WorkerProcess, WorkerProcess], embedding: VoiceEmbedding
) -> None:
    first, second = pair
    async with asyncio.timeout(50), client_for(first, second, WORKER_CHUNK_TIMEOUT_S="3") as client:
        long, short, posted, cut_after = await two_messages_first_cut(
            client, embedding, first, signal.SIGSTOP
        )
        assert client.urls_in_backoff == [first.url]
    print(f"\nhung worker mid-stream: the member was told after {cut_after:.2f} s (chunk timeout 3 s)")
    assert 2.9 < cut_after < 3.0 + 1.5
    assert (
        long.error is not None
        and "stopped in the middle of this sentence (no audio for 3 s, after" in long.error
    )
    shown = [text for text in posted if text.startswith("I couldn't finish speaking:")]
    assert shown == [f"I couldn't finish speaking: {long.error}"]
    assert 0 < long.samples_synthesized * 2 < xtts_bytes(LONG)  # it had begun, and stopped part-way
    assert_the_next_message_played_whole(short)  # from the other worker, not lost behind the hung one
    assert posted.count("Ada's cloned voice is speaking") == 2


# ---- full queues ----------------------------------------------------------------------------------


async def queue_depth(worker: WorkerProcess) -> float:
    for line in (await metrics_of(worker.url)).splitlines():
        if line.startswith("voxclone_worker_queue_depth "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no queue depth in the metrics")


async def fill(
    client: HttpSpeechService, worker: WorkerProcess, request: SpeechRequest
) -> asyncio.Task[bytes]:
    """A request that waits in ``worker``'s queue, collected in the background."""
    task = asyncio.create_task(collect(client.synthesize(request)))
    for _ in range(400):
        if await queue_depth(worker) >= 1:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"{worker.url} queued nothing")


async def test_full_queues_go_to_the_next_worker_then_say_busy(
    pair: tuple[WorkerProcess, WorkerProcess], embedding: VoiceEmbedding
) -> None:
    first, second = pair
    async with asyncio.timeout(55), client_for(first, second) as client:
        playing = [client.synthesize(said(embedding, LONG, seed=s)) for s in (1, 2)]
        heads = [await anext(playing[0])]  # the first worker decodes it...
        waiting = [await fill(client, first, said(embedding, SHORT, seed=3))]  # ...and queues one: full
        heads.append(await anext(playing[1]))  # so this one went to the second worker
        waiting.append(await fill(client, second, said(embedding, SHORT, seed=4)))  # full too
        started = time.monotonic()
        with pytest.raises(WorkerBusy) as busy:
            await collect(client.synthesize(said(embedding, SHORT, seed=5)))
        assert time.monotonic() - started < 1.0
        assert busy.value.message == "Every speech worker is busy right now; try again in a few seconds."
        assert client.urls_in_backoff == []  # busy is not unhealthy
        # Nothing accepted is lost: the two playing and the two waiting arrive whole.
        for head, stream in zip(heads, playing, strict=True):
            assert len(head + await collect(stream)) == xtts_bytes(LONG)
        assert [len(await task) for task in waiting] == [xtts_bytes(SHORT)] * 2


# ---- the operator's view: `voxclone say` over a list of workers -----------------------------------


def test_say_fails_over_from_a_hung_worker_on_the_command_line(
    pair: tuple[WorkerProcess, WorkerProcess], voice_clip: Path, home: Path
) -> None:
    first, second = pair
    out = home / "failover.wav"
    urls = f"{first.url},{second.url}"
    args = [
        "say",
        "--voice",
        str(voice_clip),
        "--text",
        "Hello there.",
        "--out",
        str(out),
        "--max-tokens",
        "20",
    ]
    stop(first)
    started = time.monotonic()
    run = voxclone(home, *args, "--worker-url", urls, WORKER_TOKEN=TOKEN, timeout=60)
    took = time.monotonic() - started
    resume(first)
    print(f"\nvoxclone say with the first worker hung: done in {took:.2f} s; {run.out.strip()}")
    assert run.code == 0, run.err
    assert run.out.startswith(f"wrote {out}:")
    warnings = [line for line in run.err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, run.err  # passed over once, then left alone
    assert f"speech worker {first.url} is unhealthy (no answer in" in warnings[0]
    assert "nor from /readyz in 1 s" in warnings[0] and TOKEN not in run.err
    with wave.open(str(out)) as wav:
        assert wav.getnframes() * 2 == xtts_bytes(20)


def test_a_bad_worker_url_in_the_list_is_one_clear_line(home: Path, voice_clip: Path) -> None:
    run = voxclone(home, "check-voice", str(voice_clip), "--worker-url", "http://127.0.0.1:9,gpu-2:8765")
    lines = [line for line in run.err.splitlines() if line.startswith("voxclone:")]
    assert run.code == 2 and len(lines) == 1, run
    assert "--worker-url" in lines[0] and "'gpu-2:8765'" in lines[0]


# ---- the bot killed (kill -9) in the middle of an enrolment -----------------------------------------


async def enrolment_child(database_url: str, urls: str, clip: Path, home: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.enroll_child", database_url, urls, str(clip), str(GUILD),
        str(MEMBER), cwd=REPO, env=clean_env(home, WORKER_TOKEN=TOKEN), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def run_until(child: asyncio.subprocess.Process, line: str) -> list[str]:
    """Read the child's lines until ``line``; SIGKILL it there. Returns what it printed."""
    assert child.stdout is not None
    seen: list[str] = []
    while seen[-1:] != [line] and (raw := await child.stdout.readline()):
        seen.append(raw.decode().strip())
    child.kill()
    await child.communicate()
    return seen


@pytest.mark.parametrize("stage", ["cloning", "preview"])
async def test_enrolment_killed_leaves_the_database_consistent_and_the_member_can_retry(
    pair: tuple[WorkerProcess, WorkerProcess], home: Path, tmp_path: Path, stage: str
) -> None:
    urls = ",".join(w.url for w in pair)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    clip = speech_message(home, "consent", CONSENT_PHRASE)
    await upgrade(database_url)
    async with Database(database_url) as db:
        repos = Repositories(db)
        await repos.settings.update(GUILD, updated_by=1, cloning_enabled=True)
        await repos.challenges.issue(GUILD, MEMBER, CONSENT_PHRASE)
    async with asyncio.timeout(50):
        seen = await run_until(await enrolment_child(database_url, urls, clip, home), f"stage {stage}")
        assert seen[-1] == f"stage {stage}", seen  # killed there, with -9
        check = voxclone(home, "db", "check", "--database-url", database_url, timeout=30)
        assert check.code == 0 and check.out.startswith("database healthy"), check
        async with Database(database_url) as db:
            repos = Repositories(db)
            stored = await repos.profiles.get(GUILD, MEMBER)
            records = await repos.profiles.consent_records(GUILD, MEMBER)
            phrase = await repos.challenges.active(GUILD, MEMBER)
            if stage == "cloning":  # killed before the voice was stored: nothing half-written, phrase kept
                assert stored is None and records == [] and phrase is not None
            else:  # killed after: the voice and its consent record whole, the phrase used up
                assert stored is not None and len(records) == 1 and phrase is None
                await repos.challenges.issue(GUILD, MEMBER, CONSENT_PHRASE)  # the member runs /enroll again
        # The member tries again; the voice is stored (the preview is not waited for: it can be long).
        seen = await run_until(await enrolment_child(database_url, urls, clip, home), "stage preview")
        assert seen[-1] == "stage preview", seen
        async with Database(database_url) as db:
            repos = Repositories(db)
            assert await repos.profiles.get(GUILD, MEMBER) is not None
            assert len(await repos.profiles.consent_records(GUILD, MEMBER)) >= 1
            assert await repos.challenges.active(GUILD, MEMBER) is None


# ---- a worker killed mid-stream (SIGKILL); last, as it leaves one worker to restart -----------------


async def test_worker_killed_mid_stream_tells_the_member_and_the_queue_goes_on(
    pair: tuple[WorkerProcess, WorkerProcess], embedding: VoiceEmbedding
) -> None:
    first, second = pair
    async with asyncio.timeout(50), client_for(first, second) as client:
        long, short, posted, cut_after = await two_messages_first_cut(
            client, embedding, first, signal.SIGKILL
        )
        assert client.urls_in_backoff == [first.url]
    assert cut_after < 1.0  # a closed connection is known at once
    assert long.error is not None and "stopped in the middle of this sentence (after" in long.error
    assert [text for text in posted if text.startswith("I couldn't")] == [
        f"I couldn't finish speaking: {long.error}"
    ]
    assert 0 < long.samples_synthesized * 2 < xtts_bytes(LONG)
    assert_the_next_message_played_whole(short)
