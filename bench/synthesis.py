"""Synthesis benchmark: this worker against stock coqui-tts ``inference_stream``, side by side, one run.

All engines serve one random-weight XTTS-v2 checkpoint through the worker's ``SynthesisScheduler``; it
reports first chunk, real-time factor, throughput, GPU memory, the decode step alone and agreement with
the one-request reference. The engines, columns and commands are in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.batching.graphs import FastDecode
from worker.kernels.attention import BLOCKS as ATTENTION_BLOCKS
from worker.kernels.attention import works_for as fused_attention_works
from worker.kernels.norm import works_for as fused_norm_works
from worker.kernels.sampling import works_for as fused_sampling_works
from worker.serving.engine import XttsEngine
from worker.serving.scheduler import SynthesisScheduler
from worker.tts.gpt import SamplingParams, UniformDraws, decode_step, new_sequence, text_prefix
from worker.tts.speech import Int16Array, PreparedSpeech, StreamStats
from worker.tts.testmodel import make_test_model
from worker.tts.vocoder import VocoderPrecision, precision_snr
from worker.types import SpeechRequest, VoiceEmbedding

TEXT = "Hello world, this is a test of the voice model, and it goes on for a while."
LANGUAGE = "en"
WARMUP_TOKENS = 12


def request(voice: VoiceEmbedding, tokens: int, seed: int) -> SpeechRequest:
    return SpeechRequest(TEXT, LANGUAGE, voice, max_new_tokens=tokens, min_new_tokens=tokens, seed=seed)


class StockEngine:
    """Stock ``Xtts.inference_stream`` behind the scheduler's engine interface (same text for every call)."""

    def __init__(self, ours: XttsEngine, chunk_tokens: int) -> None:
        self.ours = ours
        self.chunk_tokens = chunk_tokens

    def prepare(self, request: SpeechRequest) -> PreparedSpeech:
        return self.ours.prepare(request)

    def generate(
        self, speech: PreparedSpeech, cancel: threading.Event, stats: StreamStats | None = None
    ) -> Generator[Int16Array, None, None]:
        stats = stats if stats is not None else StreamStats()
        stats.started = time.perf_counter()
        speech = speech.to(self.ours.device)
        torch.manual_seed(speech.seed)
        most, least = speech.max_tokens, speech.min_tokens
        chunks = self.ours.model.inference_stream(
            TEXT, LANGUAGE, speech.gpt_cond_latent, speech.speaker_embedding,
            stream_chunk_size=self.chunk_tokens, max_new_tokens=most, min_new_tokens=least,
        )  # fmt: skip
        for wav in chunks:
            if cancel.is_set():
                return
            out = (wav.clamp(-1, 1) * 32767).to(torch.int16).cpu().numpy()
            stats.chunks += 1
            stats.samples += out.size
            if stats.first_chunk_s is None:
                stats.first_chunk_s = time.perf_counter() - stats.started
            stats.elapsed_s = time.perf_counter() - stats.started
            yield out
        stats.tokens = speech.max_tokens


@dataclass
class Row:
    engine: str
    concurrency: int
    requests: int
    audio_s_per_request: float
    ttfc_ms_p50: float
    ttfc_ms_p95: float
    ttfc_ms_max: float
    rtf_p50: float  # seconds from a stream's start to its end per audio second (queue wait excluded)
    rtf_max: float
    throughput_x: float  # audio seconds produced per wall-clock second, all streams together
    wall_s: float
    peak_gpu_mem_gb: float | None = None


@dataclass
class DecodeRow:
    batch: int
    ms_per_step: float
    tokens_per_s: float
    speedup_vs_batch1: float


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by nearest rank (of 32 values the 95th is the 31st smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)] if ordered else 0.0


async def one_level(
    scheduler: SynthesisScheduler, voice: VoiceEmbedding, n: int, tokens: int, stagger_s: float = 0.0
) -> Row:
    """``n`` requests at once, or (``stagger_s``) the i-th after ``i × stagger_s / n`` seconds."""

    async def one(seed: int) -> tuple[float, StreamStats]:
        await asyncio.sleep(seed * stagger_s / n)
        submitted = time.perf_counter()
        stream = scheduler.submit(request(voice, tokens, seed))
        first: float | None = None
        async for _chunk in stream:
            if first is None:
                first = time.perf_counter() - submitted
        return (first or 0.0), stream.stats

    started = time.perf_counter()
    results = await asyncio.gather(*(one(seed) for seed in range(n)))
    wall = time.perf_counter() - started
    ttfc = [r[0] for r in results]
    rtf = [s.elapsed_s / s.audio_s for _, s in results]
    audio = sum(s.audio_s for _, s in results)
    return Row(
        engine="",
        concurrency=n,
        requests=n,
        audio_s_per_request=results[0][1].audio_s,
        ttfc_ms_p50=1000 * statistics.median(ttfc),
        ttfc_ms_p95=1000 * percentile(ttfc, 95),
        ttfc_ms_max=1000 * max(ttfc),
        rtf_p50=statistics.median(rtf),
        rtf_max=max(rtf),
        throughput_x=audio / wall,
        wall_s=wall,
    )


async def measure(
    engine: Any,
    name: str,
    voice: VoiceEmbedding,
    levels: list[int],
    tokens: int,
    max_batch: int,
    stagger_s: float = 0.0,
) -> list[Row]:
    """Each level on one scheduler (its decoder and graphs are built once), after a warm-up at that level;
    ``stagger_s``: arrivals spread over that long, as real traffic comes, instead of all at once."""
    rows = []
    scheduler = SynthesisScheduler(engine, max_queue=max(levels), max_batch=max_batch)
    try:
        for n in levels:
            await one_level(scheduler, voice, n if max_batch > 1 else 1, WARMUP_TOKENS)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            row = await one_level(scheduler, voice, n, tokens, stagger_s)
            row.engine = name
            if torch.cuda.is_available():
                row.peak_gpu_mem_gb = torch.cuda.max_memory_allocated() / 1e9
            print(f"  {name:10s} x{n:<3d} {row.wall_s:7.1f} s", file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        scheduler.close()
    return rows


def decode_steps(engine: XttsEngine, voice: VoiceEmbedding, levels: list[int], steps: int) -> list[DecodeRow]:
    """The batched GPT decode step alone (no vocoder), as the scheduler's decoder runs it."""
    speech = engine.prepare(SpeechRequest(TEXT, LANGUAGE, voice, max_new_tokens=steps + 1, seed=0)).to(
        engine.device
    )
    with torch.inference_mode():
        prefix = text_prefix(engine.model.gpt, speech.gpt_cond_latent, speech.sentences[0])
    out: list[DecodeRow] = []
    for batch in levels:
        session = engine.open_batch(max(levels))
        decoder = session.decoder
        slots = [decoder.claim() for _ in range(batch)]
        decoder.prefill(slots, [prefix] * batch, [steps + 1] * batch, [0.5] * batch)
        for _ in range(3):
            decoder.step([True] * batch, [0.5] * batch)
        started = time.perf_counter()
        for _ in range(steps):
            decoder.step([True] * batch, [0.5] * batch)
        ms = 1000 * (time.perf_counter() - started) / steps
        for slot in reversed(slots):
            decoder.release(slot)
        session.close()
        base = out[0].ms_per_step if out else ms
        out.append(DecodeRow(batch, ms, 1000 * batch / ms, base * batch / ms))
    return out


def reference_decode_ms(engine: XttsEngine, voice: VoiceEmbedding, steps: int) -> float:
    """ms per token of the one-request reference loop (HF GPT-2 forward with a dynamic cache, float32)."""
    speech = engine.prepare(SpeechRequest(TEXT, LANGUAGE, voice, seed=0)).to(engine.device)
    state = new_sequence(
        engine.model.gpt, speech.gpt_cond_latent, speech.sentences[0],
        min_tokens=steps + 3, max_tokens=steps + 3, draws=UniformDraws(0),
    )  # fmt: skip
    for _ in range(3):
        decode_step(engine.model.gpt, state, engine.sampling)
    started = time.perf_counter()
    for _ in range(steps):
        decode_step(engine.model.gpt, state, engine.sampling)
    return 1000 * (time.perf_counter() - started) / steps


def agreement(
    engine: XttsEngine, voice: VoiceEmbedding, tokens: int, vocoder: VocoderPrecision | None = None
) -> dict[str, object]:
    """Greedy: the batched fast path (3 rows at once) against the one-request float32 reference path.

    The batched path's HiFi-GAN runs as ``engine``'s does (float16 on CUDA when its check passed) unless
    ``vocoder`` says otherwise."""
    params = SamplingParams(greedy=True, repetition_penalty=engine.sampling.repetition_penalty)
    greedy = XttsEngine(
        engine.model,
        engine.model_id,
        engine.device,
        sampling=params,
        fast_decode=engine.fast_decode,
        settings=engine.settings,
    )
    greedy.vocoder_precision = vocoder or engine.vocoder_precision
    requests = [request(voice, tokens, seed) for seed in range(3)]
    reference = np.concatenate(list(greedy.stream(requests[0], threading.Event()))).astype(np.int32)

    ours = asyncio.run(_collect_batched(greedy, requests))
    n = min(ours.size, reference.size)
    diff = np.abs(ours[:n] - reference[:n])
    off = np.nonzero(diff > 64)[0]  # 64 LSB ≈ -54 dBFS: beyond rounding, a different token upstream
    noise = float(np.sqrt(np.mean(diff.astype(np.float64) ** 2))) if n else 0.0
    signal = float(np.sqrt(np.mean(reference[:n].astype(np.float64) ** 2))) if n else 0.0
    return {
        "decode": f"{greedy.fast_decode.label}, {vocoder_label(greedy)} HiFi-GAN",
        "same_length": bool(ours.size == reference.size),
        "max_abs_diff_lsb": int(diff.max()) if n else None,
        "snr_db": round(20 * np.log10(signal / noise), 1) if noise > 0 and signal > 0 else None,
        "identical_until_s": round((off[0] if off.size else n) / 24_000, 3),
        "audio_s": round(reference.size / 24_000, 3),
    }


async def _collect_batched(engine: XttsEngine, requests: list[SpeechRequest]) -> np.ndarray:
    """The first request's audio, made while the others share its decode steps."""

    async def read(scheduler: SynthesisScheduler, request: SpeechRequest) -> list[Int16Array]:
        return [chunk async for chunk in scheduler.submit(request)]

    scheduler = SynthesisScheduler(engine, max_queue=len(requests), max_batch=len(requests))
    try:
        outs = await asyncio.gather(*(read(scheduler, r) for r in requests))
    finally:
        scheduler.close()
    return np.concatenate(outs[0]).astype(np.int32)


_VIEW_OPS = frozenset(
    ["view", "_unsafe_view", "slice", "select", "permute", "unbind", "transpose", "unsqueeze", "squeeze",
     "expand", "t", "as_strided", "alias", "detach", "split", "reshape", "_reshape_alias", "lift_fresh"]
)  # fmt: skip


def _same_storage(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return True
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def step_ops(decoder: Any) -> dict[str, float]:
    """Operations one eager decode step dispatches that can launch a kernel (views left out), at batch 1.

    On a GPU each is at least one kernel, and a captured step costs about a fixed gap per kernel, so this
    count, unlike a CPU timing, says how a change moves the GPU's step time. Per layer from the slope.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            result = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ not in _VIEW_OPS or not _same_storage(result, args[0]):
                self.ops += 1  # a view op that had to copy (reshape of a strided tensor) counts too
            return result

    blocks = decoder.blocks
    counts = []
    try:
        for layers in (1, 2):  # the step's own ops plus ``layers`` layers'
            decoder.blocks = blocks[:layers]
            with Count() as count, torch.inference_mode():
                decoder.run_step(1, decoder.lengths[0])
            counts.append(count.ops)
    finally:
        decoder.blocks = blocks
    per_layer = counts[1] - counts[0]
    return {
        "per_layer": per_layer,
        "rest": counts[0] - per_layer,
        "total": counts[0] + per_layer * (len(blocks) - 1),
    }


def components(engine: XttsEngine, voice: VoiceEmbedding) -> dict[str, Any]:
    """Where one stream's time goes: prefill of one row, HiFi-GAN per chunk window (float32 and float16,
    alone and batched), so that the end-to-end rows can be read against their parts."""
    cuda = torch.device(engine.device).type == "cuda"

    def timed(fn: Any, repeat: int = 10) -> float:
        for _ in range(2):
            fn()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return round(1000 * (time.perf_counter() - started) / repeat, 3)

    out: dict[str, Any] = {}
    speech = engine.prepare(SpeechRequest(TEXT, LANGUAGE, voice, seed=0)).to(engine.device)
    session = engine.open_batch(engine.default_max_batch)
    decoder = session.decoder

    def prefill_one() -> None:
        with torch.inference_mode():
            prefix = text_prefix(engine.model.gpt, speech.gpt_cond_latent, speech.sentences[0])
        slot = decoder.claim()
        decoder.prefill([slot], [prefix], [2], [0.5])
        decoder.release(slot)

    out["prefill_one_row_ms"] = timed(prefill_one)
    if decoder.prefill_replay:  # the same, launched op by op
        captured, decoder.prefill_replay = decoder.prefill_replay, {}
        try:
            out["prefill_one_row_eager_ms"] = timed(prefill_one)
        finally:
            decoder.prefill_replay = captured
    out["decode_step_ops"] = step_ops(decoder)
    out["gelu_epilogue"] = decoder.gelu_epilogue  # the MLP's GELU inside its GEMM (CUDA, cuBLASLt)
    out["fused_norm"] = decoder.fused_norm  # each residual add and its LayerNorm one kernel (Triton)
    out["fused_sampling"] = decoder.fused_sampling  # the step's end (token choice, bookkeeping) one kernel
    out["fused_attention"] = decoder.fused_attention  # each layer's cache write and attention one kernel
    # With graphs, per captured (batch, length): the attention kept (0: PyTorch's, else the fused
    # kernel's block size), and (timed by default) the replay times in ms: PyTorch's, then each block's.
    out["attention_at"] = [[b, n, block] for (b, n), block in sorted(decoder.attention_at.items())]
    out["attention_ms"] = [[b, n, *ms] for (b, n), ms in sorted(decoder.attention_ms.items())]
    out["attention_blocks"] = list(ATTENTION_BLOCKS)
    graphs = session.vocoder_graphs  # HiFi-GAN replayed at the standard shapes (CUDA), in its precision
    session.close()

    vocoder = engine.model.hifigan_decoder.waveform_decoder
    half = None
    if cuda:
        import copy

        half = copy.deepcopy(vocoder).half()
        # How far float16 strays from exact float32 on the worker's probe, next to how far the float32
        # path already strays: cuDNN convolves float32 in TF32 (10-bit mantissa, like float16) by default.
        out["fp16_probe_snr_db"] = round(precision_snr(vocoder, half), 1)
        out["tf32_probe_snr_db"] = round(precision_snr(vocoder, vocoder), 1)
    dim = int(speech.gpt_cond_latent.shape[-1])
    speaker = speech.speaker_embedding
    gen = torch.Generator(device=engine.device).manual_seed(0)
    rows: list[dict[str, Any]] = []
    # 34 frames: the first chunk's window (8 tokens); 144: a 27-token chunk with 13 frames each side (130,
    # kept to compare with earlier runs: a 24-token one, the steady chunk before). On CUDA windows come in
    # multiples of 48 frames: 1 × 48 is one stream's first chunk, 1 × 144 and 32 × 144 one and 32
    # streams' steady chunks; those are also replayed from their graphs.
    shapes = (
        ((1, 34), (1, 48), (1, 130), (1, 144), (8, 130), (32, 130), (32, 144))
        if cuda
        else ((1, 34), (1, 144))
    )
    for batch, frames in shapes:
        z = torch.randn(batch, dim, frames, generator=gen, device=engine.device)
        g = speaker.expand(batch, -1, -1).contiguous()
        with torch.inference_mode():
            row: dict[str, Any] = {"batch": batch, "frames": frames}
            row["fp32_ms"] = timed(lambda: vocoder(z, g=g))  # noqa: B023
            if half is not None:
                zh, gh = z.half(), g.half()
                row["fp16_ms"] = timed(lambda: half(zh, g=gh))  # noqa: B023
                ref = vocoder(z, g=g).float()
                diff = (half(zh, g=gh).float() - ref).abs().max()
                row["fp16_max_diff_rel"] = round(float(diff / ref.abs().max().clamp(min=1e-9)), 5)
                # cuDNN's autotuner instead of its heuristics (the first call per shape tries the
                # algorithms): worth it for the vocoder's few standard shapes if much faster.
                previous, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
                try:
                    row["fp32_autotuned_ms"] = timed(lambda: vocoder(z, g=g))  # noqa: B023
                    row["fp16_autotuned_ms"] = timed(lambda: half(zh, g=gh))  # noqa: B023
                finally:
                    torch.backends.cudnn.benchmark = previous
            if graphs is not None and graphs.run(z, g) is not None:
                dtype = next(graphs.net.parameters()).dtype  # type: ignore[attr-defined]
                zg, gg = z.to(dtype), g.to(dtype)
                row["graph_ms"] = timed(lambda: graphs.run(zg, gg))  # noqa: B023
                row["graph_dtype"] = str(dtype).removeprefix("torch.")
            audio_ms = batch * frames * 256 / 24
            row["fp32_ms_per_audio_s"] = round(1000 * row["fp32_ms"] / audio_ms, 3)
        rows.append(row)
    out["vocoder"] = rows
    return out


def profile(
    engine: XttsEngine, voice: VoiceEmbedding, n: int, tokens: int, out_dir: Path | None
) -> dict[str, Any]:
    """``n`` concurrent requests under torch.profiler: GPU kernels per decode step and the top ones by
    device time, so one GPU run also says where a step's time goes kernel by kernel (kernels are traced
    on every thread; CPU ops only on this one, not the engine thread's). The full table goes to
    ``profile_x<n>.txt`` beside the JSON."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from worker.batching.decoder import BatchDecoder

    cuda = torch.device(engine.device).type == "cuda"
    steps = {"n": 0}
    original = BatchDecoder.launch

    def counted(self: BatchDecoder, *args: Any) -> Any:
        steps["n"] += 1
        return original(self, *args)

    scheduler = SynthesisScheduler(engine, max_queue=n, max_batch=n)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    try:
        asyncio.run(one_level(scheduler, voice, n, WARMUP_TOKENS))
        BatchDecoder.launch = counted  # type: ignore[method-assign,assignment]
        with torch_profile(activities=activities) as prof:
            row = asyncio.run(one_level(scheduler, voice, n, tokens))
    finally:
        BatchDecoder.launch = original  # type: ignore[method-assign]
        scheduler.close()
    events = prof.key_averages()
    sort = "cuda_time_total" if cuda else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=25)
    if out_dir is not None:
        (out_dir / f"profile_x{n}.txt").write_text(events.table(sort_by=sort, row_limit=200))
    kernels = sum(e.count for e in events if cuda and e.device_type.name == "CUDA")
    per_step = kernels / max(1, steps["n"])
    return {"concurrency": n, "steps": steps["n"], "wall_s": round(row.wall_s, 3),
            "kernels_per_step": round(per_step, 1) if cuda else None, "table": table}  # fmt: skip


def phases(engine: XttsEngine, voice: VoiceEmbedding, levels: list[int], tokens: int) -> list[dict[str, Any]]:
    """Host wall time per decode step, by part, at each level (the parts' calls timed; nothing synchronised
    beyond what the code does: launching a step waits for nothing, reading its tokens waits for the device;
    pipelined, the device runs the next step meanwhile)."""
    from collections import defaultdict

    import worker.tts.vocoder
    from worker.batching.decoder import BatchDecoder, PendingStep
    from worker.batching.synthesis import BatchSynthesis
    from worker.tts.vocoder import StreamingVocoder

    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    parts = [
        (BatchSynthesis, "step", "session step"),
        (BatchDecoder, "launch", "gpt step launch"),
        (PendingStep, "result", "wait for a step's tokens"),
        (BatchDecoder, "prefill", "prefill"),
        (StreamingVocoder, "window", "vocoder window planning"),
        (BatchSynthesis, "_launch", "vocoder launch"),  # includes building the windows' input (next)
        (worker.tts.vocoder, "stack_windows", "of which batched windows built"),
        (BatchSynthesis, "_hand_out", "hand out audio"),
    ]
    originals: list[tuple[Any, str, Any]] = [(cls, name, getattr(cls, name)) for cls, name, _ in parts]

    def timed(original: Any, label: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started
                calls[label] += 1

        return run

    for (cls, name, label), (_, _, original) in zip(parts, originals, strict=True):
        setattr(cls, name, timed(original, label))
    out: list[dict[str, Any]] = []
    try:
        for n in levels:
            scheduler = SynthesisScheduler(engine, max_queue=n, max_batch=n)
            try:
                asyncio.run(one_level(scheduler, voice, n, WARMUP_TOKENS))
                spent.clear()
                calls.clear()
                row = asyncio.run(one_level(scheduler, voice, n, tokens))
            finally:
                scheduler.close()
            steps = max(1, calls["gpt step launch"])
            per = {label: round(1000 * spent[label] / steps, 3) for _, _, label in parts}
            per["outside the session (scheduler loop)"] = round(
                1000 * row.wall_s / steps - per["session step"], 3
            )
            out.append({"concurrency": n, "steps": steps, "ms_per_step": round(1000 * row.wall_s / steps, 3),
                        "parts_ms_per_step": per})  # fmt: skip
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
    return out


def reference_voice(engine: XttsEngine) -> VoiceEmbedding:
    """A voice from a synthetic vowel-like signal (no espeak needed on a GPU box)."""
    sr = 22_050
    t = np.arange(sr * 6) / sr
    rng = np.random.default_rng(0)
    vowel = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wav = vowel + 0.02 * rng.standard_normal(t.size)
    return engine.embed(wav.astype(np.float32), sr)


def vocoder_label(engine: XttsEngine) -> str:
    """The precision ``engine``'s batched HiFi-GAN calls ran in (decided when its first session opened)."""
    return str(engine.decoders.vocoder_dtype).removeprefix("torch.")


# (ours, other): the rows compared. Staggered rows only with staggered rows (their arrivals take time).
RATIO_PAIRS = (
    *(
        ("voxclone", other)
        for other in (
            "stock",
            "vox-serial",
            "vox-small-session",
            "vox-eager",
            "vox-eager-prefill",
            "vox-fp32-vocoder",
            "vox-eager-vocoder",
            "vox-watermarked",
            "vox-unpipelined",
            "vox-pipelined",
        )
    ),
    ("vox-staggered", "vox-staggered-eager-vocoder"),
)


def ratios(rows: list[Row]) -> list[dict[str, object]]:
    """voxclone against stock, and batched against serial, at each concurrency both were run at."""
    by = {(r.engine, r.concurrency): r for r in rows}
    out: list[dict[str, object]] = []
    for mine, other in RATIO_PAIRS:
        for n in sorted({r.concurrency for r in rows}):
            ours, base = by.get((mine, n)), by.get((other, n))
            if ours and base:
                out.append({"ours": mine, "vs": other, "concurrency": n,
                            "throughput_x": ours.throughput_x / base.throughput_x,
                            "ttfc_p50_x_faster": base.ttfc_ms_p50 / ours.ttfc_ms_p50,
                            "ttfc_max_x_faster": base.ttfc_ms_max / ours.ttfc_ms_max})  # fmt: skip
    return out


def memory_per_stream(rows: list[Row], kv_bytes: int) -> dict[str, float] | None:
    """GPU memory one more concurrent stream costs: its KV-cache slot plus what the peak grows by."""
    ours = [r for r in rows if r.engine == "voxclone" and r.peak_gpu_mem_gb is not None]  # by concurrency
    if len(ours) < 2:
        return None
    lo, hi = ours[0], ours[-1]
    grown = (hi.peak_gpu_mem_gb or 0.0) - (lo.peak_gpu_mem_gb or 0.0)
    return {
        "kv_cache_mb_per_stream": kv_bytes / 1e6,  # preallocated for every row of the batch
        "peak_growth_mb_per_stream": 1000 * grown / (hi.concurrency - lo.concurrency),
    }


def print_table(meta: dict[str, Any], rows: list[Row], result: dict[str, Any]) -> None:
    marked = "on" if meta["watermark"] else "off"
    print(
        f"\n== XTTS-v2 {meta['size']} (random weights) on {meta['device_name']}, {meta['tokens']} tokens "
        f"= {meta['audio_s_per_request']:.2f} s audio per request, watermark {marked}, "
        f"decode {meta['decode']}, {meta['vocoder']} HiFi-GAN, "
        f"{'pipelined' if meta.get('pipelined') else 'unpipelined'} engine loop, torch {meta['torch']} =="
    )
    head = f"{'engine':16s} {'conc':>4s} {'TTFC p50 ms':>11s} {'p95':>6s} {'max':>6s} {'RTF p50':>8s} "
    print(head + f"{'RTF max':>8s} {'throughput ×RT':>14s} {'wall s':>7s} {'GPU GB':>7s}")
    for r in rows:
        mem = f"{r.peak_gpu_mem_gb:7.2f}" if r.peak_gpu_mem_gb is not None else f"{'-':>7s}"
        print(
            f"{r.engine:16s} {r.concurrency:4d} {r.ttfc_ms_p50:11.0f} {r.ttfc_ms_p95:6.0f} "
            f"{r.ttfc_ms_max:6.0f} {r.rtf_p50:8.3f} {r.rtf_max:8.3f} {r.throughput_x:14.2f} "
            f"{r.wall_s:7.1f} {mem}"
        )
    for q in result["ratios"]:
        print(
            f"{q['ours']} vs {q['vs']:10s} x{q['concurrency']:<3d} throughput {q['throughput_x']:6.2f}×   "
            f"TTFC p50 {q['ttfc_p50_x_faster']:6.2f}× faster   TTFC max {q['ttfc_max_x_faster']:6.2f}× faster"
        )
    reference = result.get("reference_ms_per_token")
    loop = f"{reference:.2f} ms/token" if reference is not None else "not measured"
    for key, label in (
        ("decode", meta["decode"]),
        ("decode_unfused_norm", f"{meta['decode']}, each residual add and LayerNorm two kernels"),
        ("decode_unfused_sampling", f"{meta['decode']}, the token choice and bookkeeping in PyTorch's ops"),
        ("decode_unfused_attention", f"{meta['decode']}, attention and cache write in PyTorch's ops"),
        ("decode_eager", "eager/float32"),
    ):
        if not result.get(key):
            continue
        print(f"\nGPT decode step alone ({label}; the one-request loop: {loop}):")
        for d in result[key]:
            print(
                f"  batch {d['batch']:3d}: {d['ms_per_step']:7.2f} ms/step  "
                f"{d['tokens_per_s']:9.0f} tokens/s  {d['speedup_vs_batch1']:5.2f}× batch 1's throughput"
            )
    parts = result.get("components")
    if parts:
        ops = parts["decode_step_ops"]
        print(
            f"\ndecode step: {ops['total']} kernel-launching ops at batch 1 ({ops['per_layer']} per layer, "
            f"{ops['rest']} for sampling and bookkeeping; the MLP's GELU "
            f"{'in its GEMM' if parts.get('gelu_epilogue') else 'a kernel of its own'}; residual adds "
            f"{'fused with their LayerNorms' if parts.get('fused_norm') else 'and LayerNorms apart'}; "
            f"the step's end {'one kernel' if parts.get('fused_sampling') else 'in PyTorch ops'}; attention "
            f"{attention_ops(parts)})"
        )
        print_attention(parts)
        eager_prefill = parts.get("prefill_one_row_eager_ms")
        launched = f" (launched op by op: {eager_prefill:.2f} ms)" if eager_prefill else ""
        print(f"prefill of one row: {parts['prefill_one_row_ms']:.2f} ms{launched}; HiFi-GAN per window:")
        if "fp16_probe_snr_db" in parts:
            print(
                f"  (on the worker's precision probe, SNR against exact float32: float16 "
                f"{parts['fp16_probe_snr_db']} dB, float32 with cuDNN's TF32 {parts['tf32_probe_snr_db']} dB)"
            )
        for v in parts["vocoder"]:
            half = (
                f"  fp16 {v['fp16_ms']:7.2f} ms (max diff {v['fp16_max_diff_rel']:.4f}); cuDNN autotuned: "
                f"fp32 {v['fp32_autotuned_ms']:.2f}, fp16 {v['fp16_autotuned_ms']:.2f} ms"
                if "fp16_ms" in v
                else ""
            )
            graph = f"; from its graph ({v['graph_dtype']}) {v['graph_ms']:.2f} ms" if "graph_ms" in v else ""
            print(
                f"  {v['batch']:2d} × {v['frames']:3d} frames: fp32 {v['fp32_ms']:7.2f} ms "
                f"({v['fp32_ms_per_audio_s']:.2f} ms per audio s){half}{graph}"
            )
    for prof in result.get("profile") or []:
        if prof:
            per_step = prof["kernels_per_step"]
            kernels = (
                f", {per_step} GPU kernels per decode step (all work: steps, prefills, HiFi-GAN)"
                if per_step is not None
                else ""
            )
            print(f"\nx{prof['concurrency']} under the profiler: {prof['steps']} decode steps{kernels}")
            print(prof["table"])
    for ph in result.get("phases") or []:
        parts_text = ", ".join(f"{k} {v:.2f}" for k, v in ph["parts_ms_per_step"].items())
        print(f"x{ph['concurrency']}: {ph['ms_per_step']:.2f} ms per decode step, of which {parts_text}")
    if result.get("memory"):
        m = result["memory"]
        print(
            f"GPU memory per extra stream: {m['kv_cache_mb_per_stream']:.0f} MB KV cache (preallocated) "
            f"+ {m['peak_growth_mb_per_stream']:.1f} MB peak growth"
        )
    for c in (result.get("check"), result.get("check_fp32_vocoder")):
        if c:
            print(
                f"batched ({c['decode']}) vs one-request reference, greedy: same length {c['same_length']}, "
                f"max diff {c['max_abs_diff_lsb']} LSB, SNR {c['snr_db']} dB, "
                f"identical for {c['identical_until_s']} of {c['audio_s']} s"
            )
    for name, error in result["errors"].items():
        print(f"FAILED {name}: {error}")


def level_list(text: str) -> list[int]:
    """Concurrency levels from the command line: "1,32" → [1, 32]; "" → none."""
    return [int(x) for x in text.split(",") if x]


# Options that name concurrency levels: (flag, default on CUDA, default on the CPU, help).
LEVEL_OPTIONS = (
    ("--serial-at", "8", "8", "levels to also run one request at a time ('' for none)"),
    ("--eager-at", "1,32", "", "CUDA: levels to also run without graphs"),
    (
        "--eager-prefill-at",
        "1,32",
        "",
        "CUDA: levels to also run with captured decode steps but eager prefills",
    ),
    ("--staggered-at", "32", "", "levels to also run with arrivals spread over --stagger-s"),
    ("--watermarked-at", "1,32", "", "levels to also run watermarked, as the worker serves (perth, CPU)"),
    ("--eager-vocoder-at", "1,32", "", "CUDA: levels to also run HiFi-GAN launched op by op (no graphs)"),
    ("--fp32-vocoder-at", "1,32", "", "CUDA: levels to also run float32 HiFi-GAN (not float16)"),
    (
        "--flip-pipeline-at",
        "1,32",
        "",
        "levels to also run with the engine loop's pipelining switched: vox-unpipelined on CUDA",
    ),
    ("--small-session-at", "1,32", "", "levels to also run in a session of max(these) rows, not max(levels)"),
    ("--profile-at", "1,32", "", "levels to run once under torch.profiler ('' for none)"),
    ("--phases-at", "1,32", "1,4", "levels to time the parts at"),
)


def attention_ops(parts: dict[str, Any]) -> str:
    """How the counted step's attention ran, for the components line."""
    if parts.get("fused_attention"):
        return "one kernel with its cache write"
    if any(block for *_, block in parts.get("attention_at") or []):
        return "in PyTorch ops as counted; the fused kernel in the captured shapes where it timed faster"
    return "in PyTorch ops"


def print_attention(parts: dict[str, Any]) -> None:
    """Which captured step shapes kept the fused attention, and each way's replay time where timed."""
    kept = {(b, n): block for b, n, block in parts.get("attention_at") or []}
    if not kept:
        return
    fused = sum(1 for block in kept.values() if block)
    print(f"attention: the fused kernel in {fused} of {len(kept)} captured step shapes")
    timings = parts.get("attention_ms") or []
    if not timings:
        return
    ways = [0, *parts.get("attention_blocks", [])]
    print(
        "  step replay ms by cache length: PyTorch's attention / the fused kernel with blocks of "
        + " / ".join(str(block) for block in ways[1:])
        + " positions (* kept)"
    )
    for batch in sorted({b for b, *_ in timings}):
        cells = [
            f"{n}: "
            + "/".join(
                f"{ms:.3f}{'*' if kept.get((b, n)) == way else ''}"
                for way, ms in zip(ways, times, strict=True)
            )
            for b, n, *times in timings
            if b == batch
        ]
        print(f"  {batch:3d} rows  " + "  ".join(cells))


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--tokens", type=int, default=100, help="audio tokens per request (46.4 ms each)")
    ap.add_argument("--concurrency", type=level_list, default="1,4,8,16,32" if cuda else "1,4,8,16")
    for flag, on_cuda, on_cpu, text in LEVEL_OPTIONS:
        ap.add_argument(flag, type=level_list, default=on_cuda if cuda else on_cpu, help=text)
    ap.add_argument("--stagger-s", type=float, default=1.0, help="seconds staggered arrivals spread over")
    ap.add_argument("--skip-stock", action="store_true", help="leave out stock coqui (quick runs)")
    ap.add_argument(
        "--stock-at",
        type=level_list,
        help="levels to run stock at (default: every level; it is serial anyway)",
    )
    ap.add_argument("--stock-chunk", type=int, default=20, help="stock stream_chunk_size (its default)")
    ap.add_argument("--model-dir", type=Path, help="reuse a checkpoint instead of generating one")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "--watermark", action="store_true", help="mark our output as the server does (stock: never)"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    # The worker's log lines (probes that fall back, graphs captured, attention timing) go with the figures.
    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)8.0f ms %(name)s %(levelname)s: %(message)s"
    )
    torch.set_num_threads(args.threads)
    levels: list[int] = args.concurrency
    serial_levels: list[int] = args.serial_at
    eager_levels: list[int] = args.eager_at
    stock_levels: list[int] = args.stock_at or levels
    eager_prefill_levels: list[int] = args.eager_prefill_at
    eager_vocoder_levels: list[int] = args.eager_vocoder_at
    staggered_levels: list[int] = args.staggered_at
    watermarked_levels: list[int] = args.watermarked_at
    fp32_vocoder_levels: list[int] = args.fp32_vocoder_at
    flip_pipeline_levels: list[int] = args.flip_pipeline_at
    profile_levels: list[int] = args.profile_at
    phase_levels: list[int] = args.phases_at

    started = time.perf_counter()
    model_dir = args.model_dir or make_test_model(Path(tempfile.mkdtemp()), size=args.size)
    # The worker's switches (FAST_DECODE, VOXCLONE_*: bench/README.md), read and checked as the worker does.
    try:
        from core.settings import load_settings
    except ImportError as exc:  # the GPU image has no pydantic: carried in .whl/ (bench/README.md)
        raise SystemExit(
            f"the worker's settings need {exc.name}: carry it in .whl/ (bench/README.md)"
        ) from exc
    engine = XttsEngine.load(model_dir, args.device, settings=load_settings().engine)
    if args.watermark:
        from worker.analysis.watermark import Watermarker

        engine.watermark = Watermarker(device=args.device)
    print(f"checkpoint ready and loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    voice = reference_voice(engine)
    session = engine.open_batch(max(levels))  # builds the decoder (and captures graphs) before timing
    # captures may have failed
    captured = session.graphs, bool(session.decoder.prefill_replay), session.vocoder_graphs is not None
    decode_label = FastDecode(captured[0], engine.fast_decode.dtype, captured[1], captured[2]).label
    kv_bytes = session.decoder.kv_bytes_per_slot
    session.close()
    print(f"decoder ready ({decode_label}) at {time.perf_counter() - started:.1f} s", file=sys.stderr)
    out = args.out or (
        Path(os.environ["OUT"]) / f"synthesis_{args.size}.json" if os.environ.get("OUT") else None
    )
    rows: list[Row] = []
    result: dict[str, Any] = {"errors": {}}
    meta: dict[str, Any] = {}
    eager = XttsEngine(
        engine.model, engine.model_id, args.device, fast_decode=FastDecode(), settings=engine.settings
    )

    def stage(name: str, run: Any) -> Any:
        """One part of the run; a failure is reported and recorded, and the rest still runs."""
        try:
            value = run()
        except Exception as exc:  # a benchmark reports every failure and goes on
            import traceback

            traceback.print_exc()
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            value = None
        print(f"[{name} done at {time.perf_counter() - started:.1f} s]", file=sys.stderr, flush=True)
        if out is not None:  # what was measured so far survives a later crash or timeout
            meta["total_s"] = round(time.perf_counter() - started, 1)
            saved = {"meta": meta, "rows": [asdict(r) for r in rows], **result}
            out.write_text(json.dumps(saved, indent=1, default=str))
        return value

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    meta.update(
        size=args.size,
        device=args.device,
        device_name=f"{device_name} ({torch.get_num_threads()} threads)"
        if device_name == "cpu"
        else device_name,
        tokens=args.tokens,
        torch=torch.__version__,
        decode=decode_label,
        vocoder=vocoder_label(engine),
        max_batch=max(levels),
        stock_chunk_tokens=args.stock_chunk,
        our_chunk_tokens=[engine.chunks.first_tokens, engine.chunks.tokens],
        watermark=args.watermark,
        pipelined=engine.pipeline,
    )

    def variant(
        name: str,
        runner: XttsEngine,
        at: list[int],
        max_batch: int | None = None,
        stagger_s: float = 0.0,
        changes: dict[str, Any] | None = None,
    ) -> None:
        """Rows for one engine at the concurrency levels ``at`` (a failure is recorded, the run goes on).

        ``changes``: engine attributes set for these rows only, on switches each session reads when it
        opens; the engine's decoders and graphs are shared (no second capture: GPU minutes are few).
        """
        batch = max(at) if max_batch is None else max_batch

        def run() -> list[Row]:
            before = {key: getattr(runner, key) for key in changes or {}}
            for key, value in (changes or {}).items():
                setattr(runner, key, value)
            try:
                return asyncio.run(measure(runner, name, voice, at, args.tokens, batch, stagger_s))
            finally:
                for key, value in before.items():
                    setattr(runner, key, value)

        rows.extend(stage(name, run) or [])

    def copy_of(**changes: Any) -> XttsEngine:
        """Another engine on the same model (its own decoders and graphs), with attributes changed."""
        other = XttsEngine(
            engine.model,
            engine.model_id,
            args.device,
            fast_decode=engine.fast_decode,
            settings=engine.settings,
        )
        for key, value in changes.items():
            setattr(other, key, value)
        return other

    # The comparison rows open sessions as large as voxclone's (max(levels) rows), so that a ratio is
    # what the one switch buys; vox-small-session shows what the session's size itself costs.
    same = max(levels)
    variant("voxclone", engine, levels)
    small_levels = [n for n in args.small_session_at if n < same]
    if small_levels:
        variant("vox-small-session", engine, small_levels, max_batch=max(small_levels))
    if serial_levels:  # the same code one request at a time: what batching buys
        variant("vox-serial", engine, serial_levels, max_batch=1)
    if eager_levels:  # the same batching, float32 and no CUDA graphs: what low-overhead decoding buys
        variant("vox-eager", eager, eager_levels)
    if eager_prefill_levels and engine.fast_decode.graphs:  # what capturing the prefill buys
        unfused = FastDecode(graphs=True, dtype=engine.fast_decode.dtype, prefill_graphs=False)
        variant("vox-eager-prefill", copy_of(fast_decode=unfused), eager_prefill_levels, same)
    # The same, HiFi-GAN launched op by op: what replaying it from graphs buys.
    launched = {"fast_decode": dataclasses.replace(engine.fast_decode, vocoder_graphs=False)}
    if eager_vocoder_levels and captured[2]:
        variant("vox-eager-vocoder", engine, eager_vocoder_levels, same, changes=launched)
    if staggered_levels:  # arrivals spread out, as real traffic comes: many small vocoder calls
        variant("vox-staggered", engine, staggered_levels, same, stagger_s=args.stagger_s)
        if captured[2]:
            name = "vox-staggered-eager-vocoder"
            variant(name, engine, staggered_levels, same, stagger_s=args.stagger_s, changes=launched)
    if watermarked_levels:  # as the worker serves: every chunk watermarked (perth, on the CPU)
        from worker.analysis.watermark import Watermarker

        marker = stage("watermarker", Watermarker)
        if marker is not None:
            variant("vox-watermarked", engine, watermarked_levels, same, changes={"watermark": marker})
    fp16_vocoder = engine.decoders.vocoder_dtype == torch.float16
    if fp32_vocoder_levels and fp16_vocoder:  # batched HiFi-GAN calls in float32: what float16 buys
        variant("vox-fp32-vocoder", copy_of(vocoder_precision=VocoderPrecision()), fp32_vocoder_levels, same)
    if flip_pipeline_levels:  # the other engine loop: what launching each step before reading the last buys
        name = "vox-unpipelined" if engine.pipeline else "vox-pipelined"
        variant(name, engine, flip_pipeline_levels, same, changes={"pipeline": not engine.pipeline})
    if phase_levels:
        result["phases"] = stage("phases", lambda: phases(engine, voice, phase_levels, args.tokens))
    result["decode"] = (
        stage("decode", lambda: [asdict(d) for d in decode_steps(engine, voice, levels, steps=50)]) or []
    )
    if eager_levels:
        result["decode_eager"] = stage(
            "decode-eager", lambda: [asdict(d) for d in decode_steps(eager, voice, eager_levels, steps=30)]
        )
    result["reference_ms_per_token"] = stage(
        "reference", lambda: reference_decode_ms(engine, voice, steps=30)
    )
    result["components"] = stage("components", lambda: components(engine, voice))
    result["check"] = stage("check", lambda: agreement(engine, voice, tokens=min(args.tokens, 100)))
    if fp32_vocoder_levels and fp16_vocoder:
        result["check_fp32_vocoder"] = stage(
            "check-fp32-vocoder",
            lambda: agreement(engine, voice, tokens=min(args.tokens, 100), vocoder=VocoderPrecision()),
        )
    if not args.skip_stock:
        rows += (
            stage(
                "stock",
                lambda: asyncio.run(
                    measure(
                        StockEngine(engine, args.stock_chunk), "stock", voice, stock_levels, args.tokens, 1
                    )
                ),
            )
            or []
        )
    # After stock, so that a run out of time loses these diagnostics rather than the ratios. The captured
    # step with one fusion switched off at a time: what each buys. Each its own engine and
    # decoders (one more capture each, ~10 s), built with the switch flipped.
    gpt = engine.model.gpt

    def sampling_works() -> bool:
        return fused_sampling_works(
            engine.sampling,
            vocab=gpt.num_audio_tokens,
            dim=gpt.model_dim,
            positions=gpt.mel_pos_embedding.emb.weight.shape[0],
            stop_token=gpt.stop_audio_token,
            device=engine.device,
            dtype=engine.fast_decode.dtype,
        )

    def attention_works() -> bool:
        first = gpt.gpt.h[0].attn
        return fused_attention_works(
            heads=first.num_heads,
            head_dim=first.head_dim,
            device=engine.device,
            dtype=engine.fast_decode.dtype,
        )

    fast = engine.fast_decode
    flips = [
        (
            "decode_unfused_norm",
            {"fused_norm": "off"},
            lambda: fast.fused_norm != "off" and fused_norm_works(gpt.gpt.h[0].ln_2),
        ),
        (
            "decode_unfused_sampling",
            {"fused_sampling": "off"},
            lambda: fast.fused_sampling != "off" and sampling_works(),
        ),
    ]
    # The attention is in use where it timed faster (or everywhere, switched on): measured without it.
    if fast.fused_attention != "off" and attention_works():
        flips.append(("decode_unfused_attention", {"fused_attention": "off"}, lambda: True))
    for key, switch, applies in flips:
        if fast.graphs and applies():
            unfused = dataclasses.replace(fast, **switch)
            result[key] = stage(
                key.replace("_", "-"),
                lambda unfused=unfused: [
                    asdict(d)
                    for d in decode_steps(copy_of(fast_decode=unfused), voice, [1, max(levels)], steps=50)
                ],
            )
    if profile_levels:  # last: a profiler failure below Python must not cost the parts before it
        where = out.parent if out is not None else None
        result["profile"] = [
            stage(f"profile-x{n}", lambda n=n: profile(engine, voice, n, args.tokens, where))
            for n in profile_levels
        ]
    order = {
        name: i
        for i, name in enumerate(
            (
                "voxclone",
                "vox-small-session",
                "vox-fp32-vocoder",
                "vox-unpipelined",
                "vox-pipelined",
                "vox-eager-prefill",
                "vox-eager-vocoder",
                "vox-staggered",
                "vox-staggered-eager-vocoder",
                "vox-watermarked",
                "vox-serial",
                "vox-eager",
                "stock",
            )
        )
    }
    rows.sort(key=lambda r: (r.concurrency, order[r.engine]))
    result["ratios"] = ratios(rows)
    result["memory"] = memory_per_stream(rows, kv_bytes) if cuda and args.device.startswith("cuda") else None
    meta["audio_s_per_request"] = rows[0].audio_s_per_request if rows else 0.0
    stage("report", lambda: None)  # writes the JSON with the ratios
    print_table(meta, rows, result)


if __name__ == "__main__":
    main()
