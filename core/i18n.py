"""Every sentence voxclone says, in the reader's language, from gettext catalogs (``core/locales``).

Mark text with ``tr("Hello {name}", name=x)`` (translated into the current locale, then formatted),
``ngettext`` for counts, ``N_`` for text translated where it is used. The current locale is a context
variable that each edge sets: the command tree from ``interaction.locale``, channel posts from the
server's locale, the worker's HTTP app from ``Accept-Language``. ``make messages`` updates the catalogs.
"""

from __future__ import annotations

import contextlib
import gettext
import io
import re
import string
from collections.abc import Iterator
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Final

# Babel reads the catalogs (and extracts them: bot.catalogs); the standard library's gettext looks up.
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

SOURCE_LOCALE: Final = "en"  # the language the messages are written in
DOMAIN: Final = "voxclone"
LOCALES_DIR: Final = Path(__file__).with_name("locales")

_current: ContextVar[str] = ContextVar("voxclone_locale", default=SOURCE_LOCALE)


def available_locales() -> tuple[str, ...]:
    """The source language and every language with a catalog, e.g. ``("en", "fr")``."""
    found = sorted(p.parent.parent.name for p in LOCALES_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))
    return (SOURCE_LOCALE, *(name for name in found if name != SOURCE_LOCALE))


def resolve(tag: str | None) -> str:
    """The catalog for a locale tag (``"fr"``, ``"en-US"``, ``"pt_BR"``); the source language if none."""
    if not tag:
        return SOURCE_LOCALE
    known = available_locales()
    parts = re.split(r"[-_]", str(tag).strip())
    exact = "_".join([parts[0].lower(), *(p.upper() for p in parts[1:])])
    for candidate in (exact, parts[0].lower()):
        if candidate in known:
            return candidate
    return SOURCE_LOCALE


def current_locale() -> str:
    return _current.get()


def set_locale(tag: str | None) -> str:
    """Use ``tag``'s catalog for the rest of this task (each interaction and request runs in its own)."""
    locale = resolve(tag)
    _current.set(locale)
    return locale


@contextlib.contextmanager
def using_locale(tag: str | None) -> Iterator[str]:
    """Use ``tag``'s catalog inside the block only (e.g. a channel post in the server's language)."""
    token = _current.set(resolve(tag))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


@cache
def translations(locale: str) -> gettext.NullTranslations:
    """The compiled catalog for ``locale`` (fuzzy entries left out), read once per process."""
    path = LOCALES_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"
    if locale == SOURCE_LOCALE or not path.is_file():
        return gettext.NullTranslations()
    with path.open("rb") as po:
        catalog = read_po(po, locale=locale, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def tr(message: str, /, **params: object) -> str:
    """``message`` in the current locale, with ``{name}`` fields filled from ``params``."""
    text = translations(_current.get()).gettext(message)
    return text.format(**params) if params else text


def ngettext(singular: str, plural: str, n: int, /, **params: object) -> str:
    """The singular or plural form for ``n`` in the current locale; ``{n}`` is filled in too."""
    text = translations(_current.get()).ngettext(singular, plural, n)
    return text.format(n=n, **params)


def pgettext(context: str, message: str, /, locale: str | None = None) -> str:
    """``message`` in ``context`` (e.g. ``"command name"``), in ``locale`` or the current one."""
    return translations(locale or _current.get()).pgettext(context, message)


def N_(message: str, /) -> str:
    """Mark ``message`` for the catalogs without translating it here; ``tr(CONSTANT)`` translates later."""
    return message


def placeholders(text: str) -> set[str]:
    """The ``{name}`` fields of a message, to check that a translation keeps them all."""
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
