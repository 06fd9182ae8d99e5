"""Synthesis benchmark: this worker against stock coqui-tts ``inference_stream``, side by side, one run.

Both engines serve the same random-weight XTTS-v2 checkpoint through the same
``worker.scheduler.SynthesisScheduler`` (one model, one GPU thread, as ``voxclone worker`` runs it), with
1, 4 and 16 requests submitted at once. Reported per engine and concurrency: time to first chunk
(including the wait in the queue), per-stream real-time factor (compute seconds per audio second),
aggregate throughput (audio seconds per wall second) and, on CUDA, peak GPU memory.
Lengths are pinned (``--tokens`` audio tokens per request): random weights never stop on their own.

usage: python bench/synthesis.py [--size tiny|full] [--device cpu|cuda] [--tokens 100]
                                 [--concurrency 1,4,16] [--model-dir DIR] [--watermark] [--out FILE.json]
Prints a table last; writes JSON to --out, or to $OUT/synthesis_<size>.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.scheduler import SynthesisScheduler
from worker.testmodel import make_test_model
from worker.types import SpeechRequest, VoiceEmbedding
from worker.xtts import Int16Array, PreparedSpeech, StreamStats, XttsEngine

TEXT = "Hello world, this is a test of the voice model, and it goes on for a while."
LANGUAGE = "en"
RATE = 24_000  # Hz output


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
        torch.manual_seed(speech.seed)
        chunks = self.ours.model.inference_stream(
            TEXT,
            LANGUAGE,
            speech.gpt_cond_latent,
            speech.speaker_embedding,
            stream_chunk_size=self.chunk_tokens,
            max_new_tokens=speech.max_tokens,
            min_new_tokens=speech.min_tokens,
        )
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
    ttfc_ms_max: float
    rtf_p50: float  # compute seconds per audio second of one stream (queue wait excluded)
    throughput_x: float  # audio seconds produced per wall-clock second, all streams together
    wall_s: float
    peak_gpu_mem_gb: float | None = None


async def one_level(scheduler: SynthesisScheduler, voice: VoiceEmbedding, n: int, tokens: int) -> Row:
    async def one(seed: int) -> tuple[float, StreamStats]:
        submitted = time.perf_counter()
        request = SpeechRequest(
            TEXT, LANGUAGE, voice, max_new_tokens=tokens, min_new_tokens=tokens, seed=seed
        )
        stream = scheduler.submit(request)
        first: float | None = None
        async for _chunk in stream:
            if first is None:
                first = time.perf_counter() - submitted
        return (first or 0.0), stream.stats

    started = time.perf_counter()
    results = await asyncio.gather(*(one(seed) for seed in range(n)))
    wall = time.perf_counter() - started
    ttfc = [r[0] for r in results]
    stats = [r[1] for r in results]
    audio = sum(s.audio_s for s in stats)
    return Row(
        engine="",
        concurrency=n,
        requests=n,
        audio_s_per_request=stats[0].audio_s,
        ttfc_ms_p50=1000 * statistics.median(ttfc),
        ttfc_ms_max=1000 * max(ttfc),
        rtf_p50=statistics.median(s.elapsed_s / s.audio_s for s in stats),
        throughput_x=audio / wall,
        wall_s=wall,
    )


async def measure(
    engine: object, name: str, voice: VoiceEmbedding, levels: list[int], tokens: int
) -> list[Row]:
    rows = []
    for n in levels:
        scheduler = SynthesisScheduler(engine, max_queue=max(n, 1))  # type: ignore[arg-type]
        try:
            await one_level(scheduler, voice, 1, min(tokens, 20))  # warm-up
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            row = await one_level(scheduler, voice, n, tokens)
        finally:
            scheduler.close()
        row.engine = name
        if torch.cuda.is_available():
            row.peak_gpu_mem_gb = torch.cuda.max_memory_allocated() / 1e9
        print(f"  {name:9s} x{n:<3d} {row.wall_s:7.1f} s", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def reference_voice(engine: XttsEngine) -> VoiceEmbedding:
    """A voice from a synthetic vowel-like signal (no espeak needed on a GPU box)."""
    sr = 22_050
    t = np.arange(sr * 6) / sr
    rng = np.random.default_rng(0)
    wav = 0.3 * np.sin(2 * np.pi * 140 * t) * (
        1 + 0.5 * np.sin(2 * np.pi * 3 * t)
    ) + 0.02 * rng.standard_normal(t.size)
    return engine.embed(wav.astype(np.float32), sr)


def print_table(meta: dict[str, object], rows: list[Row]) -> None:
    marked = "on" if meta["watermark"] else "off"
    print(
        f"\n== XTTS-v2 {meta['size']} (random weights) on {meta['device_name']}, {meta['tokens']} tokens "
        f"= {meta['audio_s_per_request']:.2f} s audio per request, watermark {marked}, "
        f"torch {meta['torch']} =="
    )
    head = f"{'engine':9s} {'conc':>4s} {'TTFC p50 ms':>11s} {'TTFC max ms':>11s} {'RTF p50':>8s} "
    print(head + f"{'throughput ×RT':>14s} {'wall s':>7s} {'GPU GB':>7s}")
    for r in rows:
        mem = f"{r.peak_gpu_mem_gb:7.2f}" if r.peak_gpu_mem_gb is not None else f"{'-':>7s}"
        print(
            f"{r.engine:9s} {r.concurrency:4d} {r.ttfc_ms_p50:11.0f} {r.ttfc_ms_max:11.0f} {r.rtf_p50:8.3f} "
            f"{r.throughput_x:14.2f} {r.wall_s:7.1f} {mem}"
        )
    by = {(r.engine, r.concurrency): r for r in rows}
    for n in sorted({r.concurrency for r in rows}):
        ours, stock = by.get(("voxclone", n)), by.get(("stock", n))
        if ours and stock:
            print(
                f"ratio x{n:<3d} throughput {ours.throughput_x / stock.throughput_x:5.2f}×   "
                f"TTFC p50 {stock.ttfc_ms_p50 / ours.ttfc_ms_p50:5.2f}× faster   "
                f"RTF {stock.rtf_p50 / ours.rtf_p50:5.2f}× lower"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=100, help="audio tokens per request (46.4 ms each)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--stock-chunk", type=int, default=20, help="stock stream_chunk_size (its default)")
    ap.add_argument("--model-dir", type=Path, help="reuse a checkpoint instead of generating one")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "--watermark", action="store_true", help="mark our output as the server does (stock: never)"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    levels = [int(x) for x in args.concurrency.split(",")]

    started = time.perf_counter()
    model_dir = args.model_dir or make_test_model(Path(tempfile.mkdtemp()), size=args.size)
    engine = XttsEngine.load(model_dir, args.device)
    if args.watermark:
        from worker.watermark import Watermarker

        engine.watermark = Watermarker(device=args.device)
    print(f"checkpoint ready and loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    voice = reference_voice(engine)
    rows = asyncio.run(measure(engine, "voxclone", voice, levels, args.tokens))
    rows += asyncio.run(measure(StockEngine(engine, args.stock_chunk), "stock", voice, levels, args.tokens))
    rows.sort(key=lambda r: (r.concurrency, r.engine != "voxclone"))

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    meta: dict[str, object] = {
        "size": args.size,
        "device": args.device,
        "device_name": f"{device_name} ({torch.get_num_threads()} threads)"
        if device_name == "cpu"
        else device_name,
        "tokens": args.tokens,
        "audio_s_per_request": rows[0].audio_s_per_request,
        "torch": torch.__version__,
        "stock_chunk_tokens": args.stock_chunk,
        "our_chunk_tokens": [engine.chunks.first_tokens, engine.chunks.tokens],
        "watermark": args.watermark,
    }
    out = args.out or (
        Path(os.environ["OUT"]) / f"synthesis_{args.size}.json" if os.environ.get("OUT") else None
    )
    if out is not None:
        out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    print_table(meta, rows)


if __name__ == "__main__":
    main()
