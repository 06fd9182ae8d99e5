"""The perth watermark on real espeak speech: absent on clean speech, found on marked speech and streams."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from worker.analysis.watermark import (
    DC_CUTOFF_HZ,
    WATERMARK_THRESHOLD,
    MarkCarrier,
    StreamWatermarker,
    Watermarker,
)
from worker.errors import ModelUnavailable

RATE = 24_000  # Hz: what synthesis produces


@pytest.fixture(scope="module")
def marked(watermarker: Watermarker, speech_pcm24k: np.ndarray) -> np.ndarray:
    return watermarker.apply(speech_pcm24k, RATE)


def chunks_of(pcm: np.ndarray, seed: int, low_s: float, high_s: float) -> list[np.ndarray]:
    """Split like a synthesis stream: random chunk lengths between ``low_s`` and ``high_s``."""
    rng = np.random.default_rng(seed)
    bounds = [0]
    while bounds[-1] < pcm.size:
        bounds.append(min(pcm.size, bounds[-1] + int(rng.uniform(low_s, high_s) * RATE)))
    return [pcm[a:b] for a, b in itertools.pairwise(bounds)]


def test_clean_speech_is_not_marked(
    watermarker: Watermarker, speech_pcm24k: np.ndarray, other_speaker_pcm16k: np.ndarray
) -> None:
    for pcm, rate in ((speech_pcm24k, RATE), (other_speaker_pcm16k, 16_000)):
        result = watermarker.detect(pcm, rate)
        assert not result.detected and result.confidence < 0.2


def test_marked_speech_is_detected(
    watermarker: Watermarker, speech_pcm24k: np.ndarray, marked: np.ndarray
) -> None:
    assert marked.dtype == np.float32 and marked.shape == speech_pcm24k.shape
    result = watermarker.detect(marked, RATE)
    assert result.detected and result.confidence > 0.9
    assert watermarker.threshold == WATERMARK_THRESHOLD
    # Inaudible means small: the mark is well below the speech.
    residual = marked - speech_pcm24k
    snr = 10 * np.log10(
        np.mean(speech_pcm24k.astype(np.float64) ** 2) / np.mean(residual.astype(np.float64) ** 2)
    )
    assert snr > 10


def test_mark_survives_16_bit_output(watermarker: Watermarker, marked: np.ndarray) -> None:
    s16 = np.round(marked * 32767).astype(np.int16)
    assert watermarker.detect(s16.astype(np.float32) / 32767, RATE).detected


def test_per_chunk_marking_is_detected_but_leaves_seams(
    watermarker: Watermarker, speech_pcm24k: np.ndarray, marked: np.ndarray
) -> None:
    """Measured, not wished for: naive chunk-wise marking works for detection, but steps at seams."""
    naive = np.concatenate([watermarker.apply(c, RATE) for c in chunks_of(speech_pcm24k, 1, 0.3, 1.0)])
    assert naive.size == speech_pcm24k.size
    assert watermarker.detect(naive, RATE).detected
    assert np.max(np.abs(naive - marked)) > 0.01


@pytest.mark.parametrize(("low_s", "high_s"), [(0.3, 1.0), (1.0, 2.0), (0.15, 0.15)])
def test_stream_watermarker_matches_whole_utterance_marking(
    watermarker: Watermarker, speech_pcm24k: np.ndarray, marked: np.ndarray, low_s: float, high_s: float
) -> None:
    stream = StreamWatermarker(watermarker, RATE)
    pieces = [stream.push(c) for c in chunks_of(speech_pcm24k, 2, low_s, high_s)]
    pieces.append(stream.flush())
    out = np.concatenate(pieces)
    assert out.size == speech_pcm24k.size and out.dtype == np.float32
    assert watermarker.detect(out, RATE).detected
    assert np.max(np.abs(out - marked)) < 0.005, "seams: the stream differs from marking the whole utterance"


def test_stream_output_lags_by_the_lookahead_only(
    watermarker: Watermarker, speech_pcm24k: np.ndarray
) -> None:
    stream = StreamWatermarker(watermarker, RATE, lookahead_s=0.1)
    first = stream.push(speech_pcm24k[: RATE // 2])
    assert first.size == RATE // 2 - int(0.1 * RATE)
    assert stream.push(np.zeros(0, np.float32)).size == 0
    assert stream.flush().size == int(0.1 * RATE)
    assert stream.flush().size == 0


def test_tiny_and_empty_inputs(watermarker: Watermarker, speech_pcm24k: np.ndarray) -> None:
    assert watermarker.apply(np.zeros(0, np.float32), RATE).size == 0
    short = watermarker.apply(speech_pcm24k[RATE : RATE + 100], RATE)
    assert short.shape == (100,)
    assert 0.0 <= watermarker.detect(speech_pcm24k[RATE : RATE + 100], RATE).confidence <= 1.0
    assert watermarker.detect(np.zeros(RATE, np.float32), RATE).confidence == 0.0


@pytest.mark.parametrize(
    ("missing", "advice"),
    [("pkg_resources", "Install setuptools<82"), ("decorator", r"Install decorator \(a dependency")],
)
def test_missing_perth_model_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, missing: str, advice: str
) -> None:
    """perth swallows the ImportError and exports None; the message names what is missing and the fix
    (on the H200, librosa's decorator was missing and the message asked for setuptools)."""
    import perth

    module = "perth.perth_net.perth_net_implicit.perth_watermarker"

    class Missing:
        @staticmethod
        def find_spec(name: str, *_: object) -> None:
            if name == module:
                raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(perth, "PerthImplicitWatermarker", None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(sys, "meta_path", [Missing(), *sys.meta_path])
    with pytest.raises(ModelUnavailable, match=advice) as err:
        Watermarker()
    assert err.value.code == "model_unavailable"
    assert f"No module named {missing!r}" in str(err.value)


def buzz(seconds: float = 5.0) -> np.ndarray:
    """What the random-weight test model speaks, in kind: a -26 dBFS DC offset and hiss above 8 kHz."""
    hiss = sosfilt(
        butter(4, 8_000, "highpass", fs=RATE, output="sos"),
        np.random.default_rng(3).standard_normal(int(seconds * RATE)),
    )
    return (-0.05 + 0.006 * hiss / np.sqrt(np.mean(hiss**2))).astype(np.float32)


def stream_marked(watermarker: Watermarker, pcm: np.ndarray, carrier: MarkCarrier | None) -> np.ndarray:
    """``pcm`` marked as the engine marks it: chunks of 0.37 s, 0.74 s, then 1.25 s (8, 16, 27 tokens)."""
    stream, out, start = StreamWatermarker(watermarker, RATE), [], 0
    for size in itertools.chain([8_924, 17_849], itertools.repeat(30_121)):
        if start >= pcm.size:
            break
        chunk = pcm[start : start + size]
        out.append(stream.push(carrier.process(chunk) if carrier is not None else chunk))
        start += size
    return np.concatenate([*out, stream.flush()])


def test_audio_with_nothing_below_2khz_holds_the_mark_only_with_the_carrier(watermarker: Watermarker) -> None:
    """The random model's kind of audio: marked as it is, perth finds nothing; with the carrier, the mark."""
    audio = buzz()
    assert watermarker.detect(stream_marked(watermarker, audio, None), RATE).confidence < 0.1
    carrier = MarkCarrier(RATE)
    marked = stream_marked(watermarker, audio, carrier)
    assert watermarker.detect(np.round(marked * 32767) / 32767, RATE).confidence > 0.9
    assert abs(float(marked[RATE:].mean())) < 0.002  # the offset is gone
    assert 0 < carrier.floor_rms < 0.01  # a floor of about -45 dBFS, in a signal of -26


def test_speech_gets_no_floor_only_the_high_pass(watermarker: Watermarker, speech_pcm24k: np.ndarray) -> None:
    carrier = MarkCarrier(RATE)
    floors, out = [], []
    for size in itertools.chain([8_924, 17_849], itertools.repeat(30_121)):
        done = sum(c.size for c in out)
        if done >= speech_pcm24k.size:
            break
        out.append(carrier.process(speech_pcm24k[done : done + size]))
        floors.append(carrier.floor_rms)
    assert floors == [0.0] * len(out)
    high_passed = sosfilt(butter(1, DC_CUTOFF_HZ, "highpass", fs=RATE, output="sos"), speech_pcm24k)
    assert np.max(np.abs(np.concatenate(out) - high_passed)) < 1e-6
