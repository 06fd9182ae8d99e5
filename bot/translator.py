"""Command names, descriptions, options and choices in each member's client language.

discord.py hands every command string to :class:`CatalogTranslator` when the tree syncs; the answer
comes from the same catalogs as the replies (``core.i18n``), under a gettext context per kind of
string ("command name", "parameter description", ...). :func:`command_messages` lists them all, for
``make messages`` and the catalog tests.
"""

from __future__ import annotations

import re
from typing import Final

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation as Where

from core.i18n import SOURCE_LOCALE, pgettext, resolve

CONTEXTS: Final[dict[Where, str]] = {
    Where.command_name: "command name",
    Where.command_description: "command description",
    Where.group_name: "command name",
    Where.group_description: "command description",
    Where.parameter_name: "option name",
    Where.parameter_description: "option description",
    Where.choice_name: "choice",
    Where.other: "command text",
}
MENU_CONTEXT: Final = "menu name"  # context-menu commands: free text, unlike slash names
NAME_CONTEXTS: Final = frozenset({"command name", "option name"})
SLASH_NAME: Final = re.compile(r"^[-_\w]{1,32}$")  # Discord's rule for slash command and option names


def context_of(context: app_commands.TranslationContextTypes) -> str:
    """The catalog context of a command string: what kind of string it is."""
    if isinstance(context.data, app_commands.ContextMenu):
        return MENU_CONTEXT
    return CONTEXTS[context.location]


class CatalogTranslator(app_commands.Translator):
    """Answers from the catalogs; ``None`` (Discord shows the English text) where there is no entry."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        language = resolve(locale.value)
        if language == SOURCE_LOCALE:
            return None
        translated = pgettext(context_of(context), string.message, locale=language)
        return translated if translated != string.message else None


class _Recorder(app_commands.Translator):
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], None] = {}

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        self.seen[(context_of(context), string.message)] = None
        return None


async def command_messages(tree: app_commands.CommandTree) -> list[tuple[str, str]]:
    """Every ``(context, text)`` of the tree that Discord can show translated, in tree order."""
    recorder = _Recorder()
    for command in tree.get_commands():
        await command.get_translated_payload(tree, recorder)
    return list(recorder.seen)
