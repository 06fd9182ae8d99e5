"""The quality gate on real espeak speech with real silero-vad, and the spectrogram it draws."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.audio import MAX_REFERENCE_SECONDS
from tests.worker.conftest import decode
from worker.analysis.plot import render_spectrogram
from worker.analysis.quality import MIN_SPEECH_S, QualityGate, choose_kept, extract_kept
from worker.errors import InvalidAudio
from worker.types import QualityReport

RATE = 16_000


def test_good_speech_is_accepted(quality_gate: QualityGate, speech_pcm16k: np.ndarray) -> None:
    report = quality_gate.analyze(speech_pcm16k, RATE)
    assert report.accepted, report.reasons
    assert report.reasons == [] and report.warnings == []
    assert 6.0 < report.speech_s <= report.duration_s
    assert -30 < report.level_dbfs < -12
    assert report.snr_db > 30 and report.clipped_fraction < 0.001
    kept_s = sum(end - start for start, end in report.kept)
    assert kept_s == pytest.approx(report.speech_s, abs=0.01)


def test_voice_message_at_48k_gives_the_same_verdict(
    quality_gate: QualityGate, speech_ogg: Path, speech_pcm16k: np.ndarray
) -> None:
    at16 = quality_gate.analyze(speech_pcm16k, RATE)
    at48 = quality_gate.analyze(decode(speech_ogg, 48_000), 48_000)
    assert at48.accepted
    assert at48.speech_s == pytest.approx(at16.speech_s, abs=0.3)
    assert at48.level_dbfs == pytest.approx(at16.level_dbfs, abs=1.0)


def reasons_of(report: QualityReport) -> str:
    assert not report.accepted
    return " ".join(report.reasons)


def test_silence_is_rejected_as_silent(quality_gate: QualityGate, silence_pcm16k: np.ndarray) -> None:
    report = quality_gate.analyze(silence_pcm16k, RATE)
    assert report.speech_s == 0 and report.kept == []
    assert "silent" in reasons_of(report) and "microphone" in reasons_of(report)


def test_white_noise_is_rejected_as_noise(quality_gate: QualityGate, noise_pcm16k: np.ndarray) -> None:
    report = quality_gate.analyze(noise_pcm16k, RATE)
    assert report.speech_s == 0
    assert "only noise" in reasons_of(report) and "quieter" in reasons_of(report)


def test_one_second_clip_is_too_short(quality_gate: QualityGate, speech_pcm16k: np.ndarray) -> None:
    report = quality_gate.analyze(speech_pcm16k[:RATE], RATE)
    assert report.duration_s == pytest.approx(1.0)
    assert f"at least {MIN_SPEECH_S:.0f} s of speech" in reasons_of(report)


def test_clipped_audio_is_rejected(quality_gate: QualityGate, speech_pcm16k: np.ndarray) -> None:
    report = quality_gate.analyze(np.clip(speech_pcm16k * 20, -1.0, 1.0), RATE)
    assert report.clipped_fraction > 0.05
    text = reasons_of(report)
    assert "clipped" in text and "lower your input volume" in text
    assert len(report.reasons) == 1, "a clipped clip is not also 'too loud' or 'noisy'"


def test_quiet_voice_is_told_to_come_closer(quality_gate: QualityGate, speech_pcm16k: np.ndarray) -> None:
    report = quality_gate.analyze(speech_pcm16k * 0.005, RATE)
    assert report.level_dbfs < -40
    assert "speak closer to the microphone" in reasons_of(report)


def test_noisy_room_is_told_to_find_a_quieter_place(
    quality_gate: QualityGate, speech_pcm16k: np.ndarray
) -> None:
    noise = np.random.default_rng(3).standard_normal(speech_pcm16k.size).astype(np.float32) * 0.06
    report = quality_gate.analyze(speech_pcm16k + noise, RATE)
    assert report.snr_db < 12
    assert "background noise" in reasons_of(report) and "quieter" in reasons_of(report)


def test_limited_but_unclipped_loudness_is_too_loud(
    quality_gate: QualityGate, speech_pcm16k: np.ndarray
) -> None:
    squashed = (np.tanh(speech_pcm16k * 30) * 0.95).astype(np.float32)  # a brick-wall limiter's sound
    report = quality_gate.analyze(squashed, RATE)
    assert report.clipped_fraction == 0 and report.level_dbfs > -6
    assert "too loud" in reasons_of(report) and "lower your input volume" in reasons_of(report)


def test_noise_gate_silence_does_not_hide_the_noise(
    quality_gate: QualityGate, speech_pcm16k: np.ndarray
) -> None:
    """Leading digital silence (a noise gate, padding) must not pass for the room's noise floor."""
    noise = np.random.default_rng(5).standard_normal(speech_pcm16k.size).astype(np.float32) * 0.06
    gated = np.concatenate([np.zeros(2 * RATE, np.float32), speech_pcm16k + noise])
    report = quality_gate.analyze(gated, RATE)
    assert report.noise_dbfs == pytest.approx(20 * np.log10(0.06), abs=3)
    assert "background noise" in reasons_of(report)


def test_short_speech_passes_with_a_warning(quality_gate: QualityGate, speech_pcm16k: np.ndarray) -> None:
    report = quality_gate.analyze(speech_pcm16k[: int(4.5 * RATE)], RATE)
    assert report.accepted, report.reasons
    assert any("6 s or more" in w for w in report.warnings)


def test_long_recording_keeps_at_most_30_seconds(
    quality_gate: QualityGate, speech_pcm16k: np.ndarray
) -> None:
    gap = np.zeros(RATE // 2, dtype=np.float32)
    long = np.concatenate([part for _ in range(6) for part in (speech_pcm16k, gap)])
    report = quality_gate.analyze(long, RATE)
    assert report.accepted and report.speech_s > 40
    kept_s = sum(end - start for start, end in report.kept)
    assert 25 < kept_s <= MAX_REFERENCE_SECONDS
    assert report.kept[-1][1] - report.kept[0][0] <= MAX_REFERENCE_SECONDS
    assert all(a < b for a, b in report.kept) and all(
        b1 <= a2 for (_, b1), (a2, _) in zip(report.kept, report.kept[1:], strict=False)
    )
    kept = extract_kept(long, RATE, report.kept)
    assert kept.size == pytest.approx(kept_s * RATE, abs=len(report.kept) + 1)


def test_choose_kept_prefers_the_densest_window() -> None:
    segments = [(0.0, 2.0), (40.0, 50.0), (52.0, 60.0), (61.0, 75.0), (100.0, 100.1)]
    kept = choose_kept(segments, 30.0)
    assert kept == [(40.0, 50.0), (52.0, 60.0), (61.0, 70.0)]
    assert choose_kept([(1.0, 1.1)], 30.0) == [(1.0, 1.1)], "a scrap is kept when nothing else is left"
    assert choose_kept([], 30.0) == []


def test_extract_kept_slices_at_the_original_rate() -> None:
    pcm = np.arange(48_000 * 4, dtype=np.float32)
    out = extract_kept(pcm, 48_000, [(0.5, 1.0), (2.0, 2.25)])
    assert out.size == 24_000 + 12_000
    assert out[0] == 24_000 and out[24_000] == 96_000
    with pytest.raises(InvalidAudio):
        extract_kept(pcm, 48_000, [])


@pytest.mark.parametrize(
    ("pcm", "rate", "match"),
    [
        (np.zeros((2, 16_000), np.float32), RATE, "one channel"),
        (np.array([0.0, np.nan] * 8000, np.float32), RATE, "NaN"),
        (np.zeros(0, np.float32), RATE, "empty"),
        (np.zeros(16_000, np.float32), 1_000, "1000 Hz"),
    ],
)
def test_malformed_pcm_is_invalid_audio(
    quality_gate: QualityGate, pcm: np.ndarray, rate: int, match: str
) -> None:
    with pytest.raises(InvalidAudio, match=match):
        quality_gate.analyze(pcm, rate)


def test_concurrent_analyses_match_sequential_ones(
    quality_gate: QualityGate, speech_pcm16k: np.ndarray, same_speaker_pcm16k: np.ndarray
) -> None:
    clips = [speech_pcm16k, same_speaker_pcm16k] * 3
    expected = [quality_gate.analyze(c, RATE) for c in clips[:2]] * 3
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda c: quality_gate.analyze(c, RATE), clips))
    assert got == expected


def test_spectrogram_png_highlights_kept_speech(quality_gate: QualityGate, speech_pcm16k: np.ndarray) -> None:
    import matplotlib.image

    lead = np.zeros(2 * RATE, dtype=np.float32)  # 2 s of silence that must not be highlighted
    pcm = np.concatenate([lead, speech_pcm16k])
    report = quality_gate.analyze(pcm, RATE)
    png = render_spectrogram(pcm, RATE, report.kept)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.shape[:2] == (300, 800)
    # The kept band along the bottom of the axes is green inside the kept speech, not in the lead-in.
    green = (image[..., 1] > 0.6) & (image[..., 0] < 0.4) & (image[..., 2] < 0.6)
    columns = green.any(axis=0).nonzero()[0]
    assert columns.size > 100
    silence_end_px = columns.min()
    speech_start_fraction = report.kept[0][0] / (pcm.size / RATE)
    assert silence_end_px > 800 * speech_start_fraction * 0.8
