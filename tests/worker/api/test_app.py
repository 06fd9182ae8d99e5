"""The worker HTTP API: auth, body limits, PCM validation, error codes, streaming framing, health, metrics.

These tests drive the real FastAPI app over httpx's ASGI transport with ``ToneService``, a small real
``SpeechService`` that makes deterministic PCM, so each assertion is about the HTTP layer. The end-to-end
tests with the real engines are in ``test_client.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import numpy as np
import pytest

from worker.analysis.verify import normalize_text
from worker.api.app import create_app
from worker.errors import IncompatibleVoice, InvalidRequest, QualityRejected, UnsupportedLanguage
from worker.service import SpeechService
from worker.types import (
    EmbeddingResult,
    FloatArray,
    PhraseMatch,
    QualityReport,
    SpeakerCheck,
    SpeechRequest,
    Transcription,
    VoiceEmbedding,
    WatermarkResult,
)
from worker.wire import FRAME_DATA, FRAME_END, FRAME_ERROR, STREAM_MEDIA_TYPE, FrameDecoder, WirePcm

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RATE = 16_000
CHUNK_SAMPLES = 2_400  # 100 ms at 24 kHz per chunk
MODEL_ID = "tone-model"


def tone_chunk(index: int) -> bytes:
    """Deterministic s16le chunk ``index`` of the tone the service speaks."""
    t = np.arange(CHUNK_SAMPLES) + index * CHUNK_SAMPLES
    return (np.sin(2 * np.pi * 220 * t / 24_000) * 8000).astype("<i2").tobytes()


def tone_voice() -> VoiceEmbedding:
    return VoiceEmbedding(MODEL_ID, np.ones((1, 4, 8), np.float32), np.zeros((1, 8, 1), np.float32))


class ToneService:
    """A real SpeechService without models: quality by duration, speech as a tone, in ``chunks`` pieces."""

    languages = ("en", "fr")

    def __init__(self, chunks: int = 3, delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.is_ready = True
        self.queue_depth = 0
        self.yielded = 0
        self.closed = asyncio.Event()
        self.finished = asyncio.Event()

    async def check_quality(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        duration = len(pcm) / sample_rate
        peak = float(np.abs(pcm).max())
        level = 20 * math.log10(peak) if peak > 0 else -math.inf
        reasons = [] if duration >= 3 else [f"Only {duration:.1f} s of speech: record at least 3 seconds."]
        return QualityReport(
            accepted=not reasons, duration_s=duration, speech_s=duration, level_dbfs=level,
            peak_dbfs=level, clipped_fraction=0.0, noise_dbfs=-math.inf, snr_db=math.inf,
            kept=[(0.0, duration)], reasons=reasons,
        )  # fmt: skip

    async def embed(self, pcm: FloatArray, sample_rate: int) -> EmbeddingResult:
        report = await self.check_quality(pcm, sample_rate)
        if not report.accepted:
            raise QualityRejected(report.reasons[0], report=report)
        return EmbeddingResult(tone_voice(), report)

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        return self._speak(request)

    async def _speak(self, request: SpeechRequest) -> AsyncGenerator[bytes, None]:
        if request.language not in self.languages:
            raise UnsupportedLanguage(f"'{request.language}' is not a language this voice model speaks.")
        if request.embedding.model_id != MODEL_ID:
            raise IncompatibleVoice("This voice was made by another model: enroll again.")
        count = request.max_new_tokens or self.chunks
        try:
            for i in range(count):
                if self.fail_after is not None and i == self.fail_after:
                    raise InvalidRequest("The tone broke.")
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                self.yielded += 1
                yield tone_chunk(i)
            self.finished.set()
        finally:
            self.closed.set()

    async def transcribe(
        self, pcm: FloatArray, sample_rate: int, language: str | None = None
    ) -> Transcription:
        return Transcription(f"{len(pcm)} samples", language or "en", [], len(pcm) / sample_rate)

    async def compare_speakers(self, pcm_a: FloatArray, pcm_b: FloatArray, sample_rate: int) -> SpeakerCheck:
        similarity = float(np.corrcoef(pcm_a[:1000], pcm_b[:1000])[0, 1])
        return SpeakerCheck(similarity=similarity, threshold=0.75, same_speaker=similarity >= 0.75)

    async def match_phrase(self, expected: str, heard: str, language: str = "en") -> PhraseMatch:
        same = normalize_text(expected, language) == normalize_text(heard, language)
        return PhraseMatch(expected, heard, 0.0 if same else 1.0, 0.25, same)

    async def detect_watermark(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        return WatermarkResult(detected=bool(pcm.mean() > 0), confidence=float(pcm.mean() > 0))

    async def ready(self) -> bool:
        return self.is_ready

    async def aclose(self) -> None:
        return None


def speech_pcm(seconds: float, rate: int = RATE) -> FloatArray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)


def audio_json(pcm: FloatArray, rate: int = RATE) -> dict[str, object]:
    return WirePcm.from_array(pcm, rate).model_dump()


def speech_json(language: str = "en", **extra: object) -> dict[str, object]:
    return {"text": "Hello there.", "language": language, "embedding": tone_voice().to_wire(), **extra}


@pytest.fixture
def service() -> ToneService:
    return ToneService()


@pytest.fixture
async def api(service: ToneService) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(service, token=TOKEN, max_body_bytes=1_000_000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    return response.status_code, body["error"]["code"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
async def test_refuses_missing_or_wrong_token(api: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await api.post("/v1/quality", json={"audio": audio_json(speech_pcm(1))}, headers=headers)
    assert error_of(response) == (401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text
    assert error_of(await api.get("/metrics", headers=headers)) == (401, "unauthorized")


async def test_health_and_readiness_need_no_token(api: httpx.AsyncClient, service: ToneService) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).status_code == 200
    service.is_ready = False
    assert error_of(await api.get("/readyz")) == (503, "not_ready")
    assert (await api.get("/healthz")).status_code == 200


async def test_oversized_body_by_declared_length(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/quality", content=b"x" * 1_000_001, headers=AUTH)
    assert error_of(response) == (413, "payload_too_large")


async def test_oversized_body_is_refused_while_reading(api: httpx.AsyncClient) -> None:
    sent = 0

    async def endless_chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # 64 MB if the server read it all
            sent += 1
            yield b"x" * 65_536

    response = await api.post("/v1/quality", content=endless_chunks(), headers=AUTH)
    assert error_of(response) == (413, "payload_too_large")
    assert sent <= 17  # 1 MB limit = 16 chunks (+1 that crosses it): nothing buffered past the limit


def bad_audio(data: bytes, rate: int = RATE, encoding: str = "f32le") -> dict[str, object]:
    return {"sample_rate": rate, "encoding": encoding, "data": base64.b64encode(data).decode()}


@pytest.mark.parametrize(
    ("audio", "words"),
    [
        ({"sample_rate": RATE, "data": "not base64!!"}, "base64"),
        (bad_audio(b"\x00" * 7), "whole number"),
        (bad_audio(b"\x00" * 5, encoding="s16le"), "whole number"),
        (bad_audio(b""), "empty"),
        (bad_audio(np.array([0.1, np.nan], "<f4").tobytes()), "NaN"),
        (bad_audio(np.zeros(100, "<f4").tobytes(), rate=11_025), "11025 Hz"),
    ],
)
async def test_malformed_pcm_is_invalid_audio(
    api: httpx.AsyncClient, audio: dict[str, object], words: str
) -> None:
    response = await api.post("/v1/quality", json={"audio": audio}, headers=AUTH)
    assert error_of(response) == (400, "invalid_audio")
    assert words in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"audio": 3}',
        b'{"text": "hi"}',
        json.dumps(speech_json(max_new_tokens=5, min_new_tokens=9)).encode(),
        json.dumps(speech_json(unknown_field=1)).encode(),
    ],
)
async def test_malformed_body_is_invalid_request(api: httpx.AsyncClient, content: bytes) -> None:
    response = await api.post("/v1/speech", content=content, headers=AUTH)
    assert error_of(response) == (400, "invalid_request")


async def test_unknown_language_and_foreign_voice(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/speech", json=speech_json("xx"), headers=AUTH)
    assert error_of(response) == (422, "unsupported_language")
    foreign = VoiceEmbedding("other-model", np.ones((1, 4, 8), np.float32), np.zeros((1, 8, 1), np.float32))
    body = {**speech_json(), "embedding": foreign.to_wire()}
    assert error_of(await api.post("/v1/speech", json=body, headers=AUTH)) == (409, "incompatible_voice")
    broken = {**speech_json(), "embedding": {"model_id": MODEL_ID}}
    assert error_of(await api.post("/v1/speech", json=broken, headers=AUTH)) == (400, "invalid_request")


def read_frames(body: bytes) -> list[tuple[bytes, bytes]]:
    decoder = FrameDecoder()
    frames = [(f.kind, f.payload) for f in decoder.feed(body)]
    assert decoder.pending == 0
    return frames


async def test_speech_streams_the_exact_pcm(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/speech", json=speech_json(max_new_tokens=5), headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == STREAM_MEDIA_TYPE
    assert response.headers["x-sample-rate"] == "24000"
    assert response.headers["x-sample-format"] == "s16le"
    frames = read_frames(response.content)
    assert [kind for kind, _ in frames] == [FRAME_DATA] * 5 + [FRAME_END]
    pcm = b"".join(payload for kind, payload in frames if kind == FRAME_DATA)
    assert pcm == b"".join(tone_chunk(i) for i in range(5))
    assert json.loads(frames[-1][1]) == {"bytes": len(pcm), "audio_s": 0.5}


async def test_failure_mid_stream_sends_an_error_frame(service: ToneService, api: httpx.AsyncClient) -> None:
    service.fail_after = 2
    response = await api.post("/v1/speech", json=speech_json(), headers=AUTH)
    frames = read_frames(response.content)
    assert [kind for kind, _ in frames] == [FRAME_DATA, FRAME_DATA, FRAME_ERROR]
    assert json.loads(frames[-1][1])["error"]["code"] == "invalid_request"
    assert service.closed.is_set()


async def test_quality_rejection_carries_the_report(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/embeddings", json={"audio": audio_json(speech_pcm(1.0))}, headers=AUTH)
    assert error_of(response) == (422, "quality_rejected")
    report = response.json()["error"]["report"]
    assert report["speech_s"] == 1.0 and report["noise_dbfs"] == "-Infinity"  # strict JSON, no bare -Infinity
    assert "at least 3 seconds" in report["reasons"][0]


async def test_embedding_and_analysis_endpoints(api: httpx.AsyncClient) -> None:
    pcm = speech_pcm(4.0)
    data = (await api.post("/v1/embeddings", json={"audio": audio_json(pcm)}, headers=AUTH)).json()
    assert VoiceEmbedding.from_wire(data["embedding"]).model_id == MODEL_ID
    assert data["quality"]["accepted"] is True
    body = {"audio": audio_json(pcm), "language": "fr"}
    text = (await api.post("/v1/transcriptions", json=body, headers=AUTH)).json()
    assert text == {"text": "64000 samples", "language": "fr", "segments": [], "duration_s": 4.0, "note": ""}
    mark = (
        await api.post("/v1/watermark/detect", json={"audio": audio_json(pcm + 0.5)}, headers=AUTH)
    ).json()
    assert mark == {"detected": True, "confidence": 1.0}


async def test_verify_speakers_and_phrase(api: httpx.AsyncClient) -> None:
    pcm = speech_pcm(2.0)
    body = {
        "audio_a": audio_json(pcm),
        "audio_b": audio_json(pcm),
        "expected": "Blue moon",
        "heard": "blue moon",
    }
    data = (await api.post("/v1/verify", json=body, headers=AUTH)).json()
    assert data["speaker"]["same_speaker"] is True and data["speaker"]["similarity"] == pytest.approx(1.0)
    assert data["phrase"]["matched"] is True
    french = {"expected": "la lune, le café", "heard": "Lune, cafe."}  # the same in French, not in English
    assert (await api.post("/v1/verify", json=french | {"language": "fr"}, headers=AUTH)).json()["phrase"][
        "matched"
    ]
    assert not (await api.post("/v1/verify", json=french, headers=AUTH)).json()["phrase"]["matched"]
    too_long = french | {"language": "x" * 17}
    assert error_of(await api.post("/v1/verify", json=too_long, headers=AUTH)) == (400, "invalid_request")
    only_a = {"audio_a": audio_json(pcm)}
    assert error_of(await api.post("/v1/verify", json=only_a, headers=AUTH)) == (400, "invalid_request")
    rates = {"audio_a": audio_json(pcm), "audio_b": audio_json(pcm, 48_000)}
    assert error_of(await api.post("/v1/verify", json=rates, headers=AUTH)) == (400, "invalid_audio")


async def test_unexpected_failure_is_internal_without_details(
    api: httpx.AsyncClient,
    service: ToneService,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        raise RuntimeError("CUDA error: secret internals")

    monkeypatch.setattr(service, "detect_watermark", broken)
    response = await api.post("/v1/watermark/detect", json={"audio": audio_json(speech_pcm(1))}, headers=AUTH)
    assert error_of(response) == (500, "internal")
    assert "secret internals" not in response.text
    assert "detect_watermark failed" in caplog.text


async def test_unknown_path_is_a_json_error(api: httpx.AsyncClient) -> None:
    assert error_of(await api.get("/v2/nothing", headers=AUTH)) == (404, "not_found")
    assert error_of(await api.get("/v1/speech", headers=AUTH)) == (405, "method_not_allowed")


async def test_metrics_count_requests_and_streams(api: httpx.AsyncClient, service: ToneService) -> None:
    await api.post("/v1/speech", json=speech_json(max_new_tokens=4), headers=AUTH)
    await api.post("/v1/speech", json=speech_json("xx"), headers=AUTH)
    await api.post("/v1/quality", content=b"{}", headers={"Authorization": "Bearer nope"})
    service.queue_depth = 3
    text = (await api.get("/metrics", headers=AUTH)).text
    assert 'voxclone_worker_requests_total{code="200",endpoint="/v1/speech"} 1.0' in text
    assert 'voxclone_worker_requests_total{code="422",endpoint="/v1/speech"} 1.0' in text
    assert 'voxclone_worker_requests_total{code="401",endpoint="/v1/quality"} 1.0' in text
    assert "voxclone_worker_time_to_first_chunk_seconds_count 1.0" in text
    assert "voxclone_worker_realtime_factor_count 1.0" in text
    assert "voxclone_worker_synthesized_audio_seconds_total 0.4" in text
    assert "voxclone_worker_queue_depth 3.0" in text
    assert 'voxclone_worker_request_duration_seconds_count{endpoint="/v1/speech"} 2.0' in text


async def test_each_app_has_its_own_metrics() -> None:
    apps = [create_app(ToneService(), token=None) for _ in range(2)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[0]), base_url="http://a") as client:
        await client.get("/healthz")
        assert 'endpoint="/healthz"} 1.0' in (await client.get("/metrics")).text
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[1]), base_url="http://b") as client:
        assert 'endpoint="/healthz"' not in (await client.get("/metrics")).text


def test_the_test_service_is_a_speech_service() -> None:
    assert isinstance(ToneService(), SpeechService)
