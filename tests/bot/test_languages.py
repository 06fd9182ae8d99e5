"""Which language an utterance is in: asked for, detected (lingua, XTTS-v2's 17 only), or the voice's."""

from __future__ import annotations

import pytest

from bot.languages import XTTS_LANGUAGES, TextLanguage, choose_language, language_choices, resolve
from worker.errors import UnsupportedLanguage
from worker.tts.testmodel import XTTS_V2_LANGUAGES

DETECTOR = TextLanguage()


def test_the_17_languages_are_the_models() -> None:
    assert tuple(XTTS_LANGUAGES) == XTTS_V2_LANGUAGES


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Bonjour à tous, comment allez-vous ce soir ?", "fr"),
        ("Das ist ein sehr schöner Tag heute, nicht wahr?", "de"),
        ("Hoy vamos a cenar en casa de mis abuelos.", "es"),
        ("Hello everyone, how are you doing this evening?", "en"),
        ("今日はとても良い天気ですね、散歩に行きましょう", "ja"),
        ("今天天气很好，我们去公园散步吧", "zh-cn"),
        ("Привет всем, как у вас дела сегодня?", "ru"),
    ],
)
def test_sentences_are_detected(text: str, code: str) -> None:
    assert DETECTOR.detect(text) == code


@pytest.mark.parametrize("text", ["ok", "lol", "Salut", "👍👍👍", "ça va"])
def test_short_or_unsure_texts_are_not_guessed(text: str) -> None:
    assert DETECTOR.detect(text) is None


def test_choose_language_asked_then_detected_then_the_voices() -> None:
    french = "Je vais lire ce message à voix haute pour tout le monde."
    assert choose_language(french, requested=None, voice_language="en", detector=DETECTOR) == "fr"
    assert choose_language(french, requested="de", voice_language="en", detector=DETECTOR) == "de"
    assert choose_language("merci", requested=None, voice_language="en", detector=DETECTOR) == "en"
    assert choose_language("ok", requested=None, voice_language="fr", detector=DETECTOR) == "fr"
    # A voice enrolled in a language the model lacks still speaks: English.
    assert choose_language("ok", requested=None, voice_language="sv", detector=DETECTOR) == "en"


def test_resolve_codes_and_names() -> None:
    assert resolve("French") == resolve("FR") == "fr"
    assert resolve("zh") == resolve("Chinese") == "zh-cn"
    with pytest.raises(UnsupportedLanguage, match="Pick one of"):
        resolve("Klingon")


def test_autocomplete_filters_by_name_or_code() -> None:
    assert len(language_choices("")) == 17
    assert [c.value for c in language_choices("fre")] == ["fr"]
    assert [c.value for c in language_choices("an")] == ["es", "de", "it", "ru", "hu", "ko", "ja"]
    assert [c.name for c in language_choices("zh")] == ["Chinese (zh-cn)"]
    assert language_choices("zz") == []
