"""Verification for consent: is it the same speaker, and did they say the phrase they were shown.

:class:`SpeakerVerifier` compares two clips with Resemblyzer's speaker embeddings;
:func:`match_phrase` compares a transcript with the expected consent phrase by word error rate;
:func:`make_consent_phrase` draws a fresh one-time phrase for a member to read.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import unicodedata
import warnings
from typing import Final

import numpy as np

from core.audio import ANALYSIS_SAMPLE_RATE
from worker.analysis.quality import to_analysis_rate, validate_pcm
from worker.errors import InvalidAudio, InvalidRequest
from worker.types import FloatArray, PhraseMatch, SpeakerCheck

log = logging.getLogger(__name__)

# Cosine similarity of Resemblyzer embeddings at or above which two clips are the same speaker.
# Measured on the 2-core dev CPU with espeak-ng speech sent as OGG/Opus voice messages, always
# comparing different sentences (the words otherwise dominate): same voice 0.84-0.95 (mean 0.90,
# 4 sentences x 7 voices); en-us against the female variants +f2/+f3 0.63-0.75, +m3 against +f2
# 0.59-0.69, the two female variants +f2/+f3 0.69-0.82. 0.80 sits just under the lowest
# same-speaker score, above every male/female pair.
# Presets that only shift espeak's pitch or accent (en-gb, -p 20) stay at 0.81-0.92: they are the
# same synthesizer, and this check tells voices apart, not a synthesizer's presets.
SAME_SPEAKER_THRESHOLD: Final = 0.80
MIN_VOICED_S: Final = 1.0  # s of voiced audio (after Resemblyzer's own silence trimming) to compare
SILENT_PEAK: Final = 1e-3  # full scale (-60 dBFS): a clip whose loudest sample is below this is silent
DEFAULT_MAX_WER: Final = 0.35  # 2 wrong words of an 8-word phrase pass, 3 do not

_ONES = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

# Common, concrete words that are easy to say, with no homophones or British/American spellings, so
# that a correct reading always transcribes the same way. Words that Whisper tiny.en misheard twice
# in three espeak readings (salad, valley, butter, cotton, button, lemon, ...) were taken out.
PHRASE_WORDS: Final = tuple(
    """apple balloon banana basket bicycle blanket bottle bridge busy cactus camera candle careful
    carpet castle chicken chocolate circle cloud coffee cookie corner dinner doctor dolphin dragon
    early elephant engine finger forest friendly frozen garden gentle golden guitar hammer happy
    helmet holiday hungry island jacket kangaroo kitchen ladder library lion lucky market mirror
    monkey mountain museum music noisy ocean orange paper parrot pencil penguin pepper picture
    pillow pizza planet pocket potato puzzle purple quick rabbit river robot rocket silver simple
    sleepy spoon station summer sunset table teacher ticket tiger tomato tower tractor train
    turtle umbrella village volcano wagon window windy winter yellow zebra""".split()  # noqa: SIM905
)
# 21-99 without round tens or units that sound like words ("sixty two" is heard as "60 to").
PHRASE_NUMBERS: Final = tuple(n for n in range(21, 100) if n % 10 in (1, 3, 5, 6, 7, 9))
PHRASE_WORD_COUNT: Final = 6  # plus a two-word number: eight words, about four seconds to read


class SpeakerVerifier:
    """Resemblyzer speaker embeddings and their cosine similarity."""

    def __init__(self, device: str = "cpu", threshold: float = SAME_SPEAKER_THRESHOLD) -> None:
        with warnings.catch_warnings():
            # resemblyzer imports scipy.ndimage.morphology, deprecated since SciPy 1.8: noise only.
            warnings.filterwarnings(
                "ignore", message=".*scipy.ndimage.morphology.*", category=DeprecationWarning
            )
            from resemblyzer import VoiceEncoder, preprocess_wav

        self._preprocess = preprocess_wav
        self._encoder = VoiceEncoder(device=device, verbose=False)
        self.threshold = threshold

    def embed(self, pcm: FloatArray, sample_rate: int) -> FloatArray:
        """A unit-length 256-dimension speaker embedding; InvalidAudio when there is too little voice."""
        pcm16k = to_analysis_rate(validate_pcm(pcm, sample_rate), sample_rate)
        too_little = InvalidAudio(
            "One of the clips has too little speech to recognise a voice: send a longer one."
        )
        if float(np.max(np.abs(pcm16k))) < SILENT_PEAK:
            raise too_little  # Resemblyzer would divide by zero normalising the volume of silence
        wav = self._preprocess(pcm16k, source_sr=None)  # already 16 kHz: Resemblyzer's own rate
        if wav.size < MIN_VOICED_S * ANALYSIS_SAMPLE_RATE:
            raise too_little
        embedding = self._encoder.embed_utterance(wav.astype(np.float32))
        return np.asarray(embedding, dtype=np.float32)

    def compare(self, pcm_a: FloatArray, pcm_b: FloatArray, sample_rate: int) -> SpeakerCheck:
        """Same-speaker verdict for two clips at ``sample_rate`` Hz."""
        similarity = float(np.dot(self.embed(pcm_a, sample_rate), self.embed(pcm_b, sample_rate)))
        check = SpeakerCheck(
            similarity=round(similarity, 4),
            threshold=self.threshold,
            same_speaker=similarity >= self.threshold,
        )
        log.info("verify: similarity %.3f (threshold %.2f)", check.similarity, check.threshold)
        return check


def number_to_words(n: int) -> str:
    """English words for 0 ≤ n < 1,000,000 ("forty seven", "two thousand and five" without "and")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    if n < 1_000_000:
        rest = n % 1000
        return number_to_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_to_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))  # read digit by digit


def normalize_text(text: str) -> str:
    """Lowercase words without punctuation, numbers spelled out: what two transcripts are compared as."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"(?<=\d)[,_](?=\d{3})", "", text)  # 2,000 → 2000
    text = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", text)  # 21st → 21 (ordinals read close enough)
    text = re.sub(r"[-–—/]", " ", text)  # forty-seven → forty seven
    text = re.sub(r"[^\w\s]", "", text)  # apostrophes and punctuation
    text = re.sub(r"\d+", lambda m: f" {number_to_words(int(m.group()))} ", text)
    text = text.replace("_", " ")
    return " ".join(text.split())


def match_phrase(expected: str, heard: str, max_wer: float = DEFAULT_MAX_WER) -> PhraseMatch:
    """Whether ``heard`` (a transcript) says ``expected``, by word error rate after :func:`normalize_text`."""
    import jiwer

    reference = normalize_text(expected)
    if not reference:
        raise InvalidRequest("The expected phrase is empty.")
    hypothesis = normalize_text(heard)
    wer = float(jiwer.wer(reference, hypothesis)) if hypothesis else 1.0
    return PhraseMatch(
        expected=expected,
        heard=heard,
        word_error_rate=round(wer, 4),
        max_word_error_rate=max_wer,
        matched=wer <= max_wer,
    )


def make_consent_phrase(rng: random.Random | None = None) -> str:
    """A fresh phrase to read aloud: six distinct common words and a number in words, comma-separated.

    The commas make readers pause between words, which keeps the transcript word for word (Whisper
    tiny.en on espeak-ng readings: 17 of 20 phrases matched; without commas, 10 of 15). About 2^47
    possible phrases, so none can be recorded in advance. Pass ``rng`` only in tests; the default is
    the operating system's secure source.
    """
    rng = rng or secrets.SystemRandom()
    words = rng.sample(PHRASE_WORDS, PHRASE_WORD_COUNT)
    words.insert(rng.randrange(1, PHRASE_WORD_COUNT), number_to_words(rng.choice(PHRASE_NUMBERS)))
    return ", ".join(words)
