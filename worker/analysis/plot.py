"""A clip's spectrogram as a PNG, with the speech the quality gate kept highlighted (`check-voice --plot`)."""

from __future__ import annotations

import io
from typing import Final

import numpy as np

from core.audio import ANALYSIS_SAMPLE_RATE
from worker.analysis.quality import to_analysis_rate, validate_pcm
from worker.types import FloatArray

WIDTH_IN: Final = 8.0  # inches at DPI: 800 x 300 pixels
HEIGHT_IN: Final = 3.0
DPI: Final = 100
WINDOW_S: Final = 0.025  # s: 25 ms analysis window, the usual for speech
HOP_S: Final = 0.010  # s: 10 ms between columns
MAX_FREQ_HZ: Final = 8_000  # Hz shown: speech lives below 8 kHz
DYNAMIC_RANGE_DB: Final = 80.0  # dB below the loudest bin that still gets a colour
KEPT_COLOUR: Final = "#2ecc71"


def spectrogram_db(pcm: FloatArray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Power spectrogram in dB (frequencies x frames), with the frequency (Hz) and time (s) axes."""
    window = max(16, int(WINDOW_S * sample_rate))
    hop = max(1, int(HOP_S * sample_rate))
    n_fft = 1 << (window - 1).bit_length()
    if pcm.size < window:
        pcm = np.pad(pcm, (0, window - pcm.size))
    frames = np.lib.stride_tricks.sliding_window_view(pcm, window)[::hop] * np.hanning(window).astype(
        np.float32
    )
    n_frames = frames.shape[0]
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    db = 10.0 * np.log10(power.T + 1e-12)
    db = np.maximum(db, db.max() - DYNAMIC_RANGE_DB)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    times = (np.arange(n_frames) * hop + window / 2) / sample_rate
    return db, freqs, times


def render_spectrogram(pcm: FloatArray, sample_rate: int, kept: list[tuple[float, float]]) -> bytes:
    """PNG bytes (about 800 x 300): time in seconds, frequency in Hz, kept speech shaded and outlined."""
    from matplotlib.figure import Figure  # the object API: no pyplot global state, no GUI backend

    pcm = validate_pcm(pcm, sample_rate)
    duration = pcm.size / sample_rate
    if sample_rate > ANALYSIS_SAMPLE_RATE:  # nothing above 8 kHz is drawn: a quarter of the work at 48 kHz
        pcm, sample_rate = to_analysis_rate(pcm, sample_rate), ANALYSIS_SAMPLE_RATE
    db, freqs, _ = spectrogram_db(pcm, sample_rate)
    top = min(MAX_FREQ_HZ, sample_rate / 2)
    shown = freqs <= top

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    ax = fig.add_subplot()
    ax.imshow(
        db[shown],
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0.0, duration, 0.0, float(freqs[shown][-1])),
        interpolation="nearest",
    )
    for start, end in kept:
        ax.axvspan(start, end, color=KEPT_COLOUR, alpha=0.18, linewidth=0)
        ax.axvspan(start, end, ymin=0.0, ymax=0.03, color=KEPT_COLOUR, alpha=0.95, linewidth=0)
        ax.axvline(start, color=KEPT_COLOUR, linewidth=0.8)
        ax.axvline(end, color=KEPT_COLOUR, linewidth=0.8)
    ax.set_xlim(0.0, duration)
    ax.set_ylim(0.0, top)
    ax.set_xlabel("Time (s)")
    ax.set_ylabel("Frequency (Hz)")
    if kept:
        kept_s = sum(end - start for start, end in kept)
        ax.text(
            0.995, 0.97, f"kept for cloning: {kept_s:.1f} s", transform=ax.transAxes, ha="right", va="top",
            color="white", fontsize=8, bbox={"facecolor": KEPT_COLOUR, "alpha": 0.8, "linewidth": 0},
        )  # fmt: skip
    fig.tight_layout(pad=0.4)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
