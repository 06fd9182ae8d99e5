"""The current locale and the catalog lookup: what each edge relies on to answer in the reader's language."""

from __future__ import annotations

import asyncio

import pytest

from core import i18n
from core.i18n import N_, ngettext, pgettext, resolve, set_locale, tr, using_locale

GENERIC = "Something went wrong on my side and it has been logged. Please try again in a minute."


def test_locale_tags_resolve_to_a_catalog_or_the_source() -> None:
    assert i18n.available_locales()[0] == "en"
    assert "fr" in i18n.available_locales()
    assert resolve("fr") == "fr"
    assert resolve("fr-CA") == "fr"  # a regional variant falls back to its language
    assert resolve("FR_fr") == "fr"
    assert resolve("en-US") == "en"
    assert resolve("ja") == "en"  # no catalog yet: the source language
    assert resolve(None) == "en"
    assert resolve("") == "en"


def test_translation_follows_the_current_locale() -> None:
    with using_locale("fr"):
        french = tr(GENERIC)
        assert french != GENERIC and "réessayez" in french.lower()
    assert tr(GENERIC) == GENERIC  # back to English outside the block


def test_fields_are_filled_after_translation() -> None:
    with using_locale("fr"):
        text = tr("Slow down a little: try again in {seconds} s.", seconds="12")
    assert "12 s" in text and "{" not in text
    assert (
        tr("Slow down a little: try again in {seconds} s.", seconds="3")
        == "Slow down a little: try again in 3 s."
    )


def test_plurals_follow_each_language() -> None:
    assert ngettext("{n} byte", "{n} bytes", 1) == "1 byte"
    assert ngettext("{n} byte", "{n} bytes", 0) == "0 bytes"  # English: 0 is plural
    with using_locale("fr"):
        assert ngettext("{n} byte", "{n} bytes", 0) == "0 octet"  # French: 0 and 1 are singular
        assert ngettext("{n} byte", "{n} bytes", 2) == "2 octets"


def test_a_message_without_an_entry_stays_in_english() -> None:
    with using_locale("fr"):
        assert tr("A sentence nobody marked.") == "A sentence nobody marked."
        assert N_("marked only") == "marked only"
    assert pgettext("command name", "speak", locale="fr") == "parler"


async def test_each_task_keeps_its_own_locale() -> None:
    """Two interactions at once, one French and one English: neither answers in the other's language."""
    barrier = asyncio.Barrier(2)

    async def answer(tag: str) -> str:
        set_locale(tag)
        await barrier.wait()  # both have set their locale before either translates
        return tr(GENERIC)

    french, english = await asyncio.gather(answer("fr"), answer("en-GB"))
    assert english == GENERIC and french != GENERIC


@pytest.mark.parametrize("text", ["Hello {name}, {count} voices", "{a}{b}", "no fields"])
def test_placeholders_are_listed(text: str) -> None:
    expected = {"Hello {name}, {count} voices": {"name", "count"}, "{a}{b}": {"a", "b"}, "no fields": set()}
    assert i18n.placeholders(text) == expected[text]
