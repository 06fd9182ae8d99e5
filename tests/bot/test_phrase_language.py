"""Which language a member's consent phrase is in, from their Discord client locale, and its preview."""

from __future__ import annotations

import discord
import pytest

from bot.enrollment import PREVIEW_TEXT, phrase_language, preview_text


@pytest.mark.parametrize(
    ("locale", "language"),
    [
        (discord.Locale.french, "fr"),
        ("fr", "fr"),
        ("FR", "fr"),
        (discord.Locale.american_english, "en"),
        (discord.Locale.british_english, "en"),
        (discord.Locale.brazil_portuguese, "en"),  # no Portuguese phrases (yet): English
        (discord.Locale.german, "en"),
        ("", "en"),
        (None, "en"),
    ],
)
def test_french_clients_get_french_phrases_everyone_else_english(
    locale: discord.Locale | str | None, language: str
) -> None:
    assert phrase_language(locale) == language


def test_the_preview_follows_the_voice_language() -> None:
    assert preview_text("fr") != PREVIEW_TEXT and preview_text("fr").startswith("Bonjour")
    assert preview_text("en") == PREVIEW_TEXT
    assert preview_text("de") == PREVIEW_TEXT  # no German sentence: English
