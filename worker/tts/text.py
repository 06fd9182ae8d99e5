"""Text preparation for synthesis: clean up what members type and cut it into sentences XTTS can speak.

XTTS-v2 is trained on single sentences; past ~250 characters (less for some languages) it truncates or
babbles, so text is split at sentence ends and overlong sentences again at clause breaks, then at words.
Number and abbreviation expansion is the tokenizer's job (coqui's multilingual cleaners), not this module's.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata

DEFAULT_CHAR_LIMIT = 250  # characters per piece for English (coqui's limit; its table has the others)

# Full stops that end a sentence only before whitespace, and CJK ones that end it anyway.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’»)\]]*\s+|(?<=[。！？])")
_CLAUSE_END = re.compile(r"(?<=[,;:，；：、—–])\s*")
_SPACES = re.compile(r"\s+")
# Words after which a full stop is usually not a sentence end.
_ABBREVIATIONS = frozenset(
    ("mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "col", "lt", "sgt", "capt", "rev", "hon",
     "esq", "ltd", "co", "vs", "etc", "no", "vol", "fig", "approx", "mme", "mlle", "mgr", "sra", "dra",
     "sig", "dhr", "mevr")
)  # fmt: skip
_KEEP_SYMBOLS = frozenset("%&@#$€£¥+=<>/°")  # expanded by the tokenizer's cleaners, so worth keeping


def normalize_text(text: str) -> str:
    """NFC-normalise, drop control characters and pictographs (emoji), collapse whitespace."""
    text = unicodedata.normalize("NFC", text)
    kept: list[str] = []
    for ch in text:
        cat = unicodedata.category(ch)
        # Newlines, tabs, zero-width and control characters; pictographs (emoji) say nothing either.
        unspoken = ch.isspace() or cat.startswith("C") or (cat in ("So", "Sk") and ch not in _KEEP_SYMBOLS)
        kept.append(" " if unspoken else ch)
    return _SPACES.sub(" ", "".join(kept)).strip()


def is_speakable(text: str) -> bool:
    """True when ``text`` has at least one letter or digit (punctuation alone says nothing)."""
    return any(ch.isalnum() for ch in text)


def split_sentences(text: str, max_chars: int = DEFAULT_CHAR_LIMIT) -> list[str]:
    """Normalised sentences of at most ``max_chars`` characters each, in order; empty when nothing to say."""
    if max_chars < 8:
        raise ValueError("max_chars must be at least 8")
    sentences: list[str] = []
    for sentence in _sentences(normalize_text(text)):
        if len(sentence) <= max_chars:
            sentences.append(sentence)
        else:
            sentences.extend(_split_long(sentence, max_chars))
    return [s for s in sentences if is_speakable(s)]


def _sentences(text: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.start()
        candidate = text[start:end].strip()
        if not candidate or _ends_with_abbreviation(candidate) or _next_is_lowercase(text, match.end()):
            continue
        pieces.append(candidate)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        pieces.append(tail)
    return _attach_fragments(pieces)


def _ends_with_abbreviation(sentence: str) -> bool:
    if not sentence.endswith("."):
        return False
    last = sentence[:-1].rsplit(" ", 1)[-1].lower()
    return (len(last) == 1 and last.isalpha()) or last in _ABBREVIATIONS


def _next_is_lowercase(text: str, pos: int) -> bool:
    return pos < len(text) and text[pos].islower()


def _attach_fragments(pieces: list[str]) -> list[str]:
    """Glue pieces without a letter or digit ("...", "!!") onto the sentence before them."""
    out: list[str] = []
    for piece in pieces:
        if out and not is_speakable(piece):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """Pack clauses into pieces of at most ``max_chars``; wrap clauses that are longer on their own."""
    pieces: list[str] = []
    current = ""
    for clause in (c.strip() for c in _CLAUSE_END.split(sentence)):
        if not clause:
            continue
        if len(clause) > max_chars:
            if current:
                pieces.append(current)
                current = ""
            pieces.extend(textwrap.wrap(clause, width=max_chars, break_on_hyphens=False))
        elif not current:
            current = clause
        elif len(current) + 1 + len(clause) <= max_chars:
            current = f"{current} {clause}"
        else:
            pieces.append(current)
            current = clause
    if current:
        pieces.append(current)
    return pieces


def halve(piece: str) -> tuple[str, str]:
    """Split ``piece`` at the word boundary nearest its middle (for pieces that tokenise too long)."""
    middle = len(piece) // 2
    left = piece.rfind(" ", 0, middle + 1)
    right = piece.find(" ", middle)
    candidates = [i for i in (left, right) if i > 0]
    cut = min(candidates, key=lambda i: abs(i - middle)) if candidates else middle
    return piece[:cut].strip(), piece[cut:].strip()
