"""Low-overhead decoding on CUDA: the batched decode step captured as CUDA graphs, in half precision.

:func:`resolve_fast_decode` decides whether (``FAST_DECODE``, from the engine's settings); the capture
functions record the step, the prefills and HiFi-GAN per bucket and check each graph against the eager code
before use, turning graphs off when one fails.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from core.engine_settings import AutoOff, AutoOnOff, EngineSettings
from worker.kernels.attention import BLOCK_POSITIONS, BLOCKS

if TYPE_CHECKING:
    from collections.abc import Callable

    from worker.batching.decoder import BatchDecoder, Replayable

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}  # latent max abs diff


@dataclass(frozen=True)
class FastDecode:
    """How the batched decoder runs: CUDA graphs or eager, the GPT's dtype, the fused kernels asked for."""

    graphs: bool = False
    dtype: torch.dtype = torch.float32
    prefill_graphs: bool = True  # with graphs: the prefill captured too (``VOXCLONE_PREFILL_GRAPHS``)
    vocoder_graphs: bool = True  # with graphs: HiFi-GAN's standard shapes too (``VOXCLONE_VOCODER_GRAPHS``)
    # With graphs, each Triton kernel where its probe agrees (``auto``), or not (``off``); the attention
    # also in every step without timing (``on``): VOXCLONE_FUSED_NORM, _SAMPLING and _ATTENTION.
    fused_norm: AutoOff = "auto"
    fused_sampling: AutoOff = "auto"
    fused_attention: AutoOnOff = "auto"

    @property
    def label(self) -> str:
        kind = "cuda-graphs" if self.graphs else "eager"
        eager = [
            part
            for part, on in (("prefill", self.prefill_graphs), ("vocoder", self.vocoder_graphs))
            if not on
        ]
        if self.graphs and eager:
            kind += f" (eager {' and '.join(eager)})"
        return f"{kind}/{str(self.dtype).removeprefix('torch.')}"


def resolve_fast_decode(device: str, settings: EngineSettings | None = None) -> FastDecode:
    """The decode mode for ``device`` by the engine's switches (``settings``; None: the defaults).

    ``fast_decode`` ``auto`` and ``on`` mean CUDA graphs and float16 on a CUDA device; on the CPU ``auto``
    is eager float32 and ``on`` is refused. ``decode_dtype`` overrides the precision. With graphs,
    prefills and HiFi-GAN are captured too unless ``prefill_graphs`` or ``vocoder_graphs`` is ``off``.
    The default is ``auto``: on an H100 the captured float16 step took 2.5 ms against 11.6 ms eager at
    batch 1, and its greedy audio matched the float32 reference to 2 LSB (``bench/README.md``).
    """
    settings = settings or EngineSettings()
    cuda = torch.device(device).type == "cuda"
    if settings.fast_decode == "on" and not cuda:
        raise ValueError(f"FAST_DECODE=on needs a CUDA device; this worker runs on {device}")
    fast = cuda and settings.fast_decode != "off"
    name = settings.decode_dtype or ("float16" if fast else "float32")
    if not cuda and name != "float32":
        raise ValueError(
            f"VOXCLONE_DECODE_DTYPE={name}: reduced-precision decoding is only supported on CUDA"
        )
    return FastDecode(
        graphs=fast,
        dtype=_DTYPES[name],
        prefill_graphs=settings.prefill_graphs == "on",
        vocoder_graphs=settings.vocoder_graphs == "on",
        fused_norm=settings.fused_norm,
        fused_sampling=settings.fused_sampling,
        fused_attention=settings.fused_attention,
    )


def capture_steps(decoder: BatchDecoder) -> bool:
    """Capture and check a graph of the decode step for every bucket; False (eager from then on) on failure.

    With :attr:`~worker.batching.decoder.BatchDecoder.timed_attention` the step is captured with PyTorch's
    attention and with the fused kernel (:mod:`worker.kernels.attention`) at each of its block sizes; the
    graphs are timed on the device and the fastest is kept per bucket (:func:`_keep_fastest`). Call with
    no rows occupied (a fresh decoder): warm-up runs execute the step, with every row inactive.
    """

    def prepare(batch: int, length: int) -> None:
        decoder.active.zero_()  # warm-up runs must not advance anything

    shapes = [(b, n) for b in decoder.batch_sizes for n in decoder.lengths]
    first = BLOCK_POSITIONS if decoder.fused_attention and not decoder.timed_attention else 0
    run = functools.partial(decoder.run_step, attention=first)
    graphs = _capture_all(decoder, "decode step", shapes, prepare, run, _step_agrees)
    if graphs is None:
        return False
    decoder.attention_at.update(dict.fromkeys(graphs, first))
    if decoder.timed_attention:
        candidates: dict[int, dict[tuple[int, int], torch.cuda.CUDAGraph]] = {}
        for block in BLOCKS:
            run = functools.partial(decoder.run_step, attention=block)
            what = f"decode step with the fused attention (blocks of {block})"
            kept = "not using it"
            captured = _capture_all(decoder, what, shapes, prepare, run, _step_agrees, kept)
            if captured is not None:  # else (warned) without it
                candidates[block] = captured
        if candidates:
            try:
                _keep_fastest(decoder, graphs, candidates)
            except RuntimeError:
                decoder.attention_ms.clear()
                log.warning("timing the fused attention failed: keeping PyTorch's attention", exc_info=True)
    decoder.replay.update(graphs)
    return True


REPLAY_ROUNDS = 3  # timing a captured step: rounds, alternating between the graphs compared...
REPLAYS_PER_ROUND = 4  # ...of this many replays each; each graph's figure is its median round
FUSED_MARGIN = 0.02  # the fused attention is kept where its step is faster by more than this fraction


def _keep_fastest(
    decoder: BatchDecoder,
    graphs: dict[tuple[int, int], torch.cuda.CUDAGraph],
    candidates: dict[int, dict[tuple[int, int], torch.cuda.CUDAGraph]],
) -> None:
    """Per shape, put the fastest fused-attention graph in ``graphs`` where it beats PyTorch's attention.

    PyTorch's attention is a tuned library kernel (CUTLASS or flash, picked per shape), ours saves a
    kernel per layer and the mask: which wins depends on the GPU, the rows and the cache length, so it
    is measured here, on the device, at every shape the decoder will replay, and so is the kernel's block
    size (``candidates``: block size → graphs). Every row sits at the bucket's last position while timed,
    so ours reads all that PyTorch's reads (it reads a row's cache only up to the row's position; in use
    rows are shorter, and ours gains). The fused one must win by :data:`FUSED_MARGIN` (timing noise does
    not swap a library kernel for ours).
    """
    started = time.perf_counter()
    chosen: dict[tuple[int, int], int] = {}
    gains: list[float] = []  # of the kept fused steps over PyTorch's
    try:
        for shape, plain in graphs.items():
            blocks = [block for block, captured in candidates.items() if shape in captured]
            with torch.inference_mode():
                decoder.active.zero_()  # replays must not advance anything
                decoder.pos.fill_(shape[1] - 1)
                times = _replay_ms([plain, *(candidates[b][shape] for b in blocks)], decoder.device)
            by_block = dict(zip(blocks, times[1:], strict=True))
            # NaN for a block whose capture failed
            decoder.attention_ms[shape] = (times[0], *(by_block.get(b, math.nan) for b in BLOCKS))
            best = min(by_block, key=by_block.__getitem__)
            if by_block[best] < (1 - FUSED_MARGIN) * times[0]:
                chosen[shape] = best
                gains.append(1 - by_block[best] / times[0])
    finally:
        _reset_rows(decoder)
    for shape, block in chosen.items():  # only once every shape was timed: a failure above changes nothing
        graphs[shape] = candidates[block][shape]
        decoder.attention_at[shape] = block
    log.info(
        "the decode step's attention: the fused kernel at %d of %d shapes (%s), PyTorch's at the rest; "
        "timed in %.1f s",
        len(chosen), len(graphs),
        f"{min(gains):.0%} to {max(gains):.0%} faster there" if chosen else "nowhere faster",
        time.perf_counter() - started,
    )  # fmt: skip


def _replay_ms(graphs: list[Replayable], device: torch.device) -> list[float]:
    """ms per replay of each graph: :data:`REPLAY_ROUNDS` rounds taking turns, the median round each."""
    for graph in graphs:  # warm
        graph.replay()
    rounds: list[list[float]] = [[] for _ in graphs]
    for _ in range(REPLAY_ROUNDS):
        for graph, times in zip(graphs, rounds, strict=True):
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(REPLAYS_PER_ROUND):
                graph.replay()
            torch.cuda.synchronize(device)
            times.append(1000 * (time.perf_counter() - started) / REPLAYS_PER_ROUND)
    return [statistics.median(times) for times in rounds]


def capture_prefills(decoder: BatchDecoder) -> bool:
    """Capture and check a graph of the prefill for every (rows, width) bucket; False: prefills stay eager.

    An eager prefill is a forward of every layer launched from Python (~15 ms on an H100 whatever its
    size), and every row in the batch waits for it; captured, it is a replay. Call on a fresh decoder,
    after :func:`capture_steps`; a failure here leaves the captured decode steps in use.
    """

    def prepare(rows: int, width: int) -> None:  # warm-ups read these: in range for this width
        decoder.p_slots[:rows] = torch.arange(rows, device=decoder.device)
        decoder.p_sizes[:rows] = width

    shapes = [(r, w) for r in range(1, decoder.prefill_group + 1) for w in decoder.prefill_widths]
    graphs = _capture_all(decoder, "prefill", shapes, prepare, decoder.run_prefill, _prefill_agrees)
    if graphs is None:
        return False
    decoder.prefill_replay.update(graphs)
    return True


def _capture_all(
    decoder: BatchDecoder,
    what: str,
    shapes: list[tuple[int, int]],
    prepare: Callable[[int, int], None],
    run: Callable[[int, int], None],
    agrees: Callable[[BatchDecoder, torch.cuda.CUDAGraph, Callable[[int, int], None], int, int], bool],
    fallback: str = "running it eagerly",
) -> dict[tuple[int, int], torch.cuda.CUDAGraph] | None:
    """A checked graph of ``run`` per shape, sharing one memory pool; None (with a warning) on any failure."""
    if decoder.rows:
        raise RuntimeError("capture graphs before any row joins")
    started = time.perf_counter()
    pool = torch.cuda.graph_pool_handle()
    stream = torch.cuda.Stream(device=decoder.device)
    graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
    try:
        for shape in shapes:
            with torch.inference_mode():
                prepare(*shape)
            graphs[shape] = _capture(decoder.device, functools.partial(run, *shape), pool, stream)
            if not agrees(decoder, graphs[shape], run, *shape):
                log.warning("a captured %s disagrees with the eager one: %s", what, fallback)
                return None
    except RuntimeError:
        log.warning("capturing the %s in a CUDA graph failed: %s", what, fallback, exc_info=True)
        return None
    finally:
        _reset_rows(decoder)
    log.info(
        "captured the %s in CUDA graphs for %d shapes, %s to %s, in %.1f s",
        what, len(graphs), shapes[0], shapes[-1], time.perf_counter() - started,
    )  # fmt: skip
    return graphs


def _capture(
    device: torch.device, run: Callable[[], None], pool: Any, stream: torch.cuda.Stream
) -> torch.cuda.CUDAGraph:
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads (embedding, transcription) may use the GPU while this one captures.
    with (
        torch.inference_mode(),
        torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"),
    ):
        run()
    return graph


def _step_agrees(
    decoder: BatchDecoder,
    graph: torch.cuda.CUDAGraph,
    run: Callable[[int, int], None],
    batch: int,
    length: int,
) -> bool:
    """Replay ``graph`` and ``run`` the eager step on the same random state; compare latents and tokens."""
    gen = torch.Generator(device=decoder.device).manual_seed(batch * 100_003 + length)
    with torch.inference_mode():
        decoder.x[:batch] = 0.5 * torch.randn(batch, decoder.dim, generator=gen, device=decoder.device)
        decoder.pos[:batch] = torch.randint(0, length, (batch,), generator=gen, device=decoder.device)
        decoder.steps[:batch] = torch.randint(1, 50, (batch,), generator=gen, device=decoder.device)
        decoder.uniform[:batch] = torch.rand(batch, generator=gen, device=decoder.device)
        decoder.active[:batch] = False
        graph.replay()
        replayed = decoder.out_latent[:batch].clone(), decoder.out_tokens[:batch].clone()
        run(batch, length)
        eager = decoder.out_latent[:batch], decoder.out_tokens[:batch]
    return _compare(decoder, replayed, eager, f"decode step at batch {batch} length {length}")


def _prefill_agrees(
    decoder: BatchDecoder, graph: torch.cuda.CUDAGraph, run: Callable[[int, int], None], rows: int, width: int
) -> bool:
    """Replay ``graph`` and run the eager prefill on the same random prefixes; compare latents and tokens."""
    gen = torch.Generator(device=decoder.device).manual_seed(rows * 100_019 + width)
    dev = decoder.device
    with torch.inference_mode():
        decoder.px[:rows, :width] = 0.5 * torch.randn(rows, width, decoder.dim, generator=gen, device=dev)
        decoder.p_slots[:rows] = torch.arange(rows, device=dev)
        decoder.p_sizes[:rows] = torch.randint(1, width + 1, (rows,), generator=gen, device=dev)
        decoder.p_min_tokens[:rows] = torch.randint(0, 3, (rows,), generator=gen, device=dev)
        decoder.p_uniform[:rows] = torch.rand(rows, generator=gen, device=dev)
        graph.replay()
        replayed = decoder.p_latent[:rows].clone(), decoder.p_tokens[:rows].clone()
        run(rows, width)
        eager = decoder.p_latent[:rows], decoder.p_tokens[:rows]
    return _compare(decoder, replayed, eager, f"prefill of {rows} rows at width {width}")


def _compare(
    decoder: BatchDecoder,
    replayed: tuple[torch.Tensor, torch.Tensor],
    eager: tuple[torch.Tensor, torch.Tensor],
    what: str,
) -> bool:
    diff = float((replayed[0] - eager[0]).abs().max())
    same_tokens = float((replayed[1] == eager[1]).float().mean())
    ok = diff <= _CHECK_TOLERANCE[decoder.dtype] and same_tokens >= 0.75
    if not ok:
        log.warning(
            "graph check of the %s: latent diff %.3g, tokens same %.0f%%", what, diff, 100 * same_tokens
        )
    return ok


def _reset_rows(decoder: BatchDecoder) -> None:
    with torch.inference_mode():
        for buf in (decoder.x, decoder.pos, decoder.steps, decoder.uniform, decoder.seen, decoder.active):
            buf.zero_()


class VocoderGraphs:
    """HiFi-GAN replayed from CUDA graphs at the vocoder's standard shapes (:func:`capture_vocoder`).

    A HiFi-GAN call is ~300 operations launched from Python, ~4.5 ms of host time on the lent H100
    whatever its size (one 34-frame window: 4.53 ms in float32, 5.23 in float16; 32 windows of 130
    frames: 43.6 ms), so one stream's windows cost far more to launch than to compute. Batched calls
    already come in a few shapes (:func:`worker.tts.vocoder.standard_shapes`); captured, a call is two
    copies in, a replay and a copy out. Inputs and outputs live in static buffers per shape.
    """

    def __init__(self, net: Any, shapes: list[tuple[int, int]]) -> None:
        self.net = net  # a HifiganGenerator
        weight = next(net.parameters())
        dim, d_vector = int(net.conv_pre.in_channels), int(net.cond_layer.in_channels)
        self.z = {s: torch.zeros(s[0], dim, s[1], dtype=weight.dtype, device=weight.device) for s in shapes}
        self.g = {s: torch.zeros(s[0], d_vector, 1, dtype=weight.dtype, device=weight.device) for s in shapes}
        self.out: dict[tuple[int, int], torch.Tensor] = {}
        self.graphs: dict[tuple[int, int], Replayable] = {}

    def forward(self, batch: int, width: int) -> None:
        """HiFi-GAN over this shape's static input, into its static output: what each graph captures."""
        shape = (batch, width)
        self.out[shape] = self.net(self.z[shape], g=self.g[shape])

    def run(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """HiFi-GAN's output for ``(z, g)`` from the graph of their shape (a copy: the next replay reuses
        the static output); None when there is none."""
        shape = (int(z.shape[0]), int(z.shape[-1]))
        graph = self.graphs.get(shape)
        if graph is None:
            return None
        self.z[shape].copy_(z)
        self.g[shape].copy_(g)
        graph.replay()
        return self.out[shape].clone()


def capture_vocoder(net: torch.nn.Module, streams: int, widths: int = 3) -> VocoderGraphs | None:
    """Graphs of HiFi-GAN ``net`` at every standard shape for up to ``streams`` streams (``widths`` as in
    :func:`worker.tts.vocoder.standard_shapes`), each checked against the eager call on a random input;
    None (with a warning) if any capture fails or disagrees."""
    from worker.tts.vocoder import standard_shapes

    started = time.perf_counter()
    shapes = standard_shapes(streams, widths=widths)
    graphs = VocoderGraphs(net, shapes)
    device = next(net.parameters()).device
    pool = torch.cuda.graph_pool_handle()
    stream = torch.cuda.Stream(device=device)
    try:
        for shape in shapes:
            graph = _capture(device, functools.partial(graphs.forward, *shape), pool, stream)
            if not _vocoder_agrees(graphs, graph, *shape):
                log.warning("a captured HiFi-GAN disagrees with the eager one: running it eagerly")
                return None
            graphs.graphs[shape] = graph
    except RuntimeError:
        log.warning("capturing HiFi-GAN in a CUDA graph failed: running it eagerly", exc_info=True)
        return None
    log.info(
        "captured HiFi-GAN in CUDA graphs for %d shapes, %s to %s, in %.1f s",
        len(shapes), shapes[0], shapes[-1], time.perf_counter() - started,
    )  # fmt: skip
    return graphs


def _vocoder_agrees(graphs: VocoderGraphs, graph: Replayable, batch: int, width: int) -> bool:
    """Replay ``graph`` on a random input and run HiFi-GAN eagerly on the same; compare the audio."""
    shape = (batch, width)
    z, g = graphs.z[shape], graphs.g[shape]
    gen = torch.Generator(device=z.device).manual_seed(batch * 100_043 + width)
    with torch.inference_mode():
        z.copy_(torch.randn(z.shape, generator=gen, device=z.device))
        g.copy_(torch.nn.functional.normalize(torch.randn(g.shape, generator=gen, device=z.device), dim=1))
        graph.replay()
        replayed = graphs.out[shape].float()
        eager = graphs.net(z, g=g).float()
    diff = float((replayed - eager).abs().max())
    peak = float(eager.abs().max())
    ok = diff <= _VOCODER_TOLERANCE * max(peak, 1e-6)
    if not ok:
        log.warning(
            "graph check of HiFi-GAN at %d × %d frames: largest difference %.3g of peak %.3g",
            *shape,
            diff,
            peak,
        )
    return ok


_VOCODER_TOLERANCE = 1e-3  # of the peak: the same kernels replayed agree far closer; a wrong capture does not
