"""Inaudible watermark on every synthesized utterance (resemble-perth), and its detector.

:class:`Watermarker` marks or checks whole clips. Synthesis streams arrive in chunks of 0.3-2 s; marking
each chunk on its own is still detected on the joined audio, but each seam gets a step in the
watermark signal: measured on espeak speech at 24 kHz, chunks of 0.3-1 s differ from marking the
whole utterance by up to 0.064 full scale with steps of up to 0.055 at the seams (the largest steps
inside a chunk are 0.016): a risk of clicks in quiet passages. :class:`StreamWatermarker` marks each
chunk with 0.25 s of already-sent audio before it, holds back the last 0.1 s until the next chunk
arrives and cross-fades 20 ms at each seam: its output then differs from whole-utterance marking by
at most 0.0006 (-64 dB), i.e. no seams, for 0.1 s of added delay and about twice the marking time of
one whole utterance (real-time factor 0.015 for 0.3-1 s chunks and 0.011 for 1.1 s chunks, against
0.007 for the whole 6 s at once, on the 2-core dev CPU with 2 torch threads, 2026-11-26). The batched
worker marks on threads of its own (``worker.batching.synthesis``), not on the thread that decodes.

perth hides the mark below 2 kHz. :class:`MarkCarrier` prepares a stream's chunks so that they can hold
it: speech always can; the random-weight test model's output (a DC offset and a high buzz) could not,
and left the worker unmarked on every path (detected at 0.00).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import numpy as np
import torch

from worker.analysis.quality import validate_pcm
from worker.errors import ModelUnavailable
from worker.types import FloatArray, WatermarkResult

log = logging.getLogger(__name__)

# Mean per-frame watermark probability at or above which audio counts as marked. Measured on
# espeak speech on the 2-core dev CPU: clean 0.00-0.08, marked 1.00 (also after s16 rounding).
WATERMARK_THRESHOLD: Final = 0.5
TAIL_PAD_S: Final = 0.05  # s of zeros appended before marking: perth's ISTFT drops a partial last hop
MIN_MARK_S: Final = 0.1  # s: perth's 2048-point STFT at 32 kHz needs more than 32 ms of signal
STREAM_CONTEXT_S: Final = 0.25  # s of already-sent audio re-marked as left context
STREAM_LOOKAHEAD_S: Final = 0.1  # s held back until the next chunk gives right context
STREAM_CROSSFADE_S: Final = 0.02  # s cross-fade between two markings of the same samples
# Where perth hides the mark: the magnitude spectrum below its max_wmark_freq (2 kHz); 100 Hz and up here.
MARK_BAND_HZ: Final = (100.0, 2_000.0)
MIN_BAND_SHARE: Final = 0.5  # of a stream's recent energy that must lie in MARK_BAND_HZ for the mark to hold
SHARE_WINDOW_S: Final = (
    2.0  # s: how far back that share is measured (a chunk of sibilants alone is not short of it)
)
DC_CUTOFF_HZ: Final = 5.0  # Hz: the high-pass that takes a DC offset out before marking
CARRIER_RAMP_S: Final = 0.02  # s over which the carrier's level moves from one chunk's to the next's


def _load_perth(device: str) -> Any:
    import perth

    implicit = getattr(perth, "PerthImplicitWatermarker", None)
    if implicit is None:
        # perth hides the reason (it sets the class to None on ImportError): ask for it again.
        try:
            from perth.perth_net.perth_net_implicit.perth_watermarker import PerthImplicitWatermarker
        except ImportError as exc:
            missing = exc.name or "a package it needs"
            fix = (
                "setuptools<82 (it provides pkg_resources)"
                if missing == "pkg_resources"
                else f"{missing} (a dependency of resemble-perth or librosa)"
            )
            raise ModelUnavailable(
                f"The watermarking model (resemble-perth) cannot load: {exc}. Install {fix} in the "
                "worker's environment and restart it."
            ) from exc
        implicit = PerthImplicitWatermarker
        if implicit is None:
            raise ModelUnavailable(
                "The watermarking model (resemble-perth) is not available in this install."
            )
    return implicit(device=device)


class Watermarker:
    """Marks and detects the perth watermark at any sample rate. Stateless: safe to share."""

    def __init__(self, device: str = "cpu", threshold: float = WATERMARK_THRESHOLD) -> None:
        self._perth = _load_perth(device)
        self.threshold = threshold

    def apply(self, pcm: FloatArray, sample_rate: int) -> FloatArray:
        """``pcm`` with the watermark embedded: same length, float32, clipped to [-1, 1]."""
        if isinstance(pcm, np.ndarray) and pcm.size == 0:
            return np.zeros(0, dtype=np.float32)
        pcm = validate_pcm(pcm, sample_rate)
        pad = max(int(TAIL_PAD_S * sample_rate), int(MIN_MARK_S * sample_rate) - pcm.size)
        padded = np.concatenate([pcm, np.zeros(pad, dtype=np.float32)])
        with torch.inference_mode():  # perth records autograd history otherwise: 10x slower on short chunks
            marked = np.asarray(
                self._perth.apply_watermark(padded, sample_rate=sample_rate), dtype=np.float32
            )
        out = marked[: pcm.size]
        if out.size < pcm.size:  # never expected after padding; keep the length contract regardless
            out = np.concatenate([out, pcm[out.size :]])
        return np.clip(out, -1.0, 1.0)

    def detect(self, pcm: FloatArray, sample_rate: int) -> WatermarkResult:
        """Whether ``pcm`` carries the watermark, with the mean frame confidence in [0, 1]."""
        pcm = validate_pcm(pcm, sample_rate)
        if pcm.size < MIN_MARK_S * sample_rate:
            pcm = np.concatenate([pcm, np.zeros(int(MIN_MARK_S * sample_rate) - pcm.size, dtype=np.float32)])
        if not np.any(pcm):
            return WatermarkResult(detected=False, confidence=0.0)  # digital silence carries no mark
        with torch.inference_mode():
            frames = self._perth.get_watermark(pcm, sample_rate=sample_rate, round=False)
        confidence = float(np.clip(np.nan_to_num(np.mean(frames)), 0.0, 1.0))
        return WatermarkResult(detected=confidence >= self.threshold, confidence=round(confidence, 4))


class StreamWatermarker:
    """Watermarks a stream chunk by chunk without seams (see the module docstring for the figures).

    ``push`` returns the marked audio ready to send — 0.1 s behind the input, as the last
    ``STREAM_LOOKAHEAD_S`` wait for right context — and ``flush`` the rest at the end of the stream;
    together they return exactly as many samples as were pushed. One instance per stream.
    """

    def __init__(
        self,
        watermarker: Watermarker,
        sample_rate: int,
        *,
        context_s: float = STREAM_CONTEXT_S,
        lookahead_s: float = STREAM_LOOKAHEAD_S,
        crossfade_s: float = STREAM_CROSSFADE_S,
    ) -> None:
        if crossfade_s > lookahead_s / 2:
            raise ValueError("the cross-fade must fit well inside the look-ahead")
        self._wm = watermarker
        self._rate = sample_rate
        self._context = int(context_s * sample_rate)
        self._lookahead = int(lookahead_s * sample_rate)
        self._crossfade = int(crossfade_s * sample_rate)
        self._history = np.zeros(0, dtype=np.float32)  # sent input, the left context
        self._pending = np.zeros(0, dtype=np.float32)  # input held back
        self._pending_marked = np.zeros(0, dtype=np.float32)  # its marking from the previous call

    def push(self, chunk: FloatArray) -> FloatArray:
        """Mark ``chunk`` (float32 mono at the stream's rate); returns the samples now final."""
        return self._step(np.asarray(chunk, dtype=np.float32), final=False)

    def flush(self) -> FloatArray:
        """The held-back tail, marked; call once when the stream ends."""
        return self._step(np.zeros(0, dtype=np.float32), final=True)

    def _step(self, chunk: FloatArray, final: bool) -> FloatArray:
        todo = np.concatenate([self._pending, chunk])
        if todo.size == 0:
            return todo
        context = self._history[-self._context :] if self._context else self._history[:0]
        marked = self._wm.apply(np.concatenate([context, todo]), self._rate)[context.size :]
        hold = 0 if final else min(self._lookahead, todo.size)
        ready = todo.size - hold
        out = marked[:ready].copy()
        # The first samples were marked last time too, then near the right edge: fade from that
        # marking to this one (which now has context on both sides) so the seam has no step.
        fade = min(self._crossfade, self._pending_marked.size, ready)
        if fade:
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            out[:fade] = self._pending_marked[:fade] * (1.0 - ramp) + out[:fade] * ramp
        self._history = np.concatenate([self._history, todo[:ready]])[-max(self._context, 1) :]
        self._pending = todo[ready:]
        self._pending_marked = marked[ready:]
        return out


class MarkCarrier:
    """Makes a stream's audio able to carry perth's mark; speech passes through unchanged but for a 5 Hz
    high-pass.

    perth writes its mark into the magnitude spectrum below 2 kHz, where speech has most of its energy.
    Audio with too little there does not take the mark: the random-weight test model speaks a DC offset
    and a buzz, most of it at 8-12 kHz, and marked once it is detected at 0.00-0.15 (marking it twice
    "works" only because the first marking put energy there). So before marking, each chunk is
    high-passed at 5 Hz (an offset is inaudible, clicks where playback starts and stops, and weakens the
    mark) and, where less than :data:`MIN_BAND_SHARE` of the stream's energy over the last
    :data:`SHARE_WINDOW_S` lies in :data:`MARK_BAND_HZ`, given a noise floor there just big enough to
    reach it; the floor's level ramps over 20 ms between chunks. Speech never needs the floor: espeak
    speech cut as the engine cuts it (0.37-1.25 s) holds 69-98 % of each chunk's energy in that band.
    One instance per stream; chunks in order.
    """

    def __init__(self, sample_rate: int, *, seed: int = 0) -> None:
        from scipy.signal import butter

        self._rate = sample_rate
        self._highpass = butter(1, DC_CUTOFF_HZ, "highpass", fs=sample_rate, output="sos")
        self._highpass_state = np.zeros((1, 2))
        self._band = butter(2, MARK_BAND_HZ, "bandpass", fs=sample_rate, output="sos")
        self._band_state = np.zeros((2, 2))
        self._noise = np.random.default_rng(seed)  # the floor is noise, the same for every stream
        self._gain = 0.0  # the floor's scale at the end of the last chunk
        self._recent = (0.0, 0.0)  # energy sent lately, in all and in the band (decaying over the window)
        self.floor_rms = 0.0  # RMS of the floor added to the last chunk (0.0: none)

    def process(self, chunk: FloatArray) -> FloatArray:
        """``chunk`` high-passed, plus a noise floor in the band where the stream lacks energy there."""
        from scipy.signal import sosfilt

        if chunk.size == 0:
            return np.asarray(chunk, dtype=np.float32)
        audio, self._highpass_state = sosfilt(self._highpass, chunk, zi=self._highpass_state)
        keep = float(np.exp(-audio.size / (SHARE_WINDOW_S * self._rate)))
        total, in_band = (
            keep * recent + now for recent, now in zip(self._recent, self._energies(audio), strict=True)
        )
        missing = MIN_BAND_SHARE * total - in_band
        gain, floor = 0.0, None
        if missing > 0 or self._gain > 0:
            noise, self._band_state = sosfilt(
                self._band, self._noise.standard_normal(audio.size), zi=self._band_state
            )
            noise_total, noise_in_band = self._energies(noise)
            # The floor adds to the total too: in_band + g²·n_band = share · (total + g²·n_total).
            room = noise_in_band - MIN_BAND_SHARE * noise_total
            gain = float(np.sqrt(missing / room)) if missing > 0 and room > 0 else 0.0
            scale = np.full(audio.size, gain)
            ramp = min(audio.size, int(CARRIER_RAMP_S * self._rate))
            scale[:ramp] = np.linspace(self._gain, gain, ramp)
            floor = scale * noise
            audio = audio + floor
            total, in_band = total + gain**2 * noise_total, in_band + gain**2 * noise_in_band
        self._gain = gain
        self._recent = (total, in_band)
        self.floor_rms = float(np.sqrt(np.mean(floor**2))) if floor is not None else 0.0
        return audio.astype(np.float32)

    def _energies(self, audio: np.ndarray) -> tuple[float, float]:
        """Energy of ``audio`` in all and in :data:`MARK_BAND_HZ`, per sample (from its spectrum)."""
        power = np.abs(np.fft.rfft(audio)) ** 2 / audio.size
        freqs = np.fft.rfftfreq(audio.size, 1.0 / self._rate)
        low, high = MARK_BAND_HZ
        return float(power.sum()), float(power[(freqs >= low) & (freqs < high)].sum())
