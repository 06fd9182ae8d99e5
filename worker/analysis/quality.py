"""The quality gate: is a reference clip good enough to clone a voice from, and which part of it to use.

silero-vad finds the speech; the gate then measures the speech level, clipping and the noise floor in
the pauses, rejects what would clone badly with reasons a member can act on, and picks the best
≤ 30 s of speech (``QualityReport.kept``) for XTTS conditioning.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from babel.numbers import format_decimal, format_percent

from core.audio import ANALYSIS_SAMPLE_RATE, MAX_REFERENCE_SECONDS
from core.i18n import current_locale, tr
from worker.errors import InvalidAudio
from worker.types import FloatArray, QualityReport

log = logging.getLogger(__name__)

# Speech quantity (seconds of speech found by the VAD).
MIN_SPEECH_S: Final = 3.0  # s: less cannot be cloned
WARN_SPEECH_S: Final = 6.0  # s: clones, but 6 s or more sounds clearly better
# Speech level: RMS of the speech parts in dB relative to full scale.
MIN_LEVEL_DBFS: Final = -40.0  # dBFS: below this the voice drowns in the codec and noise floor
WARN_LOW_LEVEL_DBFS: Final = -32.0  # dBFS
MAX_LEVEL_DBFS: Final = -6.0  # dBFS: speech this loud is distorted by limiting even when not clipped
WARN_HIGH_LEVEL_DBFS: Final = -10.0  # dBFS
# Clipping: share of all samples at or near full scale.
CLIP_LEVEL: Final = 0.98  # |sample| at or above this counts as clipped (lossy codecs overshoot/undershoot)
MAX_CLIPPED_FRACTION: Final = 0.01  # 1 % of samples
WARN_CLIPPED_FRACTION: Final = 0.001  # 0.1 %
# Noise: the RMS of the pauses, and the speech-to-noise ratio.
MIN_SNR_DB: Final = 12.0  # dB
WARN_SNR_DB: Final = 20.0  # dB
NOISY_FLOOR_DBFS: Final = -35.0  # dBFS: a floor this loud with no speech at all is "noise", not "silence"
SILENT_PEAK_DBFS: Final = -60.0  # dBFS: a clip whose loudest sample is below this is silent
FLOOR_DBFS: Final = -120.0  # dBFS reported for digital silence (log of zero)
# Analysis framing.
FRAME_S: Final = 0.02  # s: 20 ms frames for the noise estimate
QUIET_FRAME_SHARE: Final = 0.1  # the quietest 10 % of frames measure the noise floor
MIN_NOISE_FRAMES: Final = 10  # frames (200 ms): fewer are not a measurement
DIGITAL_SILENCE_POWER: Final = 1e-10  # mean square of a -100 dBFS frame: below 16-bit quantisation noise
MIN_SEGMENT_S: Final = 0.25  # s: shorter scraps of speech are not worth keeping for conditioning


def _dbfs(rms: float) -> float:
    return max(FLOOR_DBFS, 20.0 * math.log10(rms)) if rms > 0 else FLOOR_DBFS


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def to_analysis_rate(pcm: FloatArray, sample_rate: int) -> FloatArray:
    """Resample mono float32 PCM to 16 kHz (polyphase, anti-aliased)."""
    if sample_rate == ANALYSIS_SAMPLE_RATE:
        return pcm
    from scipy.signal import resample_poly

    g = math.gcd(sample_rate, ANALYSIS_SAMPLE_RATE)
    return resample_poly(pcm, ANALYSIS_SAMPLE_RATE // g, sample_rate // g).astype(np.float32)


def validate_pcm(pcm: Any, sample_rate: int) -> FloatArray:
    """Mono float32 PCM, finite, at a plausible rate; ``InvalidAudio`` otherwise."""
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1:
        raise InvalidAudio("The audio must be one channel of samples.")
    if not 8_000 <= sample_rate <= 192_000:
        raise InvalidAudio(f"A sample rate of {sample_rate} Hz is not supported.")
    if pcm.size == 0:
        raise InvalidAudio("The audio is empty.")
    out = pcm.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise InvalidAudio("The audio contains invalid samples (NaN or infinity).")
    return out


class QualityGate:
    """silero-vad plus level, clipping and noise measurements. Safe to share between threads."""

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        with warnings.catch_warnings():
            # silero ships a TorchScript model; torch 2.11 deprecates jit.load in favour of torch.export.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning)
            self._model = load_silero_vad()
        # The VAD keeps recurrent state between windows: one analysis at a time.
        self._lock = threading.Lock()

    def speech_segments(self, pcm16k: FloatArray) -> list[tuple[float, float]]:
        """(start, end) seconds of speech in 16 kHz PCM."""
        import torch
        from silero_vad import get_speech_timestamps

        with self._lock, torch.inference_mode():
            stamps = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(pcm16k)),
                self._model,
                sampling_rate=ANALYSIS_SAMPLE_RATE,
            )
        return [(s["start"] / ANALYSIS_SAMPLE_RATE, s["end"] / ANALYSIS_SAMPLE_RATE) for s in stamps]

    def analyze(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        """Measure a clip and decide whether it can be cloned from; never raises for bad *quality*."""
        pcm = validate_pcm(pcm, sample_rate)
        pcm16k = to_analysis_rate(pcm, sample_rate)
        segments = self.speech_segments(pcm16k)
        m = _measure(pcm, pcm16k, sample_rate, segments)
        kept = choose_kept(segments, MAX_REFERENCE_SECONDS)
        reasons, warnings = _judge(m)
        report = QualityReport(
            accepted=not reasons,
            duration_s=round(pcm.size / sample_rate, 3),
            speech_s=round(m.speech_s, 3),
            level_dbfs=round(m.level_dbfs, 1),
            peak_dbfs=round(m.peak_dbfs, 1),
            clipped_fraction=round(m.clipped_fraction, 5),
            noise_dbfs=round(m.noise_dbfs, 1),
            snr_db=round(m.level_dbfs - m.noise_dbfs, 1),
            kept=[(round(a, 3), round(b, 3)) for a, b in kept],
            reasons=reasons,
            warnings=warnings,
        )
        log.info(
            "quality: accepted=%s speech=%.1fs level=%.1fdBFS clipped=%.4f snr=%.1fdB",
            report.accepted, report.speech_s, report.level_dbfs, report.clipped_fraction, report.snr_db,
        )  # fmt: skip
        return report


@dataclass(frozen=True)
class _Measures:
    """Figures the gate judges by (internal; the public form is ``QualityReport``)."""

    duration_s: float
    speech_s: float
    level_dbfs: float
    peak_dbfs: float
    clipped_fraction: float
    noise_dbfs: float


def _speech_mask(n: int, rate: int, segments: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for start, end in segments:
        mask[max(0, int(start * rate)) : min(n, math.ceil(end * rate))] = True
    return mask


def _noise_rms(pcm16k: FloatArray) -> float:
    """RMS of the quietest tenth of the clip (digital silence aside): the pauses, where there are some.

    Measuring "everything the VAD did not call speech" instead lets speech leak in at the VAD's
    edges (it starts late on quiet voices); the quietest frames are a steadier noise floor. For a
    clip spoken without any pause they are the gaps between words, which errs toward a lower SNR.
    """
    frame = int(FRAME_S * ANALYSIS_SAMPLE_RATE)
    n_frames = pcm16k.size // frame
    if n_frames < MIN_NOISE_FRAMES:
        return _rms(pcm16k)
    frames = pcm16k[: n_frames * frame].reshape(n_frames, frame)
    energies = np.sort(np.mean(np.square(frames, dtype=np.float64), axis=1))
    # Digital silence (a recorder's noise gate, padding) says nothing about the room: skip it.
    energies = energies[energies > DIGITAL_SILENCE_POWER]
    if energies.size == 0:
        return 0.0
    count = max(MIN_NOISE_FRAMES, int(energies.size * QUIET_FRAME_SHARE))
    return float(np.sqrt(np.mean(energies[:count])))


def _measure(
    pcm: FloatArray, pcm16k: FloatArray, rate: int, segments: list[tuple[float, float]]
) -> _Measures:
    # Level and noise are both measured at 16 kHz, so the SNR compares like with like.
    speech = pcm16k[_speech_mask(pcm16k.size, ANALYSIS_SAMPLE_RATE, segments)]
    peak = float(np.max(np.abs(pcm)))
    return _Measures(
        duration_s=pcm.size / rate,
        speech_s=sum(end - start for start, end in segments),
        level_dbfs=_dbfs(_rms(speech)),
        peak_dbfs=_dbfs(peak),
        clipped_fraction=float(np.count_nonzero(np.abs(pcm) >= CLIP_LEVEL)) / pcm.size,
        noise_dbfs=_dbfs(_noise_rms(pcm16k)),
    )


def _num(value: float, pattern: str = "0") -> str:
    """A measurement in the member's notation ("2.5" in English, "2,5" in French)."""
    return format_decimal(value, format=pattern, locale=current_locale())


def _judge(m: _Measures) -> tuple[list[str], list[str]]:
    """Reasons to reject and warnings, as sentences a member can act on (in the current locale)."""
    reasons: list[str] = []
    warnings: list[str] = []
    if m.peak_dbfs < SILENT_PEAK_DBFS:
        reasons.append(
            tr("The recording is silent: check that the right microphone is selected and not muted.")
        )
        return reasons, warnings
    if m.speech_s < MIN_SPEECH_S:
        if m.speech_s == 0 and m.noise_dbfs > NOISY_FLOOR_DBFS:
            reasons.append(
                tr("I could hear only noise, no speech: record somewhere quieter, close to the microphone.")
            )
        elif m.duration_s < MIN_SPEECH_S:
            reasons.append(
                tr(
                    "The clip is only {duration} s long: I need at least {minimum} s of speech "
                    "({best} s or more works best).",
                    duration=_num(m.duration_s, "0.0"),
                    minimum=_num(MIN_SPEECH_S),
                    best=_num(WARN_SPEECH_S),
                )
            )
        else:
            reasons.append(
                tr(
                    "I heard only {speech} s of speech: I need at least {minimum} s. "
                    "Read the whole phrase at a normal pace.",
                    speech=_num(m.speech_s, "0.0"),
                    minimum=_num(MIN_SPEECH_S),
                )
            )
    elif m.speech_s < WARN_SPEECH_S:
        warnings.append(
            tr(
                "Only {speech} s of speech: {best} s or more gives a more faithful voice.",
                speech=_num(m.speech_s, "0.0"),
                best=_num(WARN_SPEECH_S),
            )
        )
    if m.clipped_fraction > MAX_CLIPPED_FRACTION:
        reasons.append(
            tr(
                "The recording is distorted ({percent} of it is clipped): "
                "lower your input volume or move back from the microphone.",
                percent=format_percent(m.clipped_fraction, format="0.0%", locale=current_locale()),
            )
        )
    elif m.clipped_fraction > WARN_CLIPPED_FRACTION:
        warnings.append(tr("A little of the recording is clipped: a slightly lower input volume would help."))
    if m.speech_s > 0:
        _judge_level(m, reasons, warnings)
    return reasons, warnings


def _judge_level(m: _Measures, reasons: list[str], warnings: list[str]) -> None:
    snr = m.level_dbfs - m.noise_dbfs
    if m.level_dbfs < MIN_LEVEL_DBFS:
        reasons.append(
            tr(
                "Your voice is too quiet ({level} dBFS): speak closer to the microphone.",
                level=_num(m.level_dbfs),
            )
        )
    elif m.level_dbfs < WARN_LOW_LEVEL_DBFS:
        warnings.append(tr("Your voice is a little quiet: speaking closer to the microphone would help."))
    elif m.clipped_fraction > MAX_CLIPPED_FRACTION:
        pass  # already rejected as distorted; "too loud" would say the same thing twice
    elif m.level_dbfs > MAX_LEVEL_DBFS:
        reasons.append(
            tr(
                "The recording is too loud ({level} dBFS): lower your input volume or move back "
                "from the microphone.",
                level=_num(m.level_dbfs),
            )
        )
    elif m.level_dbfs > WARN_HIGH_LEVEL_DBFS:
        warnings.append(tr("The recording is very loud: a slightly lower input volume would help."))
    if snr < MIN_SNR_DB:
        reasons.append(
            tr(
                "There is too much background noise (your voice is only {snr} dB above it): "
                "record somewhere quieter.",
                snr=_num(snr),
            )
        )
    elif snr < WARN_SNR_DB:
        warnings.append(tr("There is some background noise: a quieter room would give a cleaner voice."))


def choose_kept(segments: list[tuple[float, float]], budget_s: float) -> list[tuple[float, float]]:
    """The speech to clone from: the ≤ ``budget_s`` window holding the most speech, as segments.

    Windows start at each segment's start; the earliest of equally good windows wins. Scraps shorter
    than ``MIN_SEGMENT_S`` are dropped unless nothing else is left.
    """
    useful = [(a, b) for a, b in segments if b - a >= MIN_SEGMENT_S] or list(segments)
    best: list[tuple[float, float]] = []
    best_total = -1.0
    for start, _ in useful:
        window = [(a, min(b, start + budget_s)) for a, b in useful if a >= start and a < start + budget_s]
        total = sum(b - a for a, b in window)
        if total > best_total + 1e-9:
            best, best_total = window, total
    return best


def extract_kept(pcm: FloatArray, sample_rate: int, kept: list[tuple[float, float]]) -> FloatArray:
    """The kept speech of ``pcm`` (at its own rate), concatenated; what XTTS conditions on."""
    pieces = [pcm[max(0, int(a * sample_rate)) : min(pcm.size, round(b * sample_rate))] for a, b in kept]
    pieces = [p for p in pieces if p.size]
    if not pieces:
        raise InvalidAudio("There is no speech to keep in this clip.")
    return np.concatenate(pieces).astype(np.float32, copy=False)
