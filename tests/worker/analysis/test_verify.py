"""Speaker verification with the real Resemblyzer model, consent-phrase matching and phrase generation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tests.worker.conftest import decode
from worker.analysis.verify import (
    FRENCH_PHRASE_WORDS,
    PHRASE_NUMBERS,
    PHRASE_WORDS,
    PHRASEBOOKS,
    SAME_SPEAKER_THRESHOLD,
    SpeakerVerifier,
    consent_language,
    make_consent_phrase,
    match_phrase,
    normalize_text,
    number_to_words,
)
from worker.errors import InvalidAudio, InvalidRequest

RATE = 16_000


def test_same_speaker_scores_above_different_speaker(
    speaker_verifier: SpeakerVerifier,
    speech_pcm16k: np.ndarray,
    same_speaker_pcm16k: np.ndarray,
    other_speaker_pcm16k: np.ndarray,
) -> None:
    same = speaker_verifier.compare(speech_pcm16k, same_speaker_pcm16k, RATE)
    other = speaker_verifier.compare(speech_pcm16k, other_speaker_pcm16k, RATE)
    assert same.similarity > other.similarity + 0.1
    assert same.same_speaker and same.similarity >= SAME_SPEAKER_THRESHOLD
    assert not other.same_speaker and other.similarity < SAME_SPEAKER_THRESHOLD
    assert same.threshold == other.threshold == SAME_SPEAKER_THRESHOLD


def test_clip_compared_with_itself_is_the_same_speaker(
    speaker_verifier: SpeakerVerifier, speech_pcm16k: np.ndarray
) -> None:
    assert speaker_verifier.compare(speech_pcm16k, speech_pcm16k, RATE).similarity > 0.99


def test_rate_does_not_change_the_verdict(
    speaker_verifier: SpeakerVerifier,
    speech_ogg: Path,
    speech_pcm16k: np.ndarray,
    same_speaker_pcm16k: np.ndarray,
) -> None:
    at48 = decode(speech_ogg, 48_000)
    embedding48 = speaker_verifier.embed(at48, 48_000)
    embedding16 = speaker_verifier.embed(speech_pcm16k, RATE)
    assert embedding48.shape == (256,) and embedding48.dtype == np.float32
    assert float(np.dot(embedding48, embedding16)) > 0.97
    assert float(np.linalg.norm(embedding16)) == pytest.approx(1.0, abs=1e-4)


def test_silence_cannot_be_compared(
    speaker_verifier: SpeakerVerifier, silence_pcm16k: np.ndarray, speech_pcm16k: np.ndarray
) -> None:
    with pytest.raises(InvalidAudio, match="too little speech"):
        speaker_verifier.compare(silence_pcm16k, speech_pcm16k, RATE)


@pytest.mark.parametrize(
    ("expected", "heard", "wer"),
    [
        ("yellow, ladder, forty seven, garden", "Yellow ladder 47 garden.", 0.0),
        ("parrot, noisy, fifty five, sleepy", "Parrot, noisy, fifty-five, sleepy!", 0.0),
        ("station engine spoon", "Station, engine... SPOON?", 0.0),
        ("one two three four", "one two three", 0.25),
    ],
)
def test_phrase_match_normalises_before_scoring(expected: str, heard: str, wer: float) -> None:
    result = match_phrase(expected, heard)
    assert result.word_error_rate == pytest.approx(wer)
    assert result.matched
    assert (result.expected, result.heard, result.max_word_error_rate) == (expected, heard, 0.35)


def test_wrong_phrase_does_not_match() -> None:
    result = match_phrase(
        "tiger, window, sixty one, planet, rocket, dinner", "I consent to having my voice cloned"
    )
    assert not result.matched and result.word_error_rate > 0.8
    assert not match_phrase("tiger window", "").matched
    assert match_phrase("tiger window", "").word_error_rate == 1.0


def test_three_wrong_words_of_eight_fail_two_pass() -> None:
    expected = "apple, bridge, seventy one, cloud, forest, island, market"
    assert match_phrase(expected, "apple fridge seventy one cloud forest island market").matched
    assert match_phrase(expected, "apple fridge seventy one crowd forest island market").matched
    assert not match_phrase(expected, "apple fridge seventy one crowd forest highland market").matched


def test_empty_expected_phrase_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        match_phrase(" ... ", "hello")


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Forty-Seven!", "forty seven"),
        ("I have 2,000 apples", "i have two thousand apples"),
        ("the 21st of May", "the twenty one of may"),
        ("  don't   STOP  ", "dont stop"),
        ("café — naïve", "café naïve"),
    ],
)
def test_normalize_text(text: str, normal: str) -> None:
    assert normalize_text(text) == normal


def test_number_words() -> None:
    assert [number_to_words(n) for n in (0, 13, 40, 47, 100, 305, 2005, 1_000_000)] == [
        "zero", "thirteen", "forty", "forty seven", "one hundred", "three hundred five", "two thousand five",
        "one zero zero zero zero zero zero",
    ]  # fmt: skip


def test_consent_phrase_shape() -> None:
    phrase = make_consent_phrase("en", random.Random(1))
    parts = phrase.split(", ")
    assert len(parts) == 7
    numbers = [p for p in parts if p not in PHRASE_WORDS]
    assert len(numbers) == 1 and numbers[0] in {number_to_words(n) for n in PHRASE_NUMBERS}
    assert parts[0] in PHRASE_WORDS, "a phrase starts with a word, not the number"
    assert len(set(parts)) == 7
    assert make_consent_phrase("en", random.Random(1)) == phrase


def test_consent_phrases_are_fresh() -> None:
    phrases = {make_consent_phrase() for _ in range(200)}
    assert len(phrases) == 200


def test_french_consent_phrase_shape() -> None:
    phrase = make_consent_phrase("fr", random.Random(1))
    parts = phrase.split(", ")
    assert len(parts) == 7 and len(set(parts)) == 7
    assert all(p in FRENCH_PHRASE_WORDS for p in parts), phrase
    assert not any(c.isdigit() for c in phrase)
    assert make_consent_phrase("fr", random.Random(1)) == phrase
    assert len({make_consent_phrase("fr") for _ in range(200)}) == 200


def test_phrase_words_are_unambiguous() -> None:
    """No elision, no digits, no duplicates, and no two words that normalise alike."""
    for book in PHRASEBOOKS.values():
        assert len(set(book.words)) == len(book.words), book.language
        normal = [normalize_text(w, book.language) for w in book.words]
        assert len(set(normal)) == len(normal) and all(normal), book.language
        assert not any("'" in w or any(c.isdigit() for c in w) for w in book.words), book.language
    assert all(w.split()[0] in ("le", "la") and len(w.split()) == 2 for w in FRENCH_PHRASE_WORDS)
    assert all(len(normalize_text(w, "fr").split()) == 1 for w in FRENCH_PHRASE_WORDS)


@pytest.mark.parametrize(
    ("code", "language"),
    [("fr", "fr"), ("FR", "fr"), ("fr-CA", "fr"), ("fr_FR", "fr"), ("en-US", "en"), ("de", "en"),
     ("pt-BR", "en"), ("", "en"), (None, "en")],
)  # fmt: skip
def test_languages_without_phrases_fall_back_to_english(code: str | None, language: str) -> None:
    assert consent_language(code) == language


def test_unknown_language_gets_an_english_phrase() -> None:
    phrase = make_consent_phrase("de", random.Random(1))
    assert phrase == make_consent_phrase("en", random.Random(1))


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("La Fenêtre, le CAFÉ !", "fenetre cafe"),  # accents folded, articles dropped
        ("l'orange, les bateaux", "orange bateau"),  # elision and silent plural
        ("le bébé — la planète…", "bebe planete"),
        ("un œuf, aujourd’hui", "oeuf aujourdhui"),  # ligature; the curly apostrophe too
        ("le piano 47", "piano 47"),  # no English number words in French
    ],
)
def test_french_normalisation(text: str, normal: str) -> None:
    assert normalize_text(text, "fr") == normal


def test_french_match_scores_the_nouns_only() -> None:
    expected = "le bateau, la tasse, la moto, la cabane, le kiwi, la montagne, le café"
    heard = "Le bateau, la tasse, la moto, la cabane, le kiwi, la montagne, le café."
    assert match_phrase(expected, heard, language="fr").word_error_rate == 0.0
    # Accents and articles as Whisper may write them are no wrong words.
    assert match_phrase(expected, "bateau tasse moto cabane kiwi montagne cafe", language="fr").matched
    two_wrong = "Le bateau, la casse, la moto, la cabane, le kiwi, la montagne, le cadeau."
    three_wrong = "Le bateau, la casse, la photo, la cabane, le kiwi, la montagne, le cadeau."
    assert match_phrase(expected, two_wrong, language="fr").matched
    assert not match_phrase(expected, three_wrong, language="fr").matched
    # English rules count the articles as words and keep the accents: the same reading fails there.
    assert not match_phrase(expected, "bateau tasse moto cabane kiwi montagne cafe").matched


def test_other_languages_are_compared_plainly() -> None:
    assert normalize_text("Der Bär, 47 Äpfel!", "de") == "der bär 47 äpfel"
