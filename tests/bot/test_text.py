"""Text normalisation for speech: every Discord construct becomes something worth saying."""

from __future__ import annotations

import pytest

from bot.text import NameResolver, normalize_for_speech

NAMES = NameResolver(
    member={111111111111111111: "Ada"}.get,
    role={222222222222222222: "Moderators"}.get,
    channel={333333333333333333: "general"}.get,
)


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("hi <@111111111111111111> and <@!111111111111111111>", "hi Ada and Ada"),
        ("ping <@&222222222222222222> in <#333333333333333333>", "ping Moderators in general"),
        ("who is <@999999999999999999>?", "who is someone?"),
        ("look https://example.com/a?b=c now", "look link now"),
        ("see <https://example.com>", "see link"),
        ("[the docs](https://example.com/docs) say so", "the docs say so"),
        ("**bold** *it* __under__ ~~gone~~ ||secret||", "bold it under gone secret"),
        ("***both*** and `code` here", "both and code here"),
        ("```py\nprint(1)\n```", "print(1)"),
        ("# Title\n> quoted\n- item", "Title quoted item"),
        ("nice <:party_parrot:123456789012345678>", "nice party parrot"),
        ("animated <a:wave:123456789012345678>!", "animated wave !"),
        ("at <t:1700000000:R>", "at a time"),
        ("I love it \u2764\ufe0f", "I love it heavy black heart"),
        ("snake_case_name stays", "snake_case_name stays"),
        (r"not \*bold\*", "not *bold*"),
        ("  lots\n\nof   space ", "lots of space"),
    ],
)
def test_normalize(raw: str, spoken: str) -> None:
    assert normalize_for_speech(raw, NAMES) == spoken
