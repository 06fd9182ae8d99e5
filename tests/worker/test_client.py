"""HttpSpeechService: typed results, failover and back-off, truncated streams, real loopback servers.

Failover rules run against ``httpx.MockTransport`` workers; streaming and disconnects against a real
uvicorn server on 127.0.0.1 serving ``ToneService``. The crash test (two real ``voxclone worker``
processes, one killed in the middle of a sentence) is in ``test_cli.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from tests.worker.test_api import MODEL_ID, TOKEN, ToneService, speech_pcm, tone_chunk, tone_voice
from worker.api import create_app
from worker.api_wire import data_frame, end_frame, error_frame
from worker.client import UNREACHABLE_MESSAGE, HttpSpeechService, StreamInterrupted
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

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.calls.append(req.url.host)
        return self.handlers[req.url.host](req)

    def client(self, *hosts: str, backoff_s: float = 30.0) -> HttpSpeechService:
        urls = [f"http://{h}:8765" for h in hosts]
        return HttpSpeechService(urls, TOKEN, 5.0, httpx.MockTransport(self), backoff_s=backoff_s)


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


async def test_backed_off_worker_is_tried_again_later() -> None:
    workers = Workers(a=refuse, b=answer(200))
    async with workers.client("a", "b", backoff_s=0.05) as client:
        await client.detect_watermark(speech_pcm(1.0), 16_000)
        await asyncio.sleep(0.1)
        await client.detect_watermark(speech_pcm(1.0), 16_000)
    assert workers.calls == ["a", "b", "a", "b"]


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
