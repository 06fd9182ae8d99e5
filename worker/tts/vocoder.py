"""Streaming HiFi-GAN decoding of XTTS-v2 GPT latents: each frame decoded about once, exactly as a whole.

:class:`StreamingVocoder` decodes only the frames a chunk needs, with enough context on each side that every
sample equals a whole-sentence decode; on CUDA the windows come in a few standard shapes so that cuDNN's
plans are reused (:func:`decode_windows`, :func:`prewarm`).
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from worker.tts.transfer import to_device

if TYPE_CHECKING:
    from TTS.tts.layers.xtts.hifigan_decoder import HifiDecoder

    from core.engine_settings import VocoderDtype

log = logging.getLogger(__name__)

# XTTS-v2's HiFi-GAN: an output sample depends on input frames up to 13 away on either side (measured by
# perturbing one frame; tests/worker/serving/test_engine.py checks it). Context beyond it makes chunks exact.
VOCODER_RECEPTIVE_FRAMES = 13
DEFAULT_CONTEXT_FRAMES = VOCODER_RECEPTIVE_FRAMES  # frames decoded on each side of a chunk (0.14 s)
WINDOW_STEP_CUDA = 48  # frames: CUDA windows are multiples of this (chunks of 8/16/27 tokens → 48/96/144)
VOCODER_BATCHES = (1, 2, 4, 8, 16, 24, 32)  # streams per batched HiFi-GAN call, padded up to one of these


_GRIDS: weakref.WeakKeyDictionary[Any, FrameGrid] = weakref.WeakKeyDictionary()  # by HifiDecoder


def _scale(factor: float) -> float:
    """The source-coordinate step torch's linear upsampling uses for ``scale_factor`` (float32, 1/factor)."""
    return float(np.float32(1.0 / factor))


class FrameGrid:
    """Frame arithmetic of HifiDecoder's two linear resamplings, identical to ``F.interpolate``'s."""

    def __init__(self, decoder: HifiDecoder) -> None:
        self.factor1 = decoder.ar_mel_length_compression / decoder.output_hop_length  # 4.0 latents→mel frames
        self.factor2 = decoder.output_sample_rate / decoder.input_sample_rate  # 24000/22050
        self.hop = decoder.output_hop_length  # 256 output samples per frame
        self.step1 = _scale(self.factor1)
        self.step2 = _scale(self.factor2)
        self._exact: dict[int, int] = {}  # exact_frames by token count (asked every step of every stream)

    @classmethod
    def of(cls, decoder: HifiDecoder) -> FrameGrid:
        """The grid of ``decoder``, made once: every sentence's vocoder shares it (and its cache)."""
        grid = _GRIDS.get(decoder)
        if grid is None:
            grid = _GRIDS[decoder] = cls(decoder)
        return grid

    def stage1_len(self, tokens: int) -> int:
        return math.floor(tokens * self.factor1)

    def frames(self, tokens: int) -> int:
        """Frames HifiDecoder makes from ``tokens`` latents (its output has ``frames × hop`` samples)."""
        return math.floor(self.stage1_len(tokens) * self.factor2)

    def samples(self, tokens: int) -> int:
        """Output samples a whole-sentence decode of ``tokens`` latents gives."""
        return self.frames(tokens) * self.hop

    @staticmethod
    def _source(index: np.ndarray, step: float, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Source positions of ``index`` as ``F.interpolate`` computes them, in float32, on the host."""
        half, zero = np.float32(0.5), np.float32(0.0)
        src = np.maximum((index.astype(np.float32) + half) * np.float32(step) - half, zero)
        lo = src.astype(np.int64)
        frac = src - lo.astype(np.float32)
        hi = np.where(lo < size - 1, lo + 1, lo)
        return lo, hi, frac

    def exact_frames(self, tokens: int) -> int:
        """How many leading frames no later latent can change, when ``tokens`` latents are known so far."""
        known = self._exact.get(tokens)
        if known is None:
            known = self._exact[tokens] = self._exact_frames(tokens)
        return known

    def _exact_frames(self, tokens: int) -> int:
        n1 = self.stage1_len(tokens)
        total = self.frames(tokens)
        if total == 0:
            return 0
        candidates = np.arange(max(0, total - 16), total)
        lo2, _, _ = self._source(candidates, self.step2, 1 << 30)
        lo1, _, _ = self._source(lo2 + 1, self.step1, 1 << 30)
        good = candidates[(lo2 + 1 <= n1 - 1) & (lo1 + 1 <= tokens - 1)]
        return int(good.max()) + 1 if good.size else 0

    def weights(self, start: int, end: int, tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where frames ``[start, end)`` read, as ``F.interpolate`` does both resamplings, on the host.

        Returns ``(index, w1, w2)``: ``index[k, j, f]`` is the latent (global) that frame ``f`` reads, ``k``
        0/1 for the lower/upper neighbour in the first resampling and ``j`` 0/1 for the lower/upper
        stage-1 frame the second one reads; ``w1[j, f]`` and ``w2[f]`` are the interpolation weights.
        """
        lo2, hi2, w2 = self._source(np.arange(start, end), self.step2, self.stage1_len(tokens))
        lo1, hi1, w1 = self._source(np.stack([lo2, hi2]), self.step1, tokens)  # [2, F] each
        return np.stack([lo1, hi1]), w1, w2

    def resample(
        self, latents: torch.Tensor, first_token: int, tokens: int, start: int, end: int
    ) -> torch.Tensor:
        """Frames ``[start, end)`` (global indices) of the resampled latents, as ``[1, D, end - start]``.

        ``latents`` holds latents ``first_token ...`` of a sentence whose first ``tokens`` latents are known;
        it must cover every latent those frames read. Indices and weights are worked out on the host (a
        few microseconds) and go to the device in two copies; the interpolation itself runs there.
        """
        index, w1, w2 = self.weights(start, end, tokens)
        return interpolate(latents, index - first_token, w1, w2).T.unsqueeze(0)

    def latent_span(self, start: int, end: int, tokens: int) -> tuple[int, int]:
        """The latents ``[first, last]`` that frames ``[start, end)`` read."""
        lo2, hi2, _ = self._source(np.array([start, end - 1]), self.step2, self.stage1_len(tokens))
        lo1, _, _ = self._source(lo2[:1], self.step1, tokens)
        _, hi1, _ = self._source(hi2[1:], self.step1, tokens)
        return int(lo1[0]), int(hi1[0])


class StreamingVocoder:
    """Audio for one sentence as its latents arrive; call :meth:`push` per step, :meth:`take` per chunk."""

    def __init__(
        self,
        decoder: HifiDecoder,
        speaker_embedding: torch.Tensor,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
        window_step: int = 1,
    ) -> None:
        if context_frames < VOCODER_RECEPTIVE_FRAMES:
            raise ValueError(f"context_frames must be >= {VOCODER_RECEPTIVE_FRAMES} for exact chunks")
        self.decoder = decoder
        self.grid = FrameGrid.of(decoder)
        self.speaker = speaker_embedding
        self.context = context_frames
        self.window_step = window_step  # windows span a multiple of this many frames where they can
        self._latents: list[torch.Tensor] = []
        self.emitted_frames = 0  # frames already returned as audio
        self.decoded_frames = 0  # frames run through HiFi-GAN, context included (the vocoder's work)

    @property
    def tokens(self) -> int:
        return len(self._latents)

    def push(self, latent: torch.Tensor) -> None:
        self._latents.append(latent)

    def pending_frames(self, final: bool) -> int:
        """Frames :meth:`take` would return now."""
        return self._end_frame(final) - self.emitted_frames

    def _end_frame(self, final: bool) -> int:
        if final:
            return self.grid.frames(self.tokens)
        # Hold back the last frames: their right-hand context is not known yet.
        return max(self.emitted_frames, self.grid.exact_frames(self.tokens) - self.context)

    def window(self, final: bool = False) -> VocoderWindow | None:
        """What :meth:`take` would run HiFi-GAN on now (None when there is nothing new to emit)."""
        end = self._end_frame(final)
        start = self.emitted_frames
        if end <= start:
            return None
        tokens = self.tokens
        win_end = min(self.grid.frames(tokens), end + self.context)
        natural = win_end - max(0, start - self.context)
        width = -(-natural // self.window_step) * self.window_step
        win_start = max(0, win_end - width)  # more real context on the left changes nothing emitted
        first, last = self.grid.latent_span(win_start, win_end, tokens)
        span = LatentSpan(self.grid, self._latents[first : last + 1], first, tokens)
        return VocoderWindow(span, self.speaker, win_start, start, end, final, width, win_end - win_start)

    def commit(self, window: VocoderWindow) -> None:
        """Count ``window`` as emitted: the next window starts where it ends (its audio may come later)."""
        self.decoded_frames += window.frames
        self.emitted_frames = window.end

    def accept(self, window: VocoderWindow, wav: torch.Tensor) -> torch.Tensor:
        """The new audio of ``window`` from HiFi-GAN's output over it (``wav``, 1-D); marks it emitted."""
        self.commit(window)
        return window.new_audio(wav)

    @torch.inference_mode()
    def take(self, final: bool = False) -> torch.Tensor:
        """New audio (1-D float tensor at 24 kHz); ``final`` flushes the sentence's end."""
        window = self.window(final)
        if window is None:
            return torch.zeros(0)
        return self.accept(window, self.decoder.waveform_decoder(window.z, g=window.speaker).reshape(-1))


def interpolate(latents: torch.Tensor, index: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> torch.Tensor:
    """``[F, D]`` frames from ``latents`` (``[T, D]``) by :meth:`FrameGrid.weights`' indices (into
    ``latents``) and weights, with ``F.interpolate``'s float operations. Two copies to the device, queued
    (:mod:`worker.tts.transfer`): the host does not wait for the decode step in flight."""
    index_t = to_device(index, latents.device)  # [2, 2, F]
    weights = to_device(np.concatenate([w1, w2[None]]), latents.device)  # [3, F]
    w1t = weights[:2, :, None].to(latents.dtype)
    mel = latents[index_t[0]] * (1 - w1t) + latents[index_t[1]] * w1t  # [2, F, D]: two stage-1 frames each
    w2t = weights[2, :, None].to(latents.dtype)
    return mel[0] * (1 - w2t) + mel[1] * w2t


@dataclass(frozen=True)
class LatentSpan:
    """The latents ``first ...`` a window reads (a sentence with ``tokens`` latents known so far)."""

    grid: FrameGrid
    latents: list[torch.Tensor]  # [D] each
    first: int
    tokens: int


@dataclass(frozen=True)
class VocoderWindow:
    """Resampled latents for frames ``[win_start, win_start + frames)``, of which ``[start, end)`` are new.

    The resampling runs when :attr:`z` is first read: batched calls (:func:`decode_windows`) build all
    their windows in one gather instead.
    """

    span: LatentSpan
    speaker: torch.Tensor  # [1, d_vector, 1]
    win_start: int
    start: int
    end: int
    final: bool  # reaches the sentence's end: HiFi-GAN must see the true boundary, not padding
    width: int  # frames to run HiFi-GAN over (right padding beyond ``frames``; non-final only)
    frames: int

    @functools.cached_property
    def z(self) -> torch.Tensor:
        """``[1, D, frames]``: the resampled latents HiFi-GAN reads."""
        span = self.span
        with torch.inference_mode():
            latents = torch.stack(span.latents)
            return span.grid.resample(
                latents, span.first, span.tokens, self.win_start, self.win_start + self.frames
            )

    def new_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """The samples of frames ``[start, end)`` in HiFi-GAN's output over this window (``wav``, 1-D)."""
        hop = int(wav.shape[-1]) // self.frames
        return wav[(self.start - self.win_start) * hop : (self.end - self.win_start) * hop]


@torch.inference_mode()
def decode_windows(
    decoder: HifiDecoder,
    windows: list[VocoderWindow],
    *,
    batch: bool,
    net: torch.nn.Module | None = None,
    graphs: CapturedVocoder | None = None,
) -> list[torch.Tensor]:
    """HiFi-GAN over several streams' windows; with ``batch`` (CUDA), padded windows share calls.

    Padding is exact when it stays out of the new frames' receptive field: a non-final window is padded on
    the right (its new frames end ``context`` ≥ the receptive field before the window does), a final one
    on the left when it has that much context before its new frames (its right end is the sentence's real
    end, which padding would change). Other final windows run alone and unpadded. With ``batch`` the
    padded ones run at their standard width, stacked up to a size in :data:`VOCODER_BATCHES` (zero rows
    fill the rest). (Batching pays on a GPU; on a CPU it is slower.) ``net`` runs instead of the
    decoder's own HiFi-GAN (a float16 copy, :func:`vocoder_precision`); audio comes back in float32, and
    the caller checks it once it is on the host (:func:`redo_in_float32`: checking here would make the
    host wait for the GPU). ``graphs`` (CUDA graphs of that HiFi-GAN,
    :class:`worker.batching.graphs.VocoderGraphs`) replace the calls at the shapes they were captured for.
    """
    hifigan = net if net is not None else decoder.waveform_decoder
    dtype = next(hifigan.parameters()).dtype

    def run(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        low_z, low_g = z.to(dtype), g.to(dtype)
        replayed = graphs.run(low_z, low_g) if graphs is not None else None
        return (replayed if replayed is not None else hifigan(low_z, g=low_g)).float()

    out: list[torch.Tensor | None] = [None] * len(windows)
    group = [i for i, w in enumerate(windows) if batch and _paddable(w)]
    for i, w in enumerate(windows):
        if i not in group:
            out[i] = run(w.z, w.speaker).reshape(-1)
    while group:
        part, group = group[: VOCODER_BATCHES[-1]], group[VOCODER_BATCHES[-1] :]
        size = next(b for b in VOCODER_BATCHES if b >= len(part))
        width = max(max(windows[i].width, windows[i].frames) for i in part)
        left = [width - windows[i].frames if windows[i].final else 0 for i in part]
        z = stack_windows([windows[i] for i in part], left, width, size)
        speakers = torch.cat([windows[i].speaker for i in part])
        if size > len(part):
            speakers = torch.cat([speakers, speakers.new_zeros(size - len(part), *speakers.shape[1:])])
        wav = run(z, speakers)  # [size, 1, width * hop]
        hop = wav.shape[-1] // width
        for row, (i, pad) in enumerate(zip(part, left, strict=True)):
            out[i] = wav[row, 0, pad * hop : (pad + windows[i].frames) * hop]
    return [w for w in out if w is not None]


def stack_windows(windows: list[VocoderWindow], left: list[int], width: int, size: int) -> torch.Tensor:
    """``[size, D, width]``: each window's resampled latents at column ``left[i]`` of row ``i``, zeros
    elsewhere (padding and the rows beyond ``len(windows)``), made in one gather for all of them.

    The same float operations per frame as :meth:`VocoderWindow.z` (so the same values) and the same
    zeros as padding would give, but ~10 kernels and two copies to the device for the whole call instead
    of that many per window.
    """
    latents: list[torch.Tensor] = []
    starts: list[int] = []
    for w in windows:
        starts.append(len(latents))
        latents += w.span.latents
    blank = len(latents)  # a zero latent that padding reads: 0 × weight + 0 × weight = 0
    index = np.full((2, 2, size, width), blank, dtype=np.int64)
    w1 = np.zeros((2, size, width), dtype=np.float32)
    w2 = np.zeros((size, width), dtype=np.float32)
    for row, (w, pad, at) in enumerate(zip(windows, left, starts, strict=True)):
        idx, a, b = w.span.grid.weights(w.win_start, w.win_start + w.frames, w.span.tokens)
        cols = slice(pad, pad + w.frames)
        index[:, :, row, cols] = idx - w.span.first + at
        w1[:, row, cols] = a
        w2[row, cols] = b
    table = torch.stack([*latents, torch.zeros_like(latents[0])])  # [T + 1, D]
    frames = interpolate(table, index.reshape(2, 2, -1), w1.reshape(2, -1), w2.reshape(-1))  # [size·width, D]
    return frames.view(size, width, -1).transpose(1, 2).contiguous()


_non_finite_calls = 0  # reduced-precision windows redone in float32 (overflow), in this process


@torch.inference_mode()
def redo_in_float32(decoder: HifiDecoder, window: VocoderWindow, dtype: torch.dtype) -> torch.Tensor:
    """``window``'s new audio (1-D, float32, on the host) from the model's own float32 HiFi-GAN.

    For a window whose ``dtype`` call gave a non-finite sample (an overflow on an unusual input): members
    never hear it. Logged on the first and every 100th time.
    """
    global _non_finite_calls
    _non_finite_calls += 1
    if _non_finite_calls == 1 or _non_finite_calls % 100 == 0:
        log.warning(
            "%s HiFi-GAN gave a non-finite sample (%d windows so far): redone in float32; "
            "VOXCLONE_VOCODER_DTYPE=float32 avoids it",
            str(dtype).removeprefix("torch."), _non_finite_calls,
        )  # fmt: skip
    wav = decoder.waveform_decoder(window.z, g=window.speaker).reshape(-1)
    return window.new_audio(wav).float().cpu()


class CapturedVocoder(Protocol):
    """HiFi-GAN replayed from CUDA graphs at some shapes (:class:`worker.batching.graphs.VocoderGraphs`)."""

    def run(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """HiFi-GAN's output for ``(z, g)``, or None when no graph has their shape."""
        ...


def standard_shapes(streams: int, step: int = WINDOW_STEP_CUDA, widths: int = 3) -> list[tuple[int, int]]:
    """The (windows, frames) shapes batched calls for up to ``streams`` streams come in: batch sizes of
    :data:`VOCODER_BATCHES` up to the one ``streams`` pads to, widths ``step, 2 × step, …`` (``widths`` of
    them: 8-, 16- and 27-token chunks)."""
    most = next((b for b in VOCODER_BATCHES if b >= streams), VOCODER_BATCHES[-1])  # what calls pad up to
    return [(b, step * k) for b in VOCODER_BATCHES if b <= most for k in range(1, widths + 1)]


def _paddable(window: VocoderWindow) -> bool:
    """Whether padding ``window`` (right if non-final, left if final) leaves its new frames exact."""
    return not window.final or window.start - window.win_start >= VOCODER_RECEPTIVE_FRAMES


@torch.inference_mode()
def prewarm(
    decoder: HifiDecoder,
    streams: int,
    step: int = WINDOW_STEP_CUDA,
    widths: int = 3,
    net: torch.nn.Module | None = None,
) -> int:
    """Run HiFi-GAN once at every :func:`standard_shapes` shape, so that this thread has its cuDNN plans.

    ``net`` as in :func:`decode_windows` (plans are per dtype too). Returns the shape count.
    """
    hifigan: Any = net if net is not None else decoder.waveform_decoder
    weight = next(hifigan.parameters())
    dim = int(hifigan.conv_pre.in_channels)
    d_vector = int(hifigan.cond_layer.in_channels)
    shapes = standard_shapes(streams, step, widths)
    for b, width in shapes:
        z = torch.zeros(b, dim, width, device=weight.device, dtype=weight.dtype)
        hifigan(z, g=torch.zeros(b, d_vector, 1, device=weight.device, dtype=weight.dtype))
    return len(shapes)


# auto: float16 HiFi-GAN only where it stays this close to float32 on the loaded weights (SNR on a probe,
# see precision_snr): its error then carries at most 1/30,000 of the audio's energy.
VOCODER_MIN_SNR_DB = 45.0
PROBE_FRAMES = 48  # frames of the precision probe: one standard window (12,288 samples)


@dataclass(frozen=True)
class VocoderPrecision:
    """The precision batched HiFi-GAN calls run in, and whether it must pass :func:`precision_snr` first."""

    dtype: torch.dtype = torch.float32
    checked: bool = False  # fall back to float32 when the copy strays below VOCODER_MIN_SNR_DB

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def vocoder_precision(device: str, name: VocoderDtype = "auto") -> VocoderPrecision:
    """How batched HiFi-GAN calls run on ``device``: ``name`` is ``VOXCLONE_VOCODER_DTYPE``
    (``EngineSettings.vocoder_dtype``).

    ``auto`` (the default) is float16 on CUDA, checked against float32 on the loaded weights when the first
    batch session opens (below :data:`VOCODER_MIN_SNR_DB` the worker stays in float32 and says so), and
    float32 elsewhere. On an H100, 32 windows of 130 frames took 28.8 ms in float16 against 43.6 ms in
    float32 (bench/README.md). ``float16`` skips the check (the SNR is still logged); ``float32`` keeps
    the model's own HiFi-GAN. The CPU has no fast float16 convolution, so it refuses ``float16``.
    """
    cuda = torch.device(device).type == "cuda"
    if name == "float16" and not cuda:
        raise ValueError(f"VOXCLONE_VOCODER_DTYPE=float16 needs a CUDA device; this worker runs on {device}")
    if name == "float32" or not cuda:
        return VocoderPrecision()
    return VocoderPrecision(torch.float16, checked=name == "auto")


@torch.inference_mode()
def precision_snr(reference: Any, other: Any, frames: int = PROBE_FRAMES, seed: int = 0) -> float:
    """How closely HiFi-GAN ``other`` (a copy in another precision) follows ``reference`` run in exact
    float32, in dB (:func:`snr_db`), on :func:`precision_probe`'s window.

    Exact: on CUDA, cuDNN convolves float32 in TF32 by default (a 10-bit mantissa, like float16's), so
    the reference runs with that off for the moment (a process-wide switch; other threads' convolutions
    meanwhile are only more exact). ``precision_snr(net, net)`` is therefore TF32's own deviation on CUDA.
    """
    z, g = precision_probe(reference, frames, seed)
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        exact = reference(z, g=g)
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    low = next(other.parameters()).dtype
    return snr_db(exact, other(z.to(low), g=g.to(low)))


def precision_probe(net: Any, frames: int = PROBE_FRAMES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed HiFi-GAN input ``(z, g)`` on ``net``'s device and in its dtype: latents like the GPT's (unit
    normal, what its final layer norm makes before its gain) and a unit-length speaker vector, as XTTS's
    speaker encoder gives."""
    weight = next(net.parameters())
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, int(net.conv_pre.in_channels), frames, generator=gen)
    g = torch.randn(1, int(net.cond_layer.in_channels), 1, generator=gen)
    return z.to(weight.device, weight.dtype), (g / g.norm()).to(weight.device, weight.dtype)


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """``reference``'s energy over the difference's, in dB: ``inf`` when they are equal, ``-inf`` when
    ``other`` has a non-finite sample (a float16 overflow, say)."""
    ref, out = reference.double(), other.double()
    if not bool(torch.isfinite(out).all()):
        return -math.inf
    noise = float((out - ref).pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
