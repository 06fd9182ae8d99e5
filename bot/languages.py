"""The languages a cloned voice can speak (XTTS-v2's 17) and which one a text is in.

A voice is one embedding whatever the language: XTTS-v2 speaks any of its languages in it, so a member
enrolled in English can be heard in French without enrolling again. :func:`choose_language` picks the
language of one utterance: the one asked for, else the one detected in the text (lingua, limited to the
17), else the voice's own when the text is too short or the detection not confident.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from functools import cache
from typing import Final

from babel import Locale
from babel.lists import format_list
from discord import app_commands
from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

from core.i18n import current_locale, tr
from worker.errors import UnsupportedLanguage

log = logging.getLogger("voxclone.languages")

# XTTS-v2's language codes, in the model's order, with their English names (accepted when typed; what a
# member reads is the name in their own language, from Babel: language_name).
XTTS_LANGUAGES: Final[dict[str, str]] = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian",
    "pt": "Portuguese", "pl": "Polish", "tr": "Turkish", "ru": "Russian", "nl": "Dutch", "cs": "Czech",
    "ar": "Arabic", "zh-cn": "Chinese", "hu": "Hungarian", "ko": "Korean", "ja": "Japanese", "hi": "Hindi",
}  # fmt: skip

MIN_LETTERS: Final = 8  # letters (any script) below which a text is too short to tell its language
MIN_CONFIDENCE: Final = 0.5  # lingua's confidence (0-1) for the likeliest language, below: not sure
AUTOCOMPLETE_LIMIT: Final = 25  # Discord shows at most 25 choices


def language_name(code: str, locale: str | None = None) -> str:
    """A language's name in the reader's language (Babel's CLDR data): "de" → "German", "allemand".

    Takes XTTS codes ("zh-cn") and Whisper's ISO 639-1 codes; an unknown code is shown as it is.
    """
    names = _language_names(locale or current_locale())
    return names.get(code) or names.get(code.split("-")[0]) or code


@cache
def _language_names(locale: str) -> dict[str, str]:
    return dict(Locale.parse(locale).languages)


def _folded(text: str) -> str:
    """Lower case without accents, to match what was typed ("francais" finds "français")."""
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _iso(code: str) -> str:
    """lingua's ISO 639-1 name for an XTTS code ("zh-cn" → "ZH")."""
    return code.split("-")[0].upper()


class TextLanguage:
    """Language identification restricted to XTTS-v2's languages (lingua, low-accuracy mode: ~50 MB).

    The models load on first use (about 0.1 s); one detector is shared by every server.
    """

    def __init__(self, *, min_letters: int = MIN_LETTERS, min_confidence: float = MIN_CONFIDENCE) -> None:
        self.min_letters = min_letters
        self.min_confidence = min_confidence
        self._detector: LanguageDetector | None = None
        self._lock = threading.Lock()
        self._codes = {_iso(code): code for code in XTTS_LANGUAGES}

    def _get(self) -> LanguageDetector:
        with self._lock:
            if self._detector is None:
                languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, iso)) for iso in self._codes]
                # Low-accuracy mode (trigrams only) is ~10x smaller and faster to load than the high one
                # and as good on sentences; short texts fall back to the voice's language anyway.
                self._detector = (
                    LanguageDetectorBuilder.from_languages(*languages).with_low_accuracy_mode().build()
                )
            return self._detector

    def detect(self, text: str) -> str | None:
        """The XTTS code of ``text``'s language, or None when it is too short or the guess is unsure."""
        if sum(ch.isalpha() for ch in text) < self.min_letters:
            return None
        values = self._get().compute_language_confidence_values(text)
        if not values or values[0].value < self.min_confidence:
            return None
        return self._codes.get(values[0].language.iso_code_639_1.name)


def resolve(requested: str) -> str:
    """The XTTS code for a code or name a member typed ("fr", "French", "français", "zh" → "zh-cn")."""
    wanted = _folded(requested).replace("_", "-")
    for code, name in XTTS_LANGUAGES.items():
        if wanted in (code, name.lower(), code.split("-")[0], _folded(language_name(code))):
            return code
    raise UnsupportedLanguage(
        tr(
            "I can't speak '{language}'. Pick one of: {languages}.",
            language=requested,
            languages=format_list([language_name(code) for code in XTTS_LANGUAGES], locale=current_locale()),
        ),
        supported=list(XTTS_LANGUAGES),
    )


def choose_language(text: str, *, requested: str | None, voice_language: str, detector: TextLanguage) -> str:
    """What to speak ``text`` in: ``requested`` if given, else detected, else the voice's own language."""
    if requested:
        return resolve(requested)
    detected = detector.detect(text)
    if detected is not None:
        return detected
    try:
        return resolve(voice_language)
    except UnsupportedLanguage:  # a voice enrolled in a language XTTS lacks: English is always there
        return "en"


def language_choices(current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete: the languages whose name (the reader's or English) or code contains what was typed.

    Every language when nothing was typed; names in the reader's language ("allemand (de)").
    """
    typed = _folded(current)
    choices = []
    for code, english in XTTS_LANGUAGES.items():
        name = language_name(code)
        if not typed or typed in _folded(name) or typed in english.lower() or typed in code:
            choices.append(app_commands.Choice(name=f"{name} ({code})", value=code))
    return choices[:AUTOCOMPLETE_LIMIT]
