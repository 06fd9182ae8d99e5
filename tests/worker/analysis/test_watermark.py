"""The perth watermark on real espeak speech: absent on clean speech, found on marked speech and streams."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from worker.analysis.watermark import WATERMARK_THRESHOLD, StreamWatermarker, Watermarker
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
