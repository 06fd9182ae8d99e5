"""Turn a Discord message into speakable text: names for mentions, "link" for URLs, no markdown."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

USER_MENTION = re.compile(r"<@!?(\d{15,21})>")
ROLE_MENTION = re.compile(r"<@&(\d{15,21})>")
CHANNEL_MENTION = re.compile(r"<#(\d{15,21})>")
CUSTOM_EMOJI = re.compile(r"<a?:(\w{2,32}):\d{15,21}>")
TIMESTAMP = re.compile(r"<t:(-?\d{1,13})(?::[tTdDfFR])?>")
SLASH_COMMAND = re.compile(r"</([\w -]{1,32}):\d{15,21}>")
URL = re.compile(r"<?(?:https?|ftp)://[^\s>]+>?", re.IGNORECASE)
MASKED_LINK = re.compile(r"\[([^\]]+)\]\(\s*<?(?:https?|ftp)://[^)\s]+>?\s*\)", re.IGNORECASE)
CODE_BLOCK = re.compile(r"```(?:[\w+-]*\n)?(.*?)```", re.DOTALL)
INLINE_CODE = re.compile(r"`([^`]*)`")
SPOILER = re.compile(r"\|\|(.+?)\|\|", re.DOTALL)
EMPHASIS = re.compile(r"(\*\*\*|\*\*|\*|~~)(?=\S)(.+?)(?<=\S)\1", re.DOTALL)
UNDERSCORES = re.compile(r"(?<!\w)(___|__|_)(?=\S)(.+?)(?<=\S)\1(?!\w)", re.DOTALL)
HEADING = re.compile(r"^\s{0,3}(?:#{1,3}|-#)\s+", re.MULTILINE)
QUOTE = re.compile(r"^\s*>{1,3}\s?", re.MULTILINE)
LIST_BULLET = re.compile(r"^\s*[-*+]\s+", re.MULTILINE)
ESCAPE = re.compile(r"\\([*_~`|>#\-\[\]()\\])")
_PLACEHOLDER_BASE = 0xF0000  # Unicode private use: never in the text we receive from Discord
WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class NameResolver:
    """How ids become names; each returns None for an unknown id."""

    member: Callable[[int], str | None]
    role: Callable[[int], str | None]
    channel: Callable[[int], str | None]


def _emoji_name(char: str) -> str:
    try:
        return unicodedata.name(char).lower()
    except ValueError:
        return ""


def _spoken_emoji(text: str) -> str:
    out = []
    for char in text:
        if unicodedata.category(char) == "So":  # pictographs: say their name once, like a screen reader
            name = _emoji_name(char)
            out.append(f" {name} " if name else " ")
        elif unicodedata.category(char) in ("Mn", "Cf") and char in "\ufe0f\u200d":
            continue  # variation selectors and joiners are not spoken
        else:
            out.append(char)
    return "".join(out)


def _unhide(char: str) -> str:
    offset = ord(char) - _PLACEHOLDER_BASE
    return chr(offset) if 0 <= offset < 128 else char


def normalize_for_speech(text: str, names: NameResolver) -> str:
    """Speakable text. Order matters: Discord tokens first, then links, then markdown."""
    text = USER_MENTION.sub(lambda m: names.member(int(m.group(1))) or "someone", text)
    text = ROLE_MENTION.sub(lambda m: names.role(int(m.group(1))) or "a role", text)
    text = CHANNEL_MENTION.sub(lambda m: names.channel(int(m.group(1))) or "a channel", text)
    text = CUSTOM_EMOJI.sub(lambda m: " " + m.group(1).replace("_", " ") + " ", text)
    text = TIMESTAMP.sub("a time", text)
    text = SLASH_COMMAND.sub(lambda m: "slash " + m.group(1), text)
    # Escaped markdown characters are literal: hide them from the markdown passes below.
    text = ESCAPE.sub(lambda m: chr(_PLACEHOLDER_BASE + ord(m.group(1))), text)
    text = MASKED_LINK.sub(lambda m: m.group(1), text)
    text = URL.sub(" link ", text)
    text = CODE_BLOCK.sub(lambda m: " " + m.group(1) + " ", text)
    text = INLINE_CODE.sub(lambda m: m.group(1), text)
    text = SPOILER.sub(lambda m: m.group(1), text)
    for _ in range(3):  # nested emphasis: ***bold italic*** inside __underline__
        text = EMPHASIS.sub(lambda m: m.group(2), text)
        text = UNDERSCORES.sub(lambda m: m.group(2), text)
    text = HEADING.sub("", text)
    text = QUOTE.sub("", text)
    text = LIST_BULLET.sub("", text)
    text = "".join(
        chr(ord(c) - _PLACEHOLDER_BASE) if 0 <= ord(c) - _PLACEHOLDER_BASE < 128 else c for c in text
    )
    text = _spoken_emoji(text)
    return WHITESPACE.sub(" ", text).strip()
