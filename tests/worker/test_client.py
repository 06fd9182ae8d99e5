"""HttpSpeechService: typed results, failover and health, timeouts, truncated streams, loopback servers.

Failover rules run against ``httpx.MockTransport`` workers; streaming, disconnects and timeouts against a
real uvicorn server on 127.0.0.1 serving ``ToneService``, beside a port that accepts connections and never
answers (what a stopped worker looks like). Real ``voxclone worker`` processes killed or stopped in the
middle of a sentence are in ``tests/test_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from core.settings import load_settings
from tests.worker.api.test_app import MODEL_ID, TOKEN, ToneService, speech_pcm, tone_chunk, tone_voice
from worker import client as client_module
from worker.api.app import create_app
from worker.client import PROBE_TIMEOUT_S, UNREACHABLE_MESSAGE, HttpSpeechService, StreamInterrupted
from worker.errors import (
    InternalWorkerError,
    InvalidAudio,
    ModelNotReady,
    PayloadTooLarge,
    QualityRejected,
    Unauthorized,
    UnsupportedLanguage,
    WorkerBusy,
    WorkerUnavailable,
)
from worker.service import SpeechService
from worker.types import QualityReport, SpeechRequest
from worker.wire import data_frame, end_frame, error_frame

Handler = Callable[[httpx.Request], httpx.Response]


def request(language: str = "en", tokens: int | None = None) -> SpeechRequest:
    return SpeechRequest(
        text="Hello there.", language=language, embedding=tone_voice(), max_new_tokens=tokens
    )


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


# ---- against the app through the ASGI transport ---------------------------------------------------


@pytest.fixture
async def tone_client() -> AsyncIterator[HttpSpeechService]:
    app = create_app(ToneService(), token=TOKEN, max_body_bytes=1_000_000)
    async with HttpSpeechService(["http://w1"], TOKEN, transport=httpx.ASGITransport(app=app)) as client:
        yield client


async def test_every_operation_round_trips(tone_client: HttpSpeechService) -> None:
    pcm = speech_pcm(4.0)
    assert isinstance(tone_client, SpeechService)
    report = await tone_client.check_quality(pcm, 16_000)
    assert report.accepted and report.noise_dbfs == -np.inf and report.kept == [(0.0, 4.0)]
    result = await tone_client.embed(pcm, 16_000)
    assert result.embedding.model_id == MODEL_ID
    np.testing.assert_array_equal(result.embedding.gpt_cond_latent, tone_voice().gpt_cond_latent)
    assert await collect(tone_client.synthesize(request(tokens=3))) == b"".join(
        tone_chunk(i) for i in range(3)
    )
    text = await tone_client.transcribe(pcm, 16_000, "fr")
    assert (text.text, text.language, text.duration_s) == ("64000 samples", "fr", 4.0)
    assert (await tone_client.compare_speakers(pcm, pcm, 16_000)).same_speaker
    assert not (await tone_client.compare_speakers(pcm, -pcm, 16_000)).same_speaker
    assert (await tone_client.match_phrase("Blue moon", "blue moon")).matched
    assert (await tone_client.match_phrase("la lune, le café", "Lune, cafe.", "fr")).matched
    assert not (await tone_client.match_phrase("la lune, le café", "Lune, cafe.", "en")).matched
    assert (await tone_client.detect_watermark(pcm + 0.5, 16_000)).detected
    assert await tone_client.ready()


async def test_worker_errors_come_back_typed(tone_client: HttpSpeechService) -> None:
    with pytest.raises(QualityRejected) as rejected:
        await tone_client.embed(speech_pcm(1.0), 16_000)
    report = rejected.value.details["report"]
    assert isinstance(report, QualityReport) and report.speech_s == 1.0 and report.noise_dbfs == -np.inf
    with pytest.raises(UnsupportedLanguage):
        await collect(tone_client.synthesize(request("xx")))
    with pytest.raises(InvalidAudio, match="11025 Hz"):
        await tone_client.check_quality(speech_pcm(1.0, 11_025), 11_025)
    with pytest.raises(PayloadTooLarge):
        await tone_client.transcribe(speech_pcm(10.0, 48_000), 48_000)


async def test_wrong_token_is_not_retried_elsewhere() -> None:
    app = create_app(ToneService(), token=TOKEN)
    client = HttpSpeechService(["http://w1", "http://w2"], "wrong", transport=httpx.ASGITransport(app=app))
    async with client:
        with pytest.raises(Unauthorized, match="WORKER_TOKEN"):
            await client.check_quality(speech_pcm(1.0), 16_000)
        assert client.urls_in_backoff == []


# ---- failover, with mock workers ------------------------------------------------------------------


class Workers:
    """Mock workers by host: each host answers with its own handler; every call is recorded."""

    def __init__(self, **handlers: Handler) -> None:
        self.handlers = handlers
        self.calls: list[str] = []
        self.paths: list[str] = []  # beside calls: which were /readyz probes

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.calls.append(req.url.host)
        self.paths.append(req.url.path)
        return self.handlers[req.url.host](req)

    def client(self, *hosts: str, probe_interval_s: float = 30.0) -> HttpSpeechService:
        urls = [f"http://{h}:8765" for h in hosts]
        transport = httpx.MockTransport(self)
        return HttpSpeechService(urls, TOKEN, 5.0, transport, probe_interval_s=probe_interval_s)


def refuse(req: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Connection refused", request=req)


def answer(status: int, code: str | None = None) -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        assert req.headers["authorization"] == f"Bearer {TOKEN}"
        if code is None:
            return httpx.Response(status, json={"detected": True, "confidence": 0.9})
        return httpx.Response(status, json={"error": {"code": code, "message": f"{code} here"}})

    return handler


async def test_connect_error_fails_over_and_backs_off() -> None:
    workers = Workers(a=refuse, b=answer(200))
    async with workers.client("a", "b") as client:
        assert (await client.detect_watermark(speech_pcm(1.0), 16_000)).confidence == 0.9
        assert client.urls_in_backoff == ["http://a:8765"]
        await client.detect_watermark(speech_pcm(1.0), 16_000)
    assert workers.calls == ["a", "b", "b"]  # the dead worker is not tried again during its back-off


async def test_unhealthy_worker_comes_back_when_its_readyz_answers() -> None:
    workers = Workers(a=refuse, b=answer(200))
    async with workers.client("a", "b", probe_interval_s=0.05) as client:
        await client.detect_watermark(speech_pcm(1.0), 16_000)
        await asyncio.sleep(0.2)  # probed about 3 times, refused each time: no request is sent to it
        await client.detect_watermark(speech_pcm(1.0), 16_000)
        assert client.urls_in_backoff == ["http://a:8765"]
        sent = [h for h, path in zip(workers.calls, workers.paths, strict=True) if path != "/readyz"]
        # (a background probe of "a" may land after the second request: only requests are compared)
        assert sent[:2] == ["a", "b"] and sent[-1] == "b" and sent.count("b") == 2
        workers.handlers["a"] = answer(200)  # the worker is back: the next probe of /readyz says so
        for _ in range(50):
            await asyncio.sleep(0.02)
            if not client.urls_in_backoff:
                break
        assert client.urls_in_backoff == []
        workers.calls.clear()
        await client.detect_watermark(speech_pcm(1.0), 16_000)
    assert workers.calls == ["a"]


async def test_a_password_in_a_worker_url_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    workers = Workers(a=refuse, b=answer(200))
    urls = ["http://ops:hunter2@a:8765", "http://b:8765"]
    async with HttpSpeechService(urls, TOKEN, 5.0, httpx.MockTransport(workers)) as client:
        await client.detect_watermark(speech_pcm(1.0), 16_000)
    assert "speech worker http://ops:***@a:8765 is unhealthy (ConnectError)" in caplog.text
    assert "hunter2" not in caplog.text and TOKEN not in caplog.text


async def test_busy_fails_over_without_back_off() -> None:
    workers = Workers(a=answer(503, "busy"), b=answer(200))
    async with workers.client("a", "b") as client:
        await client.detect_watermark(speech_pcm(1.0), 16_000)
        assert client.urls_in_backoff == []


async def test_not_ready_and_proxy_errors_fail_over() -> None:
    workers = Workers(
        a=answer(503, "not_ready"), b=lambda r: httpx.Response(502, text="bad gateway"), c=answer(200)
    )
    async with workers.client("a", "b", "c") as client:
        assert (await client.detect_watermark(speech_pcm(1.0), 16_000)).detected
        assert client.urls_in_backoff == ["http://a:8765", "http://b:8765"]


async def test_all_down_all_busy_and_not_ready() -> None:
    async with Workers(a=refuse, b=refuse).client("a", "b") as client:
        with pytest.raises(WorkerUnavailable) as down:
            await client.detect_watermark(speech_pcm(1.0), 16_000)
        assert down.value.message == UNREACHABLE_MESSAGE
        assert down.value.code == "worker_unavailable"
    async with Workers(a=answer(503, "busy"), b=answer(503, "busy")).client("a", "b") as client:
        with pytest.raises(WorkerBusy, match="try again in a few seconds"):
            await client.detect_watermark(speech_pcm(1.0), 16_000)
    async with Workers(a=answer(503, "not_ready"), b=refuse).client("a", "b") as client:
        with pytest.raises(ModelNotReady):
            await client.detect_watermark(speech_pcm(1.0), 16_000)


async def test_client_errors_are_not_retried() -> None:
    workers = Workers(a=answer(400, "invalid_audio"), b=answer(200))
    async with workers.client("a", "b") as client:
        with pytest.raises(InvalidAudio, match="invalid_audio here"):
            await client.detect_watermark(speech_pcm(1.0), 16_000)
    assert workers.calls == ["a"]


def stream_of(*frames: bytes, framing: str = "voxclone-frames-1") -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        body = httpx.ByteStream(b"".join(frames))  # a stream, like a real transport (content= is pre-read)
        return httpx.Response(200, stream=body, headers={"X-Framing": framing})

    return handler


async def test_stream_without_end_frame_raises_and_backs_off() -> None:
    workers = Workers(a=stream_of(data_frame(tone_chunk(0)), data_frame(tone_chunk(1))))
    async with workers.client("a") as client:
        received = []
        with pytest.raises(StreamInterrupted, match=r"middle of this sentence \(after 0\.2 s of audio\)"):
            async for chunk in client.synthesize(request()):
                received.append(chunk)
        assert received == [tone_chunk(0), tone_chunk(1)]  # what arrived was played, then a clear error
        assert client.urls_in_backoff == ["http://a:8765"]


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ((data_frame(tone_chunk(0)), end_frame(2 * len(tone_chunk(0)))), StreamInterrupted),
        ((data_frame(tone_chunk(0))[:-10],), StreamInterrupted),
        ((data_frame(tone_chunk(0)), error_frame({"error": {"code": "busy", "message": "m"}})), WorkerBusy),
    ],
    ids=["end-counts-more", "half-a-frame", "error-frame"],
)
async def test_broken_streams_raise(frames: tuple[bytes, ...], error: type[Exception]) -> None:
    async with Workers(a=stream_of(*frames)).client("a") as client:
        with pytest.raises(error):
            await collect(client.synthesize(request()))


async def test_stream_from_another_protocol_version_is_refused() -> None:
    async with Workers(a=stream_of(end_frame(0), framing="other")).client("a") as client:
        with pytest.raises(InternalWorkerError, match="same voxclone version"):
            await collect(client.synthesize(request()))


async def test_speech_request_reaches_the_worker_intact() -> None:
    seen: dict[str, object] = {}

    def record(req: httpx.Request) -> httpx.Response:
        seen.update(json.loads(req.content))
        return stream_of(end_frame(0))(req)

    async with Workers(a=record).client("a") as client:
        assert await collect(client.synthesize(request("fr", tokens=7))) == b""
    assert (seen["text"], seen["language"], seen["max_new_tokens"]) == ("Hello there.", "fr", 7)


# ---- a real uvicorn server on loopback ------------------------------------------------------------


@asynccontextmanager
async def serving(service: SpeechService, **options: Any) -> AsyncIterator[str]:
    """``create_app(service, **options)`` (token ``TOKEN``, 1 MB bodies unless given) on a loopback port."""
    app = create_app(service, **{"token": TOKEN, "max_body_bytes": 1_000_000, **options})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_loopback_stream_arrives_before_synthesis_ends() -> None:
    service = ToneService(chunks=20, delay_s=0.05)
    async with serving(service) as url, HttpSpeechService([url], TOKEN) as client:
        chunks = []
        made_when_first_arrived = None
        async for chunk in client.synthesize(request()):
            made_when_first_arrived = made_when_first_arrived or service.yielded
            chunks.append(chunk)
    assert b"".join(chunks) == b"".join(tone_chunk(i) for i in range(20))
    assert made_when_first_arrived is not None and made_when_first_arrived < 5


async def test_closing_the_stream_stops_the_service() -> None:
    service = ToneService(chunks=200, delay_s=0.05)
    async with serving(service) as url, HttpSpeechService([url], TOKEN) as client:
        stream = client.synthesize(request())
        assert await anext(stream) == tone_chunk(0)
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(service.closed.wait(), timeout=3.0)
    assert not service.finished.is_set()
    assert service.yielded < 40


async def test_loopback_oversized_body_is_413_for_the_client() -> None:
    async with serving(ToneService()) as url, HttpSpeechService([url], TOKEN) as client:
        with pytest.raises(PayloadTooLarge, match="shorter clip"):
            await client.transcribe(speech_pcm(30.0, 48_000), 48_000)  # ~7.7 MB against a 1 MB limit


# ---- timeouts: a hung worker, a slow one, a stalled stream ----------------------------------------


@contextmanager
def hung_worker(backlog: int = 16) -> Iterator[str]:
    """A port whose kernel accepts connections and takes requests, but nothing ever answers them: what a
    worker stopped with SIGSTOP (or frozen in a VM) looks like from the client."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def unconnectable_worker() -> Iterator[str]:
    """A port whose accept queue is full: new connections are never completed (a worker host that drops
    packets)."""
    with hung_worker(backlog=0) as url, contextlib.ExitStack() as stack:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield url


class PausingTone(ToneService):
    """ToneService that stays silent for ``pauses[i]`` seconds before its chunk ``i``."""

    def __init__(self, pauses: dict[int, float], chunks: int = 3) -> None:
        super().__init__(chunks=chunks)
        self.pauses = pauses

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        return self._paused(super().synthesize(request))

    async def _paused(self, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        index = 0
        try:
            async for chunk in chunks:
                await asyncio.sleep(self.pauses.get(index, 0.0))
                index += 1
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]


async def timed(stream: AsyncIterator[bytes]) -> tuple[bytes, float]:
    started = time.monotonic()
    return await collect(stream), time.monotonic() - started


async def test_hung_worker_loses_a_new_request_to_the_next_at_once() -> None:
    with hung_worker() as hung:
        async with serving(ToneService()) as good:
            client = HttpSpeechService([hung, good], TOKEN, first_chunk_timeout_s=0.5)
            async with client:
                audio, took = await timed(client.synthesize(request(tokens=3)))
                assert audio == b"".join(tone_chunk(i) for i in range(3))
                # 0.5 s without an answer, then /readyz unanswered for PROBE_TIMEOUT_S: the next worker
                assert 0.5 + PROBE_TIMEOUT_S - 0.1 < took < 0.5 + PROBE_TIMEOUT_S + 1.0, took
                assert client.urls_in_backoff == [hung]
                _, took = await timed(client.synthesize(request(tokens=3)))
                assert took < 0.5  # straight to the healthy worker while the hung one rests
                assert (await client.transcribe(speech_pcm(1.0), 16_000)).text == "16000 samples"


async def test_hung_workers_only_is_unreachable_not_a_hang() -> None:
    with hung_worker() as first, hung_worker() as second:
        async with HttpSpeechService([first, second], TOKEN, first_chunk_timeout_s=0.3) as client:
            started = time.monotonic()
            with pytest.raises(WorkerUnavailable) as down:
                await client.transcribe(speech_pcm(1.0), 16_000)
            assert down.value.message == UNREACHABLE_MESSAGE
            assert time.monotonic() - started < 2 * (0.3 + PROBE_TIMEOUT_S) + 1.0
            started = time.monotonic()
            assert not await client.ready()
            assert time.monotonic() - started < PROBE_TIMEOUT_S + 0.5


async def test_connect_timeout_fails_over() -> None:
    with unconnectable_worker() as silent:
        async with serving(ToneService()) as good:
            client = HttpSpeechService([silent, good], TOKEN, connect_timeout_s=0.3, first_chunk_timeout_s=5)
            async with client:
                started = time.monotonic()
                assert (await client.transcribe(speech_pcm(1.0), 16_000)).text == "16000 samples"
                assert time.monotonic() - started < 1.5
                assert client.urls_in_backoff == [silent]


async def test_slow_but_alive_worker_keeps_its_request() -> None:
    # No first chunk for 1.2 s, four times the first-chunk timeout: the worker answers /readyz meanwhile,
    # so it is busy, not hung, and the request is not sent elsewhere.
    service = PausingTone({0: 1.2})
    other = ToneService()
    async with serving(service) as slow, serving(other) as spare:
        client = HttpSpeechService([slow, spare], TOKEN, first_chunk_timeout_s=0.3)
        async with client:
            audio, took = await timed(client.synthesize(request(tokens=3)))
    assert audio == b"".join(tone_chunk(i) for i in range(3)) and took >= 1.2
    assert client.urls_in_backoff == [] and other.yielded == 0


async def test_alive_worker_slower_than_the_total_timeout_is_given_up() -> None:
    async with serving(PausingTone({0: 2.0})) as slow:
        client = HttpSpeechService([slow], TOKEN, 1.0, first_chunk_timeout_s=0.3)
        async with client:
            started = time.monotonic()
            with pytest.raises(WorkerUnavailable, match=r"too slow right now \(no answer within 1 s\)"):
                await collect(client.synthesize(request(tokens=3)))
            assert time.monotonic() - started < 2.0


async def test_stalled_stream_fails_after_the_chunk_timeout() -> None:
    service = PausingTone({2: 30.0}, chunks=5)  # two chunks, then silence
    async with serving(service) as url:
        async with HttpSpeechService([url], TOKEN, chunk_timeout_s=0.5) as client:
            received: list[bytes] = []
            started = time.monotonic()
            with pytest.raises(StreamInterrupted) as cut:
                async for chunk in client.synthesize(request()):
                    received.append(chunk)
            took = time.monotonic() - started
            assert received == [tone_chunk(0), tone_chunk(1)]  # what arrived was played, then a clear error
            assert 0.5 <= took < 1.5, took
            assert "stopped in the middle of this sentence (no audio for 0.5 s, after 0.2 s of audio)" in (
                cut.value.message
            )
            assert client.urls_in_backoff == [url]
        await asyncio.wait_for(service.closed.wait(), 3.0)  # the worker saw the client go and stopped


async def test_a_slow_reader_is_not_a_stalled_worker() -> None:
    # The player reads at the pace it plays: time spent away from the stream is not the worker's.
    async with serving(ToneService(chunks=4)) as url:
        client = HttpSpeechService([url], TOKEN, 0.8, chunk_timeout_s=0.3)
        async with client:
            received = []
            async for chunk in client.synthesize(request()):
                received.append(chunk)
                await asyncio.sleep(0.4)
    assert received == [tone_chunk(i) for i in range(4)]


def test_the_client_defaults_are_the_settings_defaults() -> None:
    settings = load_settings({})
    for name in ("connect_timeout_s", "first_chunk_timeout_s", "chunk_timeout_s", "probe_interval_s"):
        assert getattr(settings, f"worker_{name}") == getattr(client_module, f"DEFAULT_{name.upper()}")
    assert settings.worker_timeout_s == client_module.DEFAULT_TOTAL_TIMEOUT_S
