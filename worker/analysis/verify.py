"""Verification for consent: is it the same speaker, and did they say the phrase they were shown.

:class:`SpeakerVerifier` compares two clips with Resemblyzer's speaker embeddings;
:func:`match_phrase` compares a transcript with the expected consent phrase by word error rate;
:func:`make_consent_phrase` draws a fresh one-time phrase for a member to read, in English or French
(:data:`PHRASEBOOKS`: one entry per language, with its words and how its transcripts are normalised).
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

# French nouns with their article, so that Whisper hears French sentences rather than isolated sounds
# (its language model spells bare words phonetically: "chapeau" alone came back as "Shapo"). Only words
# that start with a consonant (no elision: "l'orange"), common, concrete, without homophones. Chosen by
# reading phrases with espeak-ng's French voice to Whisper base (the smallest multilingual model):
# words it got wrong in at least half of their readings were taken out, most of them espeak's poor
# French "r" and nasal vowels (pirate, tortue, maison, mouton, journal, valise, ...), and those it
# heard as another word or spelled another way (cabane as campagne, bicyclette as biciclete).
FRENCH_PHRASE_WORDS: Final = tuple(
    word.strip()
    for word in """le bateau, le bébé, le biscuit, le cacao, le cactus, le cadeau, le café, le capitaine,
    le chapeau, le château, le chocolat, le domino, le kiwi, le métro, le musée, le parasol, le piano,
    le pilote, le poisson, le pyjama, le sac, le soleil, le tapis, le taxi, le téléphone, la banane,
    la bouteille, la casserole, la chemise, la cuisine, la fenêtre, la lune,
    la machine, la montagne, la moto, la moustache, la musique, la planète, la plage, la poupée,
    la salade, la tasse, la tomate""".split(",")  # noqa: SIM905
)
# Seven nouns and no number (French number words are long, and Whisper writes them as digits): about
# five seconds to read. Only the nouns are scored: 2 wrong of 7 pass, 3 do not.
FRENCH_PHRASE_WORD_COUNT: Final = 7


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


@dataclass(frozen=True)
class Normalisation:
    """How transcripts in one language are reduced before two of them are compared, word by word."""

    spell_number: Callable[[int], str] | None = None  # digits → words ("47" → "forty seven"); None: kept
    fold_accents: bool = False  # "é" → "e", "œ" → "oe": Whisper is not consistent with them
    drop: tuple[str, ...] = ()  # patterns deleted after lowercasing (elided articles, silent endings)


@dataclass(frozen=True)
class Phrasebook:
    """What consent phrases in one language are drawn from, and how their readings are compared."""

    language: str  # the Whisper and XTTS-v2 code
    words: tuple[str, ...]
    word_count: int  # distinct words drawn for each phrase
    numbers: tuple[str, ...] = ()  # one of these (in words) joins each phrase when there are any
    normalisation: Normalisation = Normalisation()


ENGLISH: Final = Phrasebook(
    "en",
    PHRASE_WORDS,
    PHRASE_WORD_COUNT,
    numbers=tuple(number_to_words(n) for n in PHRASE_NUMBERS),
    normalisation=Normalisation(
        spell_number=number_to_words,
        drop=(r"(?<=\d)(?:st|nd|rd|th)\b",),  # 21st → 21: read close enough
    ),
)
FRENCH: Final = Phrasebook(
    "fr",
    FRENCH_PHRASE_WORDS,
    FRENCH_PHRASE_WORD_COUNT,
    normalisation=Normalisation(
        fold_accents=True,
        drop=(
            r"\b(?:qu|[cdjlmnst])['’]",  # l'orange → orange: Whisper may add an article the phrase lacks
            r"(?<=\w\w\w)[sx]\b",  # bateaux → bateau: a silent plural ending is not a wrong word
            r"\b(?:le|la|les|un|une|des|du)\b",  # articles help Whisper hear French; only the nouns count
        ),
    ),
)
# The languages consent phrases come in: one more is one more entry (its words, measured as above).
PHRASEBOOKS: Final[Mapping[str, Phrasebook]] = {book.language: book for book in (ENGLISH, FRENCH)}
_PLAIN: Final = Normalisation()  # transcripts in a language with no phrasebook


def consent_language(language: str | None) -> str:
    """The language a consent phrase for ``language`` is in: itself when it has a phrasebook, else English.

    Accepts Whisper, XTTS and locale spellings ("fr", "FR", "fr-CA", "fr_FR").
    """
    base = _base_language(language)
    return base if base in PHRASEBOOKS else ENGLISH.language


def _base_language(code: str | None) -> str:
    return (code or "").strip().lower().replace("_", "-").split("-", 1)[0]


def normalize_text(text: str, language: str = "en") -> str:
    """Lowercase words without punctuation, by ``language``'s rules: what two transcripts are compared as.

    English spells numbers out ("47" → "forty seven"); French folds accents and ligatures and drops
    elided articles and silent plural endings, on both sides alike. Other languages are lowercased and
    stripped of punctuation only.
    """
    book = PHRASEBOOKS.get(_base_language(language))
    rules = book.normalisation if book is not None else _PLAIN
    text = unicodedata.normalize("NFKC", text).lower()
    if rules.fold_accents:
        text = text.replace("œ", "oe").replace("æ", "ae")
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = re.sub(r"(?<=\d)[,_](?=\d{3})", "", text)  # 2,000 → 2000
    for pattern in rules.drop:
        text = re.sub(pattern, "", text)
    text = re.sub(r"[-–—/]", " ", text)  # forty-seven → forty seven
    text = re.sub(r"[^\w\s]", "", text)  # apostrophes and punctuation
    if rules.spell_number is not None:
        spell = rules.spell_number
        text = re.sub(r"\d+", lambda m: f" {spell(int(m.group()))} ", text)
    text = text.replace("_", " ")
    return " ".join(text.split())


def match_phrase(
    expected: str, heard: str, max_wer: float = DEFAULT_MAX_WER, language: str = "en"
) -> PhraseMatch:
    """Whether ``heard`` (a transcript) says ``expected``, by word error rate after :func:`normalize_text`."""
    import jiwer

    reference = normalize_text(expected, language)
    if not reference:
        raise InvalidRequest("The expected phrase is empty.")
    hypothesis = normalize_text(heard, language)
    wer = float(jiwer.wer(reference, hypothesis)) if hypothesis else 1.0
    return PhraseMatch(
        expected=expected,
        heard=heard,
        word_error_rate=round(wer, 4),
        max_word_error_rate=max_wer,
        matched=wer <= max_wer,
    )


def make_consent_phrase(language: str = "en", rng: random.Random | None = None) -> str:
    """A fresh phrase to read aloud in ``language`` (English when it has no phrasebook, as
    :func:`consent_language` says): distinct common words, comma-separated, in English with a number.

    The commas make readers pause between words, which keeps the transcript word for word (Whisper
    tiny.en on espeak-ng readings: 17 of 20 phrases matched; without commas, 10 of 15; Whisper base on
    espeak-ng's French voice: 16 of 22). About 2^47 possible English phrases and 2^37 French ones, so
    none can be recorded in advance. Pass ``rng`` only in tests; the default is the operating system's
    secure source.
    """
    book = PHRASEBOOKS[consent_language(language)]
    rng = rng or secrets.SystemRandom()
    words = rng.sample(book.words, book.word_count)
    if book.numbers:  # never first: a phrase starts with a word
        words.insert(rng.randrange(1, book.word_count), rng.choice(book.numbers))
    return ", ".join(words)
