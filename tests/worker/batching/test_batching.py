"""Continuous batching on a generated tiny XTTS checkpoint: batched audio equals one-by-one audio.

Every request decoded in a batch must come out as it does alone through ``XttsEngine.stream`` (same
chunk sizes, samples within 2 LSB of int16): the batch changes only the shapes of the float32 matrix
products, so latents differ by rounding (~1e-6), which HiFi-GAN carries to the waveform and int16
quantisation turns into at most one step where a sample sits on a rounding boundary. A different token
anywhere would change whole chunks by thousands of LSB. Rows join, leave, pause and are cancelled
between steps without disturbing the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from core.engine_settings import EngineSettings
from core.settings import load_settings
from worker.batching import decoder as batch_gpt
from worker.batching.decoder import BatchDecoder, fused_activation, gelu_epilogue
from worker.batching.graphs import FastDecode, VocoderGraphs, resolve_fast_decode
from worker.batching.synthesis import BatchSynthesis
from worker.errors import InternalWorkerError, SynthesisCancelled, WorkerBusy
from worker.serving.engine import XttsEngine
from worker.serving.scheduler import SynthesisScheduler, SynthesisStream
from worker.tts.gpt import SamplingParams
from worker.tts.speech import StreamStats
from worker.tts.vocoder import StreamingVocoder, VocoderPrecision, decode_windows
from worker.types import SpeechRequest, VoiceEmbedding

TOLERANCE_LSB = 2  # int16 steps; see the module docstring


@pytest.fixture(scope="module")
def engine(tiny_xtts_dir: Path) -> XttsEngine:
    torch.set_num_threads(2)
    return XttsEngine.load(tiny_xtts_dir, "cpu")


@pytest.fixture(scope="module")
def greedy(engine: XttsEngine) -> XttsEngine:
    params = SamplingParams(greedy=True, repetition_penalty=engine.sampling.repetition_penalty)
    return XttsEngine(engine.model, engine.model_id, "cpu", sampling=params)


@pytest.fixture(scope="module")
def voice(engine: XttsEngine) -> VoiceEmbedding:
    rate = 22_050
    t = np.arange(3 * rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return engine.embed(tone.astype(np.float32), rate)


def req(voice: VoiceEmbedding, text: str, tokens: int, seed: int, language: str = "en") -> SpeechRequest:
    return SpeechRequest(text, language, voice, max_new_tokens=tokens, min_new_tokens=tokens, seed=seed)


def mixed(voice: VoiceEmbedding) -> list[SpeechRequest]:
    """Different text lengths, token counts, languages and sentence counts."""
    return [
        req(voice, "Hello world.", 16, 1),
        req(voice, "Bonjour à tous. Ceci est une deuxième phrase.", 10, 2, "fr"),
        req(voice, "Short!", 26, 3),
        req(voice, "the quick brown fox jumps over the lazy dog", 7, 4),
    ]


def alone(engine: XttsEngine, request: SpeechRequest) -> list[np.ndarray]:
    return list(engine.stream(request, threading.Event()))


def assert_same_audio(batched: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert [c.size for c in batched] == [c.size for c in reference]
    diff = np.abs(np.concatenate(batched).astype(np.int32) - np.concatenate(reference).astype(np.int32))
    assert diff.max() <= TOLERANCE_LSB
    assert np.abs(np.concatenate(reference)).max() > 100  # real audio, not silence on both sides


async def read_all(stream: SynthesisStream) -> list[np.ndarray]:
    return [chunk async for chunk in stream]


async def batched(
    engine: XttsEngine, requests: list[SpeechRequest], max_batch: int
) -> list[list[np.ndarray]]:
    """The requests submitted at once to a batching scheduler, each stream read to its end."""
    scheduler = SynthesisScheduler(engine, max_queue=len(requests), max_batch=max_batch)
    try:
        return await asyncio.gather(*(read_all(scheduler.submit(r)) for r in requests))
    finally:
        scheduler.close()


async def until(condition: Any, timeout: float = 20.0) -> None:
    """Wait until ``condition()`` holds (the engine thread moves on its own)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting for the scheduler")


@pytest.fixture
def rows_seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many rows each batched decode step advanced."""
    seen: list[int] = []
    original = BatchDecoder.launch

    def spy(self: BatchDecoder, active: list[bool], uniforms: list[float]) -> Any:
        seen.append(sum(active))
        return original(self, active, uniforms)

    monkeypatch.setattr(BatchDecoder, "launch", spy)
    yield seen


@pytest.fixture(params=["unpipelined", "pipelined"])
def pipeline(request: pytest.FixtureRequest, engine: XttsEngine, greedy: XttsEngine) -> Iterator[bool]:
    """Both engine loops: each step read before the next is launched (the CPU default), and launched
    before the last is read (CUDA's, ``VOXCLONE_PIPELINE``)."""
    on = request.param == "pipelined"
    before = engine.pipeline, greedy.pipeline
    engine.pipeline = greedy.pipeline = on  # sessions opened from here on
    yield on
    engine.pipeline, greedy.pipeline = before


# ----- same audio, batched or not --------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["greedy", "seeded"])
async def test_batched_equals_one_by_one(
    engine: XttsEngine,
    greedy: XttsEngine,
    voice: VoiceEmbedding,
    rows_seen: list[int],
    sampling: str,
    pipeline: bool,
) -> None:
    chosen = greedy if sampling == "greedy" else engine
    requests = mixed(voice)
    outputs = await batched(chosen, requests, max_batch=4)
    assert max(rows_seen) == 4  # all four really shared decode steps
    for got, request in zip(outputs, requests, strict=True):
        assert_same_audio(got, alone(chosen, request))


async def test_rows_join_and_leave_mid_flight(
    engine: XttsEngine, voice: VoiceEmbedding, rows_seen: list[int], pipeline: bool
) -> None:
    first = [
        req(voice, "Hello world.", 8, 5),
        req(voice, "Short!", 40, 6),
        req(voice, "Good morning.", 24, 7),
    ]
    late = req(voice, "the lazy dog sleeps", 10, 8)
    scheduler = SynthesisScheduler(engine, max_queue=4, max_batch=3)
    try:
        streams = [scheduler.submit(r) for r in first]
        tasks = [asyncio.create_task(read_all(s)) for s in streams]
        short = await tasks[0]  # the first row leaves: the last row moves into its slot
        tokens_when_joining = streams[1].stats.tokens
        late_audio = await read_all(scheduler.submit(late))
        results = [short, *(await asyncio.gather(*tasks[1:])), late_audio]
    finally:
        scheduler.close()
    assert 0 < tokens_when_joining < 40  # the late request joined a batch still decoding
    assert 3 in rows_seen
    for got, request in zip(results, [*first, late], strict=True):
        assert_same_audio(got, alone(engine, request))


async def test_cancelling_one_leaves_the_others_intact(
    engine: XttsEngine, voice: VoiceEmbedding, pipeline: bool
) -> None:
    keep = [req(voice, "Hello world.", 24, 9), req(voice, "Good morning.", 20, 10)]
    scheduler = SynthesisScheduler(engine, max_queue=4, max_batch=3)
    try:
        doomed = scheduler.submit(req(voice, "Short!", 300, 11))
        kept = [asyncio.create_task(read_all(scheduler.submit(r))) for r in keep]
        await anext(doomed)
        doomed.cancel()
        with pytest.raises(SynthesisCancelled):
            await read_all(doomed)
        results = await asyncio.gather(*kept)
    finally:
        scheduler.close()
    assert doomed.stats.cancelled and doomed.stats.tokens < 100
    for got, request in zip(results, keep, strict=True):
        assert_same_audio(got, alone(engine, request))


def test_a_pipelined_session_launches_each_step_before_reading_the_last(
    engine: XttsEngine, voice: VoiceEmbedding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device gets step n + 1 before the host reads step n; each sentence's end costs one dropped
    token (the step launched meanwhile advanced that row once more), and the audio is each stream's own
    (seeded sampling: a dropped step's random draw is given back, or the next sentence would differ)."""
    from worker.batching.decoder import PendingStep

    order: list[str] = []
    advanced: list[int] = []
    launch, result = BatchDecoder.launch, PendingStep.result

    def launched(self: BatchDecoder, active: list[bool], uniforms: list[float]) -> Any:
        order.append("launch")
        advanced.append(sum(active))
        return launch(self, active, uniforms)

    def read(self: PendingStep) -> Any:
        order.append("read")
        return result(self)

    monkeypatch.setattr(BatchDecoder, "launch", launched)
    monkeypatch.setattr(PendingStep, "result", read)
    monkeypatch.setattr(engine, "pipeline", True)
    requests = [
        req(voice, "Bonjour à tous. Ceci est une deuxième phrase.", 10, 2, "fr"),  # two sentences
        req(voice, "Hello world.", 16, 1),
        req(voice, "Short!", 6, 3),
    ]
    speeches = {str(i): engine.prepare(r) for i, r in enumerate(requests)}
    stats = {key: StreamStats() for key in speeches}
    session = engine.open_batch(3)
    try:
        chunks = drive(session, speeches, stats)
    finally:
        session.close()
    assert order[:3] == ["launch", "launch", "read"]  # the second step went out before the first was read
    assert order.count("read") == order.count("launch") - 1  # the last, launched as the last sentence ended
    sentences = sum(len(speech.sentences) for speech in speeches.values())
    assert sentences == 4
    decoded = sum(s.tokens for s in stats.values()) - sentences  # each sentence's first token: its prefill
    assert sum(advanced) - decoded == sentences  # one dropped token per sentence end
    for i, request in enumerate(requests):
        assert_same_audio(chunks[str(i)], alone(engine, request))


def test_random_joins_holds_and_cancels_leave_each_stream_its_own_audio(
    engine: XttsEngine, voice: VoiceEmbedding, pipeline: bool
) -> None:
    """Requests join at random steps, streams are held at random (a listener behind), some are
    cancelled mid-flight, rows move when others leave; every stream that finishes has its own audio."""
    import random

    rng = random.Random(6)
    texts = ["Hello world.", "Short!", "Good morning. How are you today?", "One. Two. Three.", "the lazy dog"]
    waiting = [
        SpeechRequest(
            rng.choice(texts),
            "en",
            voice,
            max_new_tokens=rng.randint(3, 30),
            min_new_tokens=rng.choice([0, 3]),
            seed=rng.randint(0, 99),
        )
        for _ in range(7)
    ]
    requests: dict[str, SpeechRequest] = {}
    chunks: dict[str, list[np.ndarray]] = {}
    finished: set[str] = set()
    cancelled: set[str] = set()
    session = engine.open_batch(4)
    try:
        while waiting or session.keys:
            if waiting and session.free and rng.random() < 0.3:
                key = f"r{len(requests)}"
                requests[key], chunks[key] = waiting.pop(), []
                session.add(key, engine.prepare(requests[key]), StreamStats())
            if session.keys and rng.random() < 0.02:
                key = str(rng.choice(session.keys))
                session.remove(key)
                cancelled.add(key)
            for out in session.step({key for key in session.keys if rng.random() < 0.2}):
                assert out.error is None
                chunks[out.key] += out.chunks  # type: ignore[index]
                if out.done:
                    finished.add(out.key)  # type: ignore[arg-type]
    finally:
        session.close()
    assert len(requests) == 7 and finished | cancelled == set(requests) and not finished & cancelled
    assert len(finished) >= 4
    for key in finished:
        reference = alone(engine, requests[key])
        assert [c.size for c in chunks[key]] == [c.size for c in reference]
        if reference:
            got, want = np.concatenate(chunks[key]), np.concatenate(reference)
            assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= TOLERANCE_LSB


class LateEvent:
    """Plays a CUDA event of queued vocoder work: not done for the first ``polls`` queries."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def query(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def synchronize(self) -> None:
        self.polls = 0


@pytest.fixture
def late_vocoder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every vocoder launch finishes 1-3 polls after it was made, as with HiFi-GAN on a second CUDA stream.

    Returns how many polls each launch was held back for.
    """
    held: list[int] = []
    original = BatchSynthesis._launch
    rng = np.random.default_rng(0)

    def launch(self: BatchSynthesis, due: Any, ends: Any) -> Any:
        made = original(self, due, ends)
        held.append(int(rng.integers(1, 4)))
        made.event = LateEvent(held[-1])
        return made

    monkeypatch.setattr(BatchSynthesis, "_launch", launch)
    return held


async def test_audio_that_comes_back_late_comes_out_in_order_and_unchanged(
    engine: XttsEngine, voice: VoiceEmbedding, late_vocoder: list[int], rows_seen: list[int], pipeline: bool
) -> None:
    requests = mixed(voice)
    outputs = await batched(engine, requests, max_batch=4)
    assert max(rows_seen) == 4 and len(late_vocoder) >= 5  # shared steps; every launch came back late
    for got, request in zip(outputs, requests, strict=True):
        assert_same_audio(got, alone(engine, request))


def test_a_stream_cancelled_while_its_last_audio_is_in_flight_gets_none_of_it(
    engine: XttsEngine, voice: VoiceEmbedding, late_vocoder: list[int], pipeline: bool
) -> None:
    session = engine.open_batch(2)
    try:
        short, long = engine.prepare(req(voice, "Hello.", 5, 1)), engine.prepare(req(voice, "Short!", 30, 2))
        session.add("short", short, StreamStats())
        session.add("long", long, StreamStats())
        outputs: list[Any] = []
        while session.decoder.rows == 2:
            outputs += session.step()
        # "short" has finished decoding: its row is free, but its last audio has not come back yet.
        late_vocoder.clear()
        assert session.free == 1 and set(session.keys) == {"short", "long"}
        session.remove("short")
        assert session.keys == ["long"]
        while session.keys:
            outputs += session.step()
    finally:
        session.close()
    assert not any(out.done for out in outputs if out.key == "short")
    assert [out.key for out in outputs if out.done] == ["long"]


def drive(
    session: BatchSynthesis, speeches: dict[str, Any], stats: dict[str, StreamStats] | None = None
) -> dict[str, list[np.ndarray]]:
    """Run ``speeches`` (key → prepared speech) in ``session`` to their ends; each key's chunks.
    ``stats``: each key's stream statistics, filled in."""
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in speeches}
    for key, speech in speeches.items():
        session.add(key, speech, stats[key] if stats is not None else StreamStats())
    while session.keys:
        for out in session.step():
            assert out.error is None
            chunks[out.key] += out.chunks  # type: ignore[index]
    return chunks


def test_the_gpu_shapes_of_vocoder_calls_change_no_sample(
    engine: XttsEngine, voice: VoiceEmbedding, late_vocoder: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on CUDA: windows widened to multiples of 48 frames with real left context, non-final ones
    right-padded and stacked in calls of 1/2/4/… rows with zero rows filling up; audio handed out late."""
    calls: list[tuple[int, ...]] = []
    decoder = engine.model.hifigan_decoder.waveform_decoder
    hook = decoder.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape)))
    requests = [*mixed(voice), req(voice, "And a fifth one.", 30, 5)]
    session = engine.open_batch(5)
    session.batch_vocoder = True  # what DecoderPool.open sets on CUDA
    try:
        got = drive(session, {str(i): engine.prepare(r) for i, r in enumerate(requests)})
    finally:
        session.close()
        hook.remove()
    for i, request in enumerate(requests):
        assert_same_audio(got[str(i)], alone(engine, request))
    batched = [shape for shape in calls if shape[0] > 1]
    assert batched and all(shape[0] in (2, 4, 8) for shape in batched)  # 3 or 5 windows: padded up
    assert all(shape[2] % 48 == 0 for shape in batched)


def test_prewarm_runs_every_standard_shape(engine: XttsEngine) -> None:
    from worker.tts.vocoder import prewarm

    calls: list[tuple[int, ...]] = []
    decoder = engine.model.hifigan_decoder.waveform_decoder
    hook = decoder.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape)))
    try:
        assert prewarm(engine.model.hifigan_decoder, streams=3, step=16, widths=2) == 6
    finally:
        hook.remove()
    assert [(b, w) for b, _, w in calls] == [(1, 16), (1, 32), (2, 16), (2, 32), (4, 16), (4, 32)]


class StandInGraph:
    """Plays torch.cuda.CUDAGraph on the CPU: replay re-runs the captured call on the same buffers."""

    recording: StandInGraph | None = None
    replays: ClassVar[Counter[str]] = Counter()  # replays per captured method

    def __init__(self) -> None:
        self.call: functools.partial[None] | None = None

    def replay(self) -> None:
        assert self.call is not None
        StandInGraph.replays[self.call.func.__name__] += 1
        self.call()


ORIGINAL_RUN_STEP = BatchDecoder.run_step
ORIGINAL_RUN_PREFILL = BatchDecoder.run_prefill
ORIGINAL_VOCODER_FORWARD = VocoderGraphs.forward


@pytest.fixture
def stand_in_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.cuda's graph API replaced by CPU stand-ins, so batch_graphs' capture logic runs here."""
    import contextlib
    from types import SimpleNamespace

    stream = SimpleNamespace(wait_stream=lambda other: None)

    @contextlib.contextmanager
    def graph(g: StandInGraph, **kwargs: object) -> Iterator[None]:
        assert kwargs["capture_error_mode"] == "thread_local"
        StandInGraph.recording = g
        yield
        StandInGraph.recording = None

    def recorded(original: Any) -> Any:
        def run(self: Any, *shape: int, **options: Any) -> None:
            if StandInGraph.recording is not None:  # captured: replays run it again at this shape
                StandInGraph.recording.call = functools.partial(original, self, *shape, **options)
            original(self, *shape, **options)

        return run

    monkeypatch.setattr(BatchDecoder, "run_step", recorded(ORIGINAL_RUN_STEP))
    monkeypatch.setattr(BatchDecoder, "run_prefill", recorded(ORIGINAL_RUN_PREFILL))
    monkeypatch.setattr(VocoderGraphs, "forward", recorded(ORIGINAL_VOCODER_FORWARD))
    for name, value in {
        "graph_pool_handle": lambda: object(),
        "Stream": lambda device=None: stream,
        "current_stream": lambda device=None: stream,
        "stream": lambda s: contextlib.nullcontext(),
        "CUDAGraph": StandInGraph,
        "graph": graph,
        "synchronize": lambda device=None: None,
    }.items():
        monkeypatch.setattr(torch.cuda, name, value)


def test_graph_capture_and_replay_logic(
    greedy: XttsEngine, voice: VoiceEmbedding, stand_in_cuda: None
) -> None:
    """The CUDA-graph path's bookkeeping on the CPU: a graph per bucket, checked, then replayed.

    Replays run at bucket shapes: three rows in a batch of four, 60-odd positions in a cache window of
    128; prefixes of 20-odd positions in a prefill 64 wide; six joiners at once prefilled four, then
    two. The spare rows and positions must change nothing.
    """
    from worker.batching.graphs import capture_prefills, capture_steps

    engine = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    session = engine.open_batch(8)
    decoder = session.decoder
    assert capture_steps(decoder) and capture_prefills(decoder)
    assert set(decoder.replay) == {(b, n) for b in (1, 2, 4, 8) for n in decoder.lengths}
    assert decoder.lengths[0] == 128 and decoder.max_positions % 64 == 0
    assert set(decoder.prefill_replay) == {(r, w) for r in (1, 2, 3, 4) for w in decoder.prefill_widths}
    assert decoder.prefill_widths[0] == 64 and decoder.prefill_widths[-1] == decoder.max_positions
    session.graphs = True
    requests = [*mixed(voice), req(voice, "Good morning.", 12, 21), req(voice, "See you soon.", 9, 22)]
    before = Counter(StandInGraph.replays)
    # Driven directly, not through a scheduler: all six join before the first step, whatever the timing.
    try:
        got = drive(session, {str(i): engine.prepare(r) for i, r in enumerate(requests)})
    finally:
        session.close()
    outputs = [got[str(i)] for i in range(len(requests))]
    replays = StandInGraph.replays - before
    assert replays["run_step"] >= 25  # every step after the prefill (26 tokens) was a replay
    # Six joiners in groups of four and two, then the French request's second sentence alone.
    assert replays["run_prefill"] == 3
    for got, request in zip(outputs, requests, strict=True):
        assert_same_audio(got, alone(engine, request))


def test_a_lone_stream_steps_at_one_row_with_graphs(
    greedy: XttsEngine, voice: VoiceEmbedding, stand_in_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With graphs a lone stream's step runs at one row (padding it to two measured no faster on an
    H200: bench/README.md), and its audio is the stream's own."""
    from worker.batching.graphs import capture_steps
    from worker.batching.synthesis import max_positions

    gpt = greedy.model.gpt
    decoder = BatchDecoder(gpt, greedy.sampling, capacity=4, max_positions=max_positions(gpt), device="cpu")
    assert decoder.batch_sizes == (1, 2, 4)
    assert capture_steps(decoder) and {b for b, _ in decoder.replay} == {1, 2, 4}
    shapes: list[tuple[int, int]] = []
    shape_for_step = BatchDecoder.shape_for_step

    def spy(self: BatchDecoder, graphs: bool) -> tuple[int, int]:
        shapes.append(shape_for_step(self, graphs))
        return shapes[-1]

    monkeypatch.setattr(BatchDecoder, "shape_for_step", spy)
    request = req(voice, "Hello world.", 16, 1)
    got = alone_with_graphs(greedy, decoder, request)
    assert len(shapes) == 15 and {batch for batch, _ in shapes} == {1}  # 16 tokens: 1 prefilled
    assert_same_audio(got, alone(greedy, request))


def alone_with_graphs(engine: XttsEngine, decoder: BatchDecoder, request: SpeechRequest) -> list[np.ndarray]:
    """``request``'s chunks, decoded alone in a session on ``decoder`` replaying its captured graphs."""
    session = BatchSynthesis(engine, decoder, graphs=True, batch_vocoder=False)
    try:
        return drive(session, {"alone": engine.prepare(request)})["alone"]
    finally:
        session.close(reuse=False)


def test_timed_attention_keeps_the_fastest_captured_step_per_shape(
    greedy: XttsEngine,
    voice: VoiceEmbedding,
    stand_in_cuda: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With timed attention the step is captured with PyTorch's attention and with the fused kernel at
    each block size; each shape keeps the graph that timed fastest, the fused kernel only by more than the
    margin, every row at the bucket's end while timed. The timings here are made up per shape (the timer
    itself: a test below); the kernel runs in Triton's interpreter. A stream replaying a fused graph gets
    its own audio."""
    from worker.batching import graphs as batch_graphs
    from worker.batching.graphs import capture_steps
    from worker.kernels.attention import BLOCKS

    assert BLOCKS == (64, 32)
    # 256 positions hold the request below: two cache lengths, 128 and 256, to capture
    decoder = BatchDecoder(
        greedy.model.gpt, greedy.sampling, capacity=2, max_positions=256, device="cpu",
        fused_attention=False, timed_attention=True,
    )  # fmt: skip
    short, long = decoder.lengths
    made_up = {  # ms per replay: PyTorch's attention, the fused kernel with blocks of 64, of 32
        (1, short): (2.0, 1.2, 1.0), (2, short): (2.0, 1.0, 1.5), (1, long): (2.0, 1.99, 2.5),
        (2, long): (1.0, 2.0, 3.0),
    }  # fmt: skip
    timed: list[tuple[int, int]] = []

    def timing(graphs: list[StandInGraph], device: torch.device) -> list[float]:
        calls = [graph.call for graph in graphs]
        assert [call.keywords for call in calls if call is not None] == [
            {"attention": 0}, {"attention": 64}, {"attention": 32},
        ]  # fmt: skip
        batch, length = calls[0].args[1:]  # type: ignore[union-attr]
        assert all(call.args[1:] == (batch, length) for call in calls)  # type: ignore[union-attr]
        assert decoder.pos.tolist() == [length - 1] * 2 and not decoder.active.any()
        timed.append((batch, length))
        return list(made_up[(batch, length)])

    monkeypatch.setattr(batch_graphs, "_replay_ms", timing)
    with caplog.at_level(logging.INFO, logger="worker.batching.graphs"):
        assert capture_steps(decoder)
    shapes = {(b, n) for b in (1, 2) for n in decoder.lengths}
    assert set(decoder.replay) == set(timed) == shapes and len(timed) == len(shapes)
    kept = {(1, short): 32, (2, short): 64, (1, long): 0, (2, long): 0}  # 0.5 % faster is noise
    assert decoder.attention_at == kept
    for shape, graph in decoder.replay.items():
        assert graph.call.keywords == {"attention": kept[shape]}
    assert decoder.attention_ms == made_up
    assert "the fused kernel at 2 of 4 shapes (50% to 50% faster there)" in caplog.text
    assert not decoder.pos.any()  # the timing's state is gone

    blocks: list[int] = []
    original = batch_gpt.decode_attention

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        blocks.append(kwargs["block"])
        return original(*args, **kwargs)

    monkeypatch.setattr(batch_gpt, "decode_attention", counting)
    request = req(voice, "Hello world.", 12, 5)
    got = alone_with_graphs(greedy, decoder, request)
    assert blocks == [32] * 11 * len(decoder.blocks)  # every step after the prefill replayed (1, short)
    assert_same_audio(got, alone(greedy, request))


def test_a_failure_while_timing_the_attention_keeps_pytorchs(
    greedy: XttsEngine, stand_in_cuda: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.batching import graphs as batch_graphs
    from worker.batching.graphs import capture_steps

    decoder = BatchDecoder(
        greedy.model.gpt, greedy.sampling, capacity=2, max_positions=128, device="cpu",
        fused_attention=False, timed_attention=True,
    )  # fmt: skip
    timings = iter([[2.0, 1.0, 1.5]])  # the first shape's fused step is faster, then the device fails

    def timing(graphs: list[StandInGraph], device: torch.device) -> list[float]:
        for timed in timings:
            return timed
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(batch_graphs, "_replay_ms", timing)
    with caplog.at_level(logging.WARNING, logger="worker.batching.graphs"):
        assert capture_steps(decoder)  # the decoder still has its (PyTorch-attention) graphs
    assert "timing the fused attention failed: keeping PyTorch's attention" in caplog.text
    assert set(decoder.replay) == {(1, 128), (2, 128)} and not any(decoder.attention_at.values())
    assert all(graph.call.keywords == {"attention": 0} for graph in decoder.replay.values())
    assert decoder.attention_ms == {} and not decoder.active.any() and not decoder.pos.any()


def test_a_block_size_whose_capture_fails_is_left_out_of_the_timing(
    greedy: XttsEngine, stand_in_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.batching import graphs as batch_graphs
    from worker.batching.graphs import capture_steps

    decoder = BatchDecoder(
        greedy.model.gpt, greedy.sampling, capacity=1, max_positions=128, device="cpu",
        fused_attention=False, timed_attention=True,
    )  # fmt: skip
    original = batch_gpt.decode_attention

    def failing_at_64(*args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs["block"] == 64:
            raise RuntimeError("out of resources: shared memory")
        return original(*args, **kwargs)

    def timing(graphs: list[StandInGraph], device: torch.device) -> list[float]:
        assert [graph.call.keywords for graph in graphs] == [{"attention": 0}, {"attention": 32}]  # type: ignore[union-attr]
        return [2.0, 1.0]

    monkeypatch.setattr(batch_gpt, "decode_attention", failing_at_64)
    monkeypatch.setattr(batch_graphs, "_replay_ms", timing)
    assert capture_steps(decoder)
    assert decoder.attention_at == {(1, 128): 32} and decoder.replay[(1, 128)].call.keywords == {
        "attention": 32
    }  # type: ignore[attr-defined]
    plain, at_64, at_32 = decoder.attention_ms[(1, 128)]
    assert (plain, at_32) == (2.0, 1.0) and math.isnan(at_64)


def test_replay_timing_takes_turns_and_reads_the_median_round(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.batching import graphs as batch_graphs

    order: list[str] = []
    waits: list[object] = []

    class Sleeper:
        def __init__(self, name: str, seconds: float) -> None:
            self.name, self.seconds = name, seconds

        def replay(self) -> None:
            order.append(self.name)
            time.sleep(self.seconds)

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waits.append(device))
    device = torch.device("cpu")
    fast_ms, slow_ms = batch_graphs._replay_ms([Sleeper("fast", 0.001), Sleeper("slow", 0.004)], device)
    assert 1.0 <= fast_ms < slow_ms and slow_ms >= 4.0
    rounds, per_round = batch_graphs.REPLAY_ROUNDS, batch_graphs.REPLAYS_PER_ROUND
    assert order == ["fast", "slow"] + (["fast"] * per_round + ["slow"] * per_round) * rounds
    assert waits == [device] * (4 * rounds)  # before and after each round: the device's time, not the host's


def test_a_failed_capture_falls_back_to_eager(
    greedy: XttsEngine, stand_in_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.batching.graphs import capture_steps

    def broken(self: StandInGraph) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(StandInGraph, "replay", broken)
    session = greedy.open_batch(2)
    try:
        assert not capture_steps(session.decoder)
        assert not session.decoder.replay and session.decoder.rows == 0
    finally:
        session.close(reuse=False)


def test_a_failed_prefill_capture_keeps_the_captured_steps(
    greedy: XttsEngine, stand_in_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.batching.graphs import capture_prefills, capture_steps

    def broken(self: BatchDecoder, rows: int, width: int) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    session = greedy.open_batch(2)
    try:
        assert capture_steps(session.decoder)
        monkeypatch.setattr(BatchDecoder, "run_prefill", broken)
        assert not capture_prefills(session.decoder)
        assert session.decoder.replay and not session.decoder.prefill_replay
        assert session.decoder.rows == 0
    finally:
        session.close(reuse=False)


def test_a_prefill_graph_that_disagrees_is_not_used(
    greedy: XttsEngine, stand_in_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.batching.graphs import capture_prefills

    def wrong(self: StandInGraph) -> None:
        assert self.call is not None
        self.call()
        self.call.args[0].p_latent += 1.0  # a graph that computes something else

    monkeypatch.setattr(StandInGraph, "replay", wrong)
    session = greedy.open_batch(2)
    try:
        assert not capture_prefills(session.decoder)
        assert not session.decoder.prefill_replay
    finally:
        session.close(reuse=False)


def test_the_mlp_activation_is_fused_only_when_it_is_the_same_function() -> None:
    from transformers.activations import NewGELUActivation

    gelu_new = NewGELUActivation()
    fused = fused_activation(gelu_new)
    assert fused is not gelu_new
    x = torch.randn(4096) * 4
    assert torch.allclose(fused(x), gelu_new(x), rtol=1e-5, atol=1e-6)
    relu = torch.nn.ReLU()
    assert fused_activation(relu) is relu
    exact_gelu = torch.nn.GELU()  # erf-GELU differs from tanh-GELU by up to ~5e-4: kept as it is
    assert fused_activation(exact_gelu) is exact_gelu


def _tanh_gelu_addmm(calls: list[int]) -> Any:
    """A stand-in for CUDA's ``torch._addmm_activation``: bias + GEMM + tanh-GELU (the CPU's op is erf)."""

    def op(
        bias: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, *, use_gelu: bool = False
    ) -> torch.Tensor:
        assert use_gelu
        calls.append(x.shape[0])
        return torch.nn.functional.gelu(torch.addmm(bias, x, weight), approximate="tanh")

    return op


def test_the_gelu_epilogue_is_used_only_where_it_is_tanh_gelu_on_the_linears_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers.pytorch_utils import Conv1D

    tanh_gelu = functools.partial(torch.nn.functional.gelu, approximate="tanh")
    c_fc = Conv1D(64, 16)  # GPT-2's layout: weight [in, out]
    assert not gelu_epilogue(c_fc, tanh_gelu)  # the CPU's op is erf-GELU: the probe tells them apart
    monkeypatch.setattr(torch, "_addmm_activation", _tanh_gelu_addmm([]))  # as CUDA computes it
    assert gelu_epilogue(c_fc, tanh_gelu)
    assert not gelu_epilogue(c_fc, torch.nn.GELU())  # an erf-GELU MLP keeps its two ops
    assert not gelu_epilogue(c_fc, torch.relu)
    assert not gelu_epilogue(torch.nn.Linear(16, 16), tanh_gelu)  # weight [out, in]: square, still caught
    assert not gelu_epilogue(torch.nn.Linear(16, 64), tanh_gelu)
    monkeypatch.delattr(torch, "_addmm_activation")
    assert not gelu_epilogue(c_fc, tanh_gelu)


def test_a_decoder_with_the_gelu_epilogue_computes_the_same_steps(
    greedy: XttsEngine, voice: VoiceEmbedding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the stand-in op (CUDA's function, the same float32 operations as the two ops on the CPU)
    every step's latents are bit for bit those of a decoder without it, and so is the audio."""
    from worker.batching.synthesis import max_positions

    gpt = greedy.model.gpt
    requests = {"a": req(voice, "Hello world.", 12, 1), "b": req(voice, "Short!", 9, 2)}

    def run() -> tuple[BatchDecoder, list[torch.Tensor], dict[str, list[np.ndarray]]]:
        decoder = BatchDecoder(
            gpt, greedy.sampling, capacity=4, max_positions=max_positions(gpt), device="cpu"
        )
        latents: list[torch.Tensor] = []
        launch = decoder.launch

        def recorded(*args: Any) -> Any:
            pending = launch(*args)
            latents.append(pending.latents)
            return pending

        decoder.launch = recorded  # type: ignore[method-assign]
        session = BatchSynthesis(greedy, decoder, graphs=False, batch_vocoder=False)
        try:
            got = drive(session, {key: greedy.prepare(r) for key, r in requests.items()})
        finally:
            session.close(reuse=False)
        return decoder, latents, got

    plain, plain_latents, _ = run()
    assert not plain.gelu_epilogue
    calls: list[int] = []
    monkeypatch.setattr(torch, "_addmm_activation", _tanh_gelu_addmm(calls))
    fused, fused_latents, got = run()
    assert fused.gelu_epilogue
    assert calls.count(2) >= 8 * len(fused.blocks)  # steps with both rows went through the fused op
    assert len(fused_latents) == len(plain_latents) >= 11
    assert all(torch.equal(a, b) for a, b in zip(fused_latents, plain_latents, strict=True))
    for key, request in requests.items():
        assert_same_audio(got[key], alone(greedy, request))


# ----- flow control ----------------------------------------------------------------------------------


async def test_a_slow_listener_pauses_only_its_own_row(
    engine: XttsEngine, voice: VoiceEmbedding, pipeline: bool
) -> None:
    plan = engine.chunks
    # Chunks end at 8, 24 and 51 tokens: one is read, one fills the channel, the third waits in an outbox.
    held_at = plan.first_tokens + plan.after(plan.first_tokens) + plan.after(plan.after(plan.first_tokens))
    scheduler = SynthesisScheduler(engine, max_queue=2, buffer_chunks=1, max_batch=2)
    try:
        slow = scheduler.submit(req(voice, "Short!", 300, 12))
        await anext(slow)  # then nobody reads it
        await until(lambda: slow.stats.tokens >= held_at)
        fast_request = req(voice, "Hello world.", 30, 13)
        fast = await read_all(scheduler.submit(fast_request))
        # Held, not decoding ahead of its listener, not in the way; pipelined, the step launched before
        # the held chunk was read still counts.
        assert slow.stats.tokens == held_at + int(pipeline)
        assert len([c async for c in _take(slow, 2)]) == 2  # the listener catches up: the row goes on
        await until(lambda: slow.stats.tokens > held_at)
        slow.cancel()
        await until(lambda: not scheduler.running)
    finally:
        scheduler.close()
    assert_same_audio(fast, alone(engine, fast_request))


async def _take(stream: SynthesisStream, count: int) -> Any:
    for _ in range(count):
        yield await anext(stream)


async def test_full_batch_and_queue_answer_busy(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    scheduler = SynthesisScheduler(engine, max_queue=1, buffer_chunks=1, max_batch=2)
    try:
        running = [scheduler.submit(req(voice, "Short!", 300, seed)) for seed in (14, 15)]
        await until(lambda: scheduler.queue_depth == 0 and scheduler.running)
        waiting = scheduler.submit(req(voice, "Hello world.", 10, 16))
        await asyncio.sleep(0.2)
        assert scheduler.queue_depth == 1  # no free row: it waits
        with pytest.raises(WorkerBusy):
            scheduler.submit(req(voice, "Hello world.", 10, 17))
        running[0].cancel()  # a row comes free; the waiting request takes it
        assert sum(c.size for c in await read_all(waiting)) == engine.output_samples([10])
        running[1].cancel()
    finally:
        scheduler.close()
    assert scheduler.max_batch == 2


async def test_a_failed_step_fails_its_batch_and_the_next_request_runs(
    engine: XttsEngine, voice: VoiceEmbedding, monkeypatch: pytest.MonkeyPatch, pipeline: bool
) -> None:
    original = BatchDecoder.launch
    calls = {"n": 0}

    def flaky(self: BatchDecoder, active: list[bool], uniforms: list[float]) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device fell over")
        return original(self, active, uniforms)

    monkeypatch.setattr(BatchDecoder, "launch", flaky)
    scheduler = SynthesisScheduler(engine, max_queue=4, max_batch=2)
    try:
        streams = [scheduler.submit(req(voice, "Hello world.", 30, seed)) for seed in (18, 19)]
        for stream in streams:
            with pytest.raises(InternalWorkerError, match="try again"):
                await read_all(stream)
        after = await read_all(scheduler.submit(req(voice, "Hello world.", 12, 20)))
    finally:
        scheduler.close()
    assert sum(c.size for c in after) == engine.output_samples([12])


# ----- pieces of the GPU path that run on the CPU too ------------------------------------------------


def test_batched_vocoder_windows_equal_single_calls(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    decoder = engine.model.hifigan_decoder
    gen = torch.Generator().manual_seed(0)
    speakers = [torch.from_numpy(voice.speaker_embedding), torch.randn(1, 512, 1, generator=gen)]
    windows = []
    for i, tokens in enumerate((16, 24, 10)):
        vocoder = StreamingVocoder(decoder, speakers[i % 2])
        for _ in range(tokens):
            vocoder.push(torch.randn(64, generator=gen))
        # The last is a whole short sentence: its end is real and nothing precedes it, so it runs alone.
        window = vocoder.window(final=i == 2)
        assert window is not None
        windows.append(window)
    # A sentence's last chunk after earlier ones: context on its left, so it is left-padded and batched.
    vocoder = StreamingVocoder(decoder, speakers[1])
    for _ in range(20):
        vocoder.push(torch.randn(64, generator=gen))
    vocoder.take()
    for _ in range(7):
        vocoder.push(torch.randn(64, generator=gen))
    window = vocoder.window(final=True)
    assert window is not None and window.start - window.win_start >= 13 and window.frames < 130
    windows.append(window)
    calls: list[tuple[int, ...]] = []
    hook = decoder.waveform_decoder.register_forward_hook(lambda _m, a, _o: calls.append(tuple(a[0].shape)))
    try:
        together = decode_windows(decoder, windows, batch=True)
    finally:
        hook.remove()
    apart = decode_windows(decoder, windows, batch=False)
    widest = max(w.frames for w in windows[:2] + windows[3:])
    assert sorted(calls) == sorted([(1, 64, windows[2].frames), (4, 64, widest)])  # 3 stacked, 1 zero row
    hop = 256  # output samples per frame
    for w, a, b in zip(windows, together, apart, strict=True):
        assert a.numel() == b.numel() == w.frames * hop
        # What the stream emits: the new frames, not the context HiFi-GAN saw on either side.
        new = slice((w.start - w.win_start) * hop, (w.end - w.win_start) * hop)
        torch.testing.assert_close(a[new], b[new], atol=1e-5, rtol=1e-4)


def test_batched_windows_are_built_in_one_gather_exactly_as_one_by_one(engine: XttsEngine) -> None:
    """The stacked input of a batched HiFi-GAN call: each window's own resampling, padded with zeros."""
    from worker.tts.vocoder import stack_windows

    decoder = engine.model.hifigan_decoder
    gen = torch.Generator().manual_seed(3)
    windows = []
    for tokens, final in ((30, False), (11, True), (52, False)):
        vocoder = StreamingVocoder(decoder, torch.randn(1, 512, 1, generator=gen), window_step=48)
        for _ in range(tokens):
            vocoder.push(torch.randn(64, generator=gen))
        if tokens > 40:  # a later window of a longer sentence: its latents start past the first
            vocoder.commit(vocoder.window())
            for _ in range(8):
                vocoder.push(torch.randn(64, generator=gen))
        window = vocoder.window(final=final)
        assert window is not None
        windows.append(window)
    assert windows[2].span.first > 0
    width = max(max(w.width, w.frames) for w in windows)
    left = [width - w.frames if w.final else 0 for w in windows]
    with torch.inference_mode():
        stacked = stack_windows(windows, left, width, size=4)
        padded = [
            torch.nn.functional.pad(w.z, (pad, width - w.frames - pad))
            for w, pad in zip(windows, left, strict=True)
        ]
    assert stacked.shape == (4, 64, width)
    assert torch.equal(stacked[:3], torch.cat(padded))  # the same float operations: bit for bit
    assert not stacked[3].any()  # a zero row fills the call up


def test_the_default_chunks_fill_the_standard_vocoder_widths(engine: XttsEngine) -> None:
    """With CUDA's window step, every chunk of the default plan runs HiFi-GAN at one of the standard widths
    (those with graphs and warm cuDNN plans), and the steady chunks use nearly all of the widest: a larger
    steady chunk would spill into a wider window, a smaller one would run more padding per frame of audio."""
    from worker.tts.speech import ChunkPlan
    from worker.tts.vocoder import WINDOW_STEP_CUDA, standard_shapes

    plan = ChunkPlan()
    widths = {frames for _, frames in standard_shapes(1)}
    vocoder = StreamingVocoder(
        engine.model.hifigan_decoder, torch.zeros(1, 512, 1), window_step=WINDOW_STEP_CUDA
    )
    target, since, used = plan.first_tokens, 0, []  # (width, new frames) of each window
    for _ in range(400):  # ~18.6 s: a long sentence's steady state
        vocoder.push(torch.zeros(64))
        since += 1
        if since >= target:
            window = vocoder.window()
            assert window is not None
            used.append((window.width, window.end - window.start))
            vocoder.commit(window)
            target, since = plan.after(target), 0
    assert {width for width, _ in used} <= widths
    steady = used[3:]
    assert steady and all(width == max(widths) for width, _ in steady)
    # New frames + 13 frames of context on each side fill the width to within 2 frames.
    context = 2 * plan.context_frames
    assert min(new for _, new in steady) >= max(widths) - context - 2


def test_fast_decode_is_off_on_the_cpu_and_on_for_cuda(engine: XttsEngine) -> None:
    assert engine.fast_decode == FastDecode(graphs=False, dtype=torch.float32)
    session = engine.open_batch(2)
    assert not session.graphs and not session.decoder.replay
    session.close()
    assert resolve_fast_decode("cuda") == FastDecode(graphs=True, dtype=torch.float16)
    assert resolve_fast_decode("cuda", EngineSettings(fast_decode="auto")) == FastDecode(True, torch.float16)
    off = EngineSettings(fast_decode="off")
    assert resolve_fast_decode("cuda:0", off) == FastDecode(graphs=False, dtype=torch.float32)
    assert resolve_fast_decode("cuda", EngineSettings(decode_dtype="bfloat16")).dtype == torch.bfloat16
    assert resolve_fast_decode("cuda").prefill_graphs
    eager_prefill = EngineSettings(prefill_graphs="off")
    assert resolve_fast_decode("cuda", eager_prefill) == FastDecode(True, torch.float16, prefill_graphs=False)
    assert "eager prefill" in resolve_fast_decode("cuda", eager_prefill).label
    eager_vocoder = resolve_fast_decode("cuda", EngineSettings(vocoder_graphs="off"))
    assert not eager_vocoder.vocoder_graphs and eager_vocoder.prefill_graphs
    assert "(eager vocoder)/float16" in eager_vocoder.label
    both = EngineSettings(prefill_graphs="off", vocoder_graphs="off")
    assert "(eager prefill and vocoder)" in resolve_fast_decode("cuda", both).label
    kernels = EngineSettings(fused_norm="off", fused_sampling="off", fused_attention="on")
    fast = resolve_fast_decode("cuda", kernels)
    assert (fast.fused_norm, fast.fused_sampling, fast.fused_attention) == ("off", "off", "on")
    assert fast.label == "cuda-graphs/float16"  # the decoder's log line says which kernels it took
    with pytest.raises(ValueError, match="FAST_DECODE=on needs a CUDA device"):
        resolve_fast_decode("cpu", EngineSettings(fast_decode="on"))
    with pytest.raises(ValueError, match=r"VOXCLONE_DECODE_DTYPE=float16: .* only supported on CUDA"):
        resolve_fast_decode("cpu", EngineSettings(decode_dtype="float16"))


def test_the_engine_takes_its_switches_from_its_settings(engine: XttsEngine) -> None:
    """What ``Settings.engine`` says reaches the decoder, the engine loop and the vocoder."""
    switches = load_settings(
        {"FAST_DECODE": "off", "VOXCLONE_PIPELINE": "On", "VOXCLONE_FUSED_NORM": "off"}, env_file=None
    ).engine
    other = XttsEngine(engine.model, engine.model_id, "cpu", settings=switches)
    assert other.settings == switches and other.pipeline and not other.fast_decode.graphs
    assert other.fast_decode.fused_norm == "off"
    assert other.vocoder_precision == VocoderPrecision(torch.float32)


@pytest.mark.parametrize(
    ("switches", "asked"),
    [
        (FastDecode(True), {"fused_norm": None, "fused_sampling": None, "attention_mode": "auto"}),
        (
            FastDecode(True, fused_norm="off", fused_sampling="off", fused_attention="on"),
            {"fused_norm": False, "fused_sampling": False, "attention_mode": "on"},
        ),
        (FastDecode(False), {"fused_norm": False, "fused_sampling": False, "fused_attention": False}),
    ],
)
def test_the_pool_builds_decoders_with_the_engines_kernel_switches(
    engine: XttsEngine, monkeypatch: pytest.MonkeyPatch, switches: FastDecode, asked: dict[str, object]
) -> None:
    """``off`` means the probe is never run; otherwise the decoder probes (None), the attention by mode."""
    import worker.batching.graphs
    from worker.batching.synthesis import DecoderPool

    built: list[dict[str, object]] = []

    def decoder(*_: object, **kwargs: object) -> Any:
        built.append(kwargs)
        return BatchDecoder(
            *_, **kwargs | {"fused_norm": False, "fused_sampling": False, "fused_attention": False}
        )  # type: ignore[arg-type]

    monkeypatch.setattr(batch_gpt, "BatchDecoder", decoder)
    monkeypatch.setattr(worker.batching.graphs, "capture_steps", lambda _decoder: False)  # no CUDA here
    other = XttsEngine(engine.model, engine.model_id, "cpu", fast_decode=switches)
    DecoderPool(other)._build(2)
    assert len(built) == 1 and asked.items() <= built[0].items()


def test_every_engine_thread_prewarms_the_vocoder_once(
    engine: XttsEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cuDNN's plan cache is per thread, and a finished thread's id can come back for a new one."""
    import worker.batching.synthesis

    warmed: list[tuple[str, int]] = []
    monkeypatch.setattr(
        worker.batching.synthesis,
        "prewarm",
        lambda _d, n, net: warmed.append((threading.current_thread().name, n)) or 1,
    )
    pool = worker.batching.synthesis.DecoderPool(engine)
    for name in ("first", "second"):
        thread = threading.Thread(
            target=lambda: [pool._prewarm(4), pool._prewarm(4), pool._prewarm(2)], name=name
        )
        thread.start()
        thread.join()
    pool._prewarm(4)
    pool._prewarm(8)  # a bigger batch has shapes the first warm-up did not run
    assert warmed == [("first", 4), ("second", 4), ("MainThread", 4), ("MainThread", 8)]

    def out_of_memory(_d: object, _n: int, net: object) -> int:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(worker.batching.synthesis, "prewarm", out_of_memory)
    pool._prewarm(16)  # logged, not raised: the session opens and the shapes warm up on first use


def test_the_engine_loop_is_pipelined_on_cuda_and_not_on_the_cpu(engine: XttsEngine) -> None:
    from worker.batching.synthesis import decode_pipeline

    assert decode_pipeline("cuda") and decode_pipeline("cuda:1")
    assert not decode_pipeline("cpu")  # the same cores: nothing to overlap, a dropped step per sentence
    cpu = XttsEngine(engine.model, engine.model_id, "cpu")
    session = cpu.open_batch(2)
    assert not session.pipeline
    session.close()
    assert decode_pipeline("cpu", "on") and not decode_pipeline("cuda", "off")
    on = XttsEngine(engine.model, engine.model_id, "cpu", settings=EngineSettings(pipeline="on"))
    session = on.open_batch(2)
    assert session.pipeline
    session.close()


def test_an_engine_that_cannot_batch_runs_one_at_a_time(engine: XttsEngine) -> None:
    class OneAtATime:
        prepare = engine.prepare
        generate = engine.generate

    with pytest.raises(ValueError, match="cannot batch"):
        SynthesisScheduler(OneAtATime(), max_queue=1, max_batch=4)
    serial, batching = SynthesisScheduler(OneAtATime(), max_queue=1), SynthesisScheduler(engine, max_queue=1)
    serial.close()
    batching.close()
    assert (serial.max_batch, batching.max_batch) == (1, engine.default_max_batch)


def test_the_vocoder_runs_float16_on_cuda_after_a_check_and_float32_elsewhere() -> None:
    from worker.tts.vocoder import vocoder_precision

    assert vocoder_precision("cuda") == VocoderPrecision(torch.float16, checked=True)
    assert vocoder_precision("cpu") == VocoderPrecision(torch.float32)
    assert vocoder_precision("cuda:0", "float16") == VocoderPrecision(torch.float16, checked=False)
    with pytest.raises(ValueError, match="VOXCLONE_VOCODER_DTYPE=float16 needs a CUDA device"):
        vocoder_precision("cpu", "float16")
    assert vocoder_precision("cuda", "float32") == vocoder_precision("cpu", "float32") == VocoderPrecision()


def test_the_precision_probe_tells_a_faithful_copy_from_a_stray_one(greedy: XttsEngine) -> None:
    import copy

    from worker.tts.vocoder import VOCODER_MIN_SNR_DB, precision_snr

    own = greedy.model.hifigan_decoder.waveform_decoder
    flags: list[bool] = []  # the reference runs in exact float32: cuDNN's TF32 off, then back as it was
    hook = own.conv_pre.register_forward_hook(lambda *_: flags.append(torch.backends.cudnn.allow_tf32))
    try:
        assert torch.backends.cudnn.allow_tf32
        assert precision_snr(own, own) == math.inf  # no TF32 on the CPU: the same numbers
    finally:
        hook.remove()
    assert flags == [False, True] and torch.backends.cudnn.allow_tf32
    wider = copy.deepcopy(own).double()
    assert precision_snr(own, wider) > 100  # float32 against float64: rounding only
    # bfloat16 keeps 8 bits of mantissa (float16 has 11): measurably coarser, still a finite figure
    coarse = precision_snr(own, copy.deepcopy(own).bfloat16(), frames=16)
    assert 10 < coarse < precision_snr(own, wider)
    stray = copy.deepcopy(own).double()
    with torch.no_grad():
        stray.conv_post.weight.mul_(1.1)  # a copy that computes something else
    assert precision_snr(own, stray) < VOCODER_MIN_SNR_DB
    broken = copy.deepcopy(own).double()
    with torch.no_grad():
        broken.conv_pre.weight[0, 0, 0] = math.inf  # what a float16 overflow gives
    assert precision_snr(own, broken) == -math.inf


async def test_batched_vocoder_calls_run_in_the_engines_vocoder_precision(
    greedy: XttsEngine, voice: VoiceEmbedding
) -> None:
    """The plumbing of the float16 option, run here in float64 (the CPU has no fast float16 convolution).

    One copy of HiFi-GAN in that precision, made once and used by every session; audio comes back as
    float32 and, float64 being closer to exact, within the batching tolerance of the float32 path.
    """

    engine = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    engine.vocoder_precision = VocoderPrecision(torch.float64, checked=True)  # passes: closer than float32
    assert engine.decoders.vocoder_dtype == torch.float32  # nothing decided before a session opens
    seen: list[torch.dtype] = []
    first = engine.open_batch(2)
    net = first.vocoder_net
    assert net is not None and net is not engine.model.hifigan_decoder.waveform_decoder
    assert next(net.parameters()).dtype == torch.float64
    first.close()
    second = engine.open_batch(2)
    assert second.vocoder_net is net  # made once per engine
    second.close()
    hook = net.register_forward_hook(lambda _m, args, _o: seen.append(args[0].dtype))
    try:
        requests = mixed(voice)[:2]
        outputs = await batched(engine, requests, max_batch=2)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float64}
    assert engine.decoders.vocoder_dtype == torch.float64
    assert next(engine.model.hifigan_decoder.waveform_decoder.parameters()).dtype == torch.float32
    for got, request in zip(outputs, requests, strict=True):
        assert_same_audio(got, alone(greedy, request))


def test_a_vocoder_copy_that_fails_its_check_leaves_batched_calls_in_float32(
    greedy: XttsEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``auto`` keeps the model's own HiFi-GAN where the copy strays (here: a bar no copy can pass), says
    so once, and does not try again for every session; an explicitly asked precision is used anyway."""
    import worker.batching.synthesis

    monkeypatch.setattr(worker.batching.synthesis, "VOCODER_MIN_SNR_DB", math.inf)
    checked = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    checked.vocoder_precision = VocoderPrecision(torch.float64, checked=True)
    with caplog.at_level(logging.WARNING, logger="worker.batching.synthesis"):
        for _ in range(2):
            session = checked.open_batch(2)
            assert session.vocoder_net is None
            session.close()
    strays = [r.getMessage() for r in caplog.records if "strays from float32" in r.getMessage()]
    assert len(strays) == 1 and "batched vocoder calls stay in float32" in strays[0]
    assert checked.decoders.vocoder_dtype == torch.float32

    asked = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    asked.vocoder_precision = VocoderPrecision(torch.float64, checked=False)
    session = asked.open_batch(2)
    assert session.vocoder_net is not None and asked.decoders.vocoder_dtype == torch.float64
    session.close()


def test_a_vocoder_copy_that_cannot_be_made_leaves_batched_calls_in_float32(
    greedy: XttsEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import worker.batching.synthesis

    def out_of_memory(*_: object) -> float:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(worker.batching.synthesis, "precision_snr", out_of_memory)
    engine = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    engine.vocoder_precision = VocoderPrecision(torch.float64, checked=True)
    with caplog.at_level(logging.WARNING, logger="worker.batching.synthesis"):
        session = engine.open_batch(2)  # serving goes on: the model's own HiFi-GAN
    assert session.vocoder_net is None and engine.decoders.vocoder_dtype == torch.float32
    session.close()
    assert any("HiFi-GAN failed: vocoder calls stay in float32" in r.getMessage() for r in caplog.records)


class SmallVocoder(torch.nn.Module):
    """HiFi-GAN's interface (``conv_pre``, ``cond_layer``, 256 samples per frame) at a tiny cost."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_pre = torch.nn.Conv1d(4, 8, 3, padding=1)
        self.cond_layer = torch.nn.Conv1d(3, 8, 1)

    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv_pre(z) + self.cond_layer(g)).mean(dim=1, keepdim=True)
        return x.repeat_interleave(256, dim=-1)


def test_hifigan_graphs_cover_the_standard_shapes_and_hand_out_copies(stand_in_cuda: None) -> None:
    from worker.batching.graphs import capture_vocoder

    net = SmallVocoder()
    graphs = capture_vocoder(net, streams=3)
    assert graphs is not None
    assert set(graphs.graphs) == {(b, w) for b in (1, 2, 4) for w in (48, 96, 144)}  # 3 streams pad to 4
    gen = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(4, 4, 96, generator=gen), torch.randn(4, 4, 96, generator=gen)
    g = torch.randn(4, 3, 1, generator=gen)
    before = StandInGraph.replays["forward"]
    with torch.inference_mode():
        first = graphs.run(z1, g)
        second = graphs.run(z2, g)  # the same shape: replays into the same static output
        assert first is not None and second is not None
        assert StandInGraph.replays["forward"] - before == 2
        assert torch.equal(first, net(z1, g)) and torch.equal(second, net(z2, g))  # the first is a copy
        assert graphs.run(torch.randn(8, 4, 96), torch.randn(8, 3, 1)) is None  # no graph: run it eagerly
        assert graphs.run(torch.randn(1, 4, 50), g[:1]) is None


def test_a_hifigan_graph_that_disagrees_or_fails_leaves_the_vocoder_eager(
    stand_in_cuda: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.batching.graphs import capture_vocoder

    replay = StandInGraph.replay

    def off_by_a_little(self: StandInGraph) -> None:
        replay(self)
        assert self.call is not None
        graphs, shape = self.call.args[0], self.call.args[1:]
        graphs.out[shape] = graphs.out[shape] + 0.01  # a capture that computes something else

    monkeypatch.setattr(StandInGraph, "replay", off_by_a_little)
    with caplog.at_level(logging.WARNING, logger="worker.batching.graphs"):
        assert capture_vocoder(SmallVocoder(), streams=1) is None
    assert any("HiFi-GAN disagrees" in r.getMessage() for r in caplog.records)

    def broken(self: StandInGraph) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(StandInGraph, "replay", broken)
    assert capture_vocoder(SmallVocoder(), streams=1) is None


def test_an_engine_captures_hifigan_once_and_does_not_retry_a_failure(
    greedy: XttsEngine, stand_in_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.batching.graphs

    engine = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    tries: list[int] = []

    def capture(net: torch.nn.Module, streams: int) -> VocoderGraphs | None:
        tries.append(streams)
        return VocoderGraphs(net, [(1, 48)])

    monkeypatch.setattr(worker.batching.graphs, "capture_vocoder", capture)
    pool = engine.decoders
    first = pool._vocoder_graphs(2, None)
    assert first is not None and first.net is engine.model.hifigan_decoder.waveform_decoder
    assert pool._vocoder_graphs(2, None) is first and pool._vocoder_graphs(1, None) is first
    assert pool._vocoder_graphs(4, None) is not first  # more streams: more shapes to capture
    assert tries == [2, 4]
    failing = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    monkeypatch.setattr(worker.batching.graphs, "capture_vocoder", lambda net, streams: tries.append(0))
    assert failing.decoders._vocoder_graphs(2, None) is None
    assert failing.decoders._vocoder_graphs(8, None) is None  # not tried again
    assert tries == [2, 4, 0]


def test_a_session_replays_hifigan_from_graphs_with_the_same_audio(
    greedy: XttsEngine, voice: VoiceEmbedding, stand_in_cuda: None
) -> None:
    """Batched vocoder calls at a captured shape replay their graph; the audio is what each request
    makes alone. (The real HiFi-GAN, captured at its narrowest shapes only, to keep this quick.)"""
    from worker.batching.graphs import capture_vocoder

    engine = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    graphs = capture_vocoder(engine.model.hifigan_decoder.waveform_decoder, streams=2, widths=1)
    assert graphs is not None and set(graphs.graphs) == {(1, 48), (2, 48)}
    session = engine.open_batch(2)
    session.batch_vocoder, session.vocoder_graphs = True, graphs  # as on CUDA
    requests = mixed(voice)[:2]
    before = StandInGraph.replays["forward"]
    try:
        got = drive(session, {str(i): engine.prepare(r) for i, r in enumerate(requests)})
    finally:
        session.close()
    assert StandInGraph.replays["forward"] - before >= 1  # the first chunks' 48-frame windows
    for i, request in enumerate(requests):
        assert_same_audio(got[str(i)], alone(engine, request))


async def test_a_reduced_precision_call_that_overflows_is_redone_in_float32(
    greedy: XttsEngine, voice: VoiceEmbedding, caplog: pytest.LogCaptureFixture
) -> None:
    """Members never hear an overflow: a non-finite sample from the reduced-precision copy (here one
    made to give NaN everywhere) sends that call to the model's own HiFi-GAN, and the audio is the
    float32 path's."""

    engine = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling)
    engine.vocoder_precision = VocoderPrecision(torch.float64, checked=False)  # used unchecked, as asked
    session = engine.open_batch(2)
    net = session.vocoder_net
    session.close()
    assert net is not None
    with torch.no_grad():
        net.conv_post.weight.fill_(math.nan)
    requests = mixed(voice)[:2]
    with caplog.at_level(logging.WARNING, logger="worker.tts.vocoder"):
        outputs = await batched(engine, requests, max_batch=2)
    for got, request in zip(outputs, requests, strict=True):
        assert_same_audio(got, alone(greedy, request))
    warned = [r.getMessage() for r in caplog.records if "non-finite sample" in r.getMessage()]
    assert warned and "redone in float32" in warned[0] and "VOXCLONE_VOCODER_DTYPE=float32" in warned[0]


class GatedMarker:
    """A stand-in watermark (halves the audio, so every sample shows it was marked) whose first calls
    wait for :attr:`gate`: the engine thread must decode on meanwhile. Records the threads it ran on."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.threads: set[str] = set()

    def apply(self, pcm: np.ndarray, sample_rate: int) -> np.ndarray:
        self.gate.wait(timeout=30)
        self.threads.add(threading.current_thread().name)
        return (pcm * 0.5).astype(np.float32)


@pytest.mark.parametrize("pipelined", [False, True])
def test_watermarking_runs_beside_decoding_and_keeps_each_streams_order(
    greedy: XttsEngine, voice: VoiceEmbedding, pipelined: bool
) -> None:
    marker = GatedMarker()
    engine = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling, watermark=marker)  # type: ignore[arg-type]
    engine.decoders.mark_threads = 3  # several streams' chunks at once, whatever this machine has
    engine.pipeline = pipelined
    requests = mixed(voice)[:3]
    session = engine.open_batch(3)
    assert session.marking is not None
    chunks: dict[str, list[np.ndarray]] = {str(i): [] for i in range(3)}
    stats = {str(i): StreamStats() for i in range(3)}
    for i, r in enumerate(requests):
        session.add(str(i), engine.prepare(r), stats[str(i)])
    try:
        for _ in range(12):  # the first chunks (4 tokens) wait for the gate; decoding does not
            assert all(out.error is None and not out.chunks for out in session.step())
        assert all(s.tokens >= 12 for s in stats.values()) and not any(s.samples for s in stats.values())
        marker.gate.set()
        while session.keys:
            for out in session.step():
                assert out.error is None
                chunks[out.key] += out.chunks  # type: ignore[index]
    finally:
        marker.gate.set()
        session.close()
    assert marker.threads and all(name.startswith("watermark") for name in marker.threads)
    reference = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling, watermark=marker)  # type: ignore[arg-type]
    for i, request in enumerate(requests):
        expected = alone(reference, request)
        assert_same_audio(chunks[str(i)], expected)
        assert np.abs(np.concatenate(chunks[str(i)])).max() <= 16384  # halved: every sample was marked


def test_a_streams_chunks_are_made_in_order_and_a_failure_reaches_that_stream_only() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from worker.batching.synthesis import RowOutput, _after, _guarded

    order: dict[int, list[int]] = {0: [], 1: []}

    def make(stream: int, index: int) -> np.ndarray:
        time.sleep(0.002 * ((index * 7 + stream) % 3))  # later jobs would often overtake earlier ones
        order[stream].append(index)
        if stream == 1 and index == 5:
            raise RuntimeError("perth failed")
        return np.full(4, index, dtype=np.int16)

    with ThreadPoolExecutor(4) as pool:
        last: dict[int, Any] = {0: None, 1: None}
        futures: dict[int, list[Any]] = {0: [], 1: []}
        for index in range(20):
            for stream in (0, 1):
                last[stream] = pool.submit(_after, last[stream], functools.partial(make, stream, index))
                futures[stream].append(last[stream])
        for f in futures[0] + futures[1]:
            f.exception(timeout=30)
    assert order[0] == order[1] == list(range(20))
    ok, failed = RowOutput("a"), RowOutput("b")
    for f in futures[0]:
        _guarded(ok, f.result)
    for f in futures[1]:
        _guarded(failed, f.result)
    assert ok.error is None and [int(c[0]) for c in ok.chunks] == list(range(20))
    assert isinstance(failed.error, InternalWorkerError) and len(failed.chunks) == 5  # up to the failure


class Parking:
    """An executor that runs chunk jobs at once, except one stream's, which it keeps until released."""

    def __init__(self) -> None:
        self.stuck: object = None  # the ChunkWriter whose jobs wait
        self.parked: list[tuple[Any, Any, Any, Any]] = []

    def submit(self, fn: Any, previous: Any, make: Any) -> Any:
        from concurrent.futures import Future

        future: Future[Any] = Future()
        if getattr(make, "func", make).__self__ is self.stuck:
            self.parked.append((future, fn, previous, make))
        else:
            future.set_result(fn(previous, make))
        return future

    def release(self) -> None:
        self.stuck = None
        for future, fn, previous, make in self.parked:
            future.set_result(fn(previous, make))


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_stream_whose_watermarking_is_behind_sits_out_decode_steps(
    greedy: XttsEngine, voice: VoiceEmbedding, pipelined: bool
) -> None:
    """Decoding does not run ahead of a stuck watermark without bound: once a stream has a few chunks
    waiting for it, its row sits out steps while the others go on; released, it ends with the same audio.
    (Pipelined, the step launched before the hold began may add one more chunk.)"""
    from worker.analysis.watermark import Watermarker
    from worker.batching.synthesis import MAX_UNMADE_CHUNKS
    from worker.tts.speech import ChunkPlan

    small = ChunkPlan(first_tokens=2, tokens=4)  # many chunks in a few tokens
    engine = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling, chunks=small)
    engine.watermark = GatedMarker()  # type: ignore[assignment]
    engine.watermark.gate.set()  # type: ignore[attr-defined]
    engine.pipeline = pipelined
    requests = [req(voice, "The stream whose marking is stuck.", 40, 7), req(voice, "The other one.", 40, 8)]
    stats = {"a": StreamStats(), "b": StreamStats()}
    session = engine.open_batch(2)
    parking = Parking()
    session.marking = parking  # type: ignore[assignment]
    for key, request in zip(stats, requests, strict=True):
        session.add(key, engine.prepare(request), stats[key])
    stuck = session._slots[0]
    parking.stuck = stuck.writer
    chunks: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    try:
        while stats["b"].tokens < 40:  # (with b done too, a step would wait for a's marking)
            for out in session.step():
                chunks[out.key] += out.chunks  # type: ignore[index]
        assert stats["a"].tokens < 20  # only the stuck stream waits
        assert len(parking.parked) == len(stuck.unmade)
        assert MAX_UNMADE_CHUNKS <= len(stuck.unmade) <= MAX_UNMADE_CHUNKS + int(pipelined)
        assert not chunks["a"] and not chunks["b"]  # chunks go out in launch order: after a's first
        parking.release()
        while session.keys:
            for out in session.step():
                assert out.error is None
                chunks[out.key] += out.chunks  # type: ignore[index]
    finally:
        session.close()
    assert stats["a"].tokens == 40
    reference = XttsEngine(greedy.model, greedy.model_id, "cpu", sampling=greedy.sampling, chunks=small)
    reference.watermark = engine.watermark
    for key, request in zip(stats, requests, strict=True):
        assert_same_audio(chunks[key], alone(reference, request))
    assert isinstance(engine.watermark, GatedMarker) and not isinstance(engine.watermark, Watermarker)
