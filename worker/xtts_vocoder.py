"""Streaming HiFi-GAN decoding of XTTS-v2 GPT latents: each frame decoded about once, exactly as a whole.

XTTS's ``HifiDecoder`` linearly resamples the latents twice (×4 to mel frames, then ×24000/22050) and runs
HiFi-GAN over the result, 256 output samples per frame. Stock ``inference_stream`` re-runs all of that over
every latent so far for each chunk, so its vocoder cost grows with the square of the length.

:class:`StreamingVocoder` instead computes only the frames a chunk needs, in global frame coordinates
(the resampling is local: a frame depends on two neighbours), and runs HiFi-GAN over them plus
``context_frames`` on each side. HiFi-GAN is purely convolutional with a receptive field of
:data:`VOCODER_RECEPTIVE_FRAMES` frames, so with that much context every emitted sample equals what a
single decode of the whole sentence gives (to float rounding): no cross-fade, no seams, and total work is
the output length plus ``2 × context_frames`` per chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from TTS.tts.layers.xtts.hifigan_decoder import HifiDecoder

# XTTS-v2's HiFi-GAN: an output sample depends on input frames up to 13 away on either side (measured by
# perturbing one frame; tests/worker/test_xtts.py checks it). Context beyond it makes chunks exact.
VOCODER_RECEPTIVE_FRAMES = 13
DEFAULT_CONTEXT_FRAMES = VOCODER_RECEPTIVE_FRAMES  # frames decoded on each side of a chunk (0.14 s)


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

    def stage1_len(self, tokens: int) -> int:
        return math.floor(tokens * self.factor1)

    def frames(self, tokens: int) -> int:
        """Frames HifiDecoder makes from ``tokens`` latents (its output has ``frames × hop`` samples)."""
        return math.floor(self.stage1_len(tokens) * self.factor2)

    def samples(self, tokens: int) -> int:
        """Output samples a whole-sentence decode of ``tokens`` latents gives."""
        return self.frames(tokens) * self.hop

    @staticmethod
    def _source(
        index: torch.Tensor, step: float, size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = ((index.float() + 0.5) * step - 0.5).clamp(min=0.0)
        lo = src.long()
        frac = src - lo.float()
        hi = torch.where(lo < size - 1, lo + 1, lo)
        return lo, hi, frac

    def exact_frames(self, tokens: int) -> int:
        """How many leading frames no later latent can change, when ``tokens`` latents are known so far."""
        n1 = self.stage1_len(tokens)
        total = self.frames(tokens)
        if total == 0:
            return 0
        candidates = torch.arange(max(0, total - 16), total)
        lo2, _, _ = self._source(candidates, self.step2, 1 << 30)
        lo1, _, _ = self._source(lo2 + 1, self.step1, 1 << 30)
        ok = (lo2 + 1 <= n1 - 1) & (lo1 + 1 <= tokens - 1)
        good = candidates[ok]
        return int(good.max().item()) + 1 if good.numel() else 0

    def resample(
        self, latents: torch.Tensor, first_token: int, tokens: int, start: int, end: int
    ) -> torch.Tensor:
        """Frames ``[start, end)`` (global indices) of the resampled latents, as ``[1, D, end - start]``.

        ``latents`` holds latents ``first_token ...`` of a sentence whose first ``tokens`` latents are known;
        it must cover every latent those frames read.
        """
        frames = torch.arange(start, end, device=latents.device)
        lo2, hi2, w2 = self._source(frames, self.step2, self.stage1_len(tokens))
        mel_idx = torch.stack([lo2, hi2])  # stage-1 frames each output frame reads
        lo1, hi1, w1 = self._source(mel_idx, self.step1, tokens)
        lo1 = lo1 - first_token
        hi1 = hi1 - first_token
        w1 = w1.unsqueeze(-1).to(latents.dtype)
        mel = latents[lo1] * (1 - w1) + latents[hi1] * w1  # [2, F, D]: the two stage-1 frames per frame
        w2 = w2.unsqueeze(-1).to(latents.dtype)
        out = mel[0] * (1 - w2) + mel[1] * w2  # [F, D]
        return out.T.unsqueeze(0)

    def latent_span(self, start: int, end: int, tokens: int) -> tuple[int, int]:
        """The latents ``[first, last]`` that frames ``[start, end)`` read."""
        idx = torch.tensor([start, end - 1])
        lo2, hi2, _ = self._source(idx, self.step2, self.stage1_len(tokens))
        lo1, _, _ = self._source(lo2[:1], self.step1, tokens)
        _, hi1, _ = self._source(hi2[1:], self.step1, tokens)
        return int(lo1.item()), int(hi1.item())


class StreamingVocoder:
    """Audio for one sentence as its latents arrive; call :meth:`push` per step, :meth:`take` per chunk."""

    def __init__(
        self,
        decoder: HifiDecoder,
        speaker_embedding: torch.Tensor,
        context_frames: int = DEFAULT_CONTEXT_FRAMES,
    ) -> None:
        if context_frames < VOCODER_RECEPTIVE_FRAMES:
            raise ValueError(f"context_frames must be >= {VOCODER_RECEPTIVE_FRAMES} for exact chunks")
        self.decoder = decoder
        self.grid = FrameGrid(decoder)
        self.speaker = speaker_embedding
        self.context = context_frames
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
        win_start = max(0, start - self.context)
        win_end = min(self.grid.frames(tokens), end + self.context)
        first, last = self.grid.latent_span(win_start, win_end, tokens)
        with torch.inference_mode():
            latents = torch.stack(self._latents[first : last + 1])
            z = self.grid.resample(latents, first, tokens, win_start, win_end)
        return VocoderWindow(z, self.speaker, win_start, start, end, final)

    def accept(self, window: VocoderWindow, wav: torch.Tensor) -> torch.Tensor:
        """The new audio of ``window`` from HiFi-GAN's output over it (``wav``, 1-D); marks it emitted."""
        self.decoded_frames += window.frames
        self.emitted_frames = window.end
        hop = self.grid.hop
        return wav[(window.start - window.win_start) * hop : (window.end - window.win_start) * hop]

    @torch.inference_mode()
    def take(self, final: bool = False) -> torch.Tensor:
        """New audio (1-D float tensor at 24 kHz); ``final`` flushes the sentence's end."""
        window = self.window(final)
        if window is None:
            return torch.zeros(0)
        return self.accept(window, self.decoder.waveform_decoder(window.z, g=window.speaker).reshape(-1))


@dataclass(frozen=True)
class VocoderWindow:
    """Resampled latents for frames ``[win_start, win_start + frames)``, of which ``[start, end)`` are new."""

    z: torch.Tensor  # [1, D, frames]
    speaker: torch.Tensor  # [1, d_vector, 1]
    win_start: int
    start: int
    end: int
    final: bool  # reaches the sentence's end: HiFi-GAN must see the true boundary, not padding

    @property
    def frames(self) -> int:
        return int(self.z.shape[-1])


@torch.inference_mode()
def decode_windows(decoder: HifiDecoder, windows: list[VocoderWindow], *, batch: bool) -> list[torch.Tensor]:
    """HiFi-GAN over several streams' windows; with ``batch``, non-final ones share one padded call.

    Right-padding a non-final window is exact: its new frames end ``context`` (≥ the receptive field)
    frames before the window does. A final window ends at the sentence's real end, where padding would
    change the last samples, so it always runs alone. (Batching pays on a GPU; on a CPU it is slower.)
    """
    out: list[torch.Tensor | None] = [None] * len(windows)
    group = [i for i, w in enumerate(windows) if batch and not w.final]
    if len(group) < 2:
        group = []
    for i, w in enumerate(windows):
        if i not in group:
            out[i] = decoder.waveform_decoder(w.z, g=w.speaker).reshape(-1)
    if group:
        width = max(windows[i].frames for i in group)
        z = torch.cat([torch.nn.functional.pad(windows[i].z, (0, width - windows[i].frames)) for i in group])
        speakers = torch.cat([windows[i].speaker for i in group])
        wav = decoder.waveform_decoder(z, g=speakers)  # [n, 1, width * hop]
        hop = wav.shape[-1] // width
        for row, i in enumerate(group):
            out[i] = wav[row, 0, : windows[i].frames * hop]
    return [w for w in out if w is not None]
