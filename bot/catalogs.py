"""Keeping the message catalogs complete: extract every message, update each language, check them.

    python -m bot.catalogs update      # after changing messages: new ones appear untranslated
    python -m bot.catalogs add de      # start a new language (core/locales/de/LC_MESSAGES/voxclone.po)
    python -m bot.catalogs check       # what a catalog lacks; the tests fail on the same list

Messages come from the source (``tr``, ``ngettext``, ``pgettext``, ``N_``; Babel's extractor) and from
the command tree (names, descriptions, options, choices; ``bot.translator.command_messages``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from babel.core import UnknownLocaleError
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from bot.translator import NAME_CONTEXTS, SLASH_NAME, command_messages
from core.i18n import DOMAIN, LOCALES_DIR, SOURCE_LOCALE, available_locales, placeholders

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = ("core", "storage", "worker", "bot", "cogs")
KEYWORDS: Final = {"tr": None, "N_": None, "ngettext": (1, 2), "pgettext": ((1, "c"), 2)}
HEADER: Final = (
    "# voxclone's messages in {language}: translate each msgstr, keeping every {{placeholder}} as it is.\n"
    '# Command and option names (msgctxt "command name", "option name"): lower case, no spaces.'
)
LIMITS: Final = {"command description": 100, "option description": 100, "choice": 100}


def catalog_path(language: str) -> Path:
    return LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def source_messages(root: Path = ROOT) -> Catalog:
    """Every marked message in the packages' source, with the files it appears in."""
    return _extract(root)[0]


def untranslatable(root: Path = ROOT) -> list[str]:
    """Marked messages the extractor had to skip (an f-string inside ``tr``: write ``tr("{x}", x=...)``)."""
    return _extract(root)[1]


def _extract(root: Path) -> tuple[Catalog, list[str]]:
    catalog = Catalog(project="voxclone", domain=DOMAIN, locale=SOURCE_LOCALE)
    warnings = io.StringIO()  # Babel reports what it skips on stderr
    with contextlib.redirect_stderr(warnings):
        for package in PACKAGES:
            _extract_package(catalog, root, package)
    return catalog, [line.replace(str(root) + "/", "") for line in warnings.getvalue().splitlines() if line]


def _extract_package(catalog: Catalog, root: Path, package: str) -> None:
    for filename, lineno, message, comments, context in extract_from_dir(
        root / package,
        method_map=[("**.py", "python")],
        keywords=KEYWORDS,
        comment_tags=("TRANSLATORS:",),
        strip_comment_tags=True,
    ):
        catalog.add(
            message, locations=[(f"{package}/{filename}", lineno)], auto_comments=comments, context=context
        )


async def tree_messages() -> list[tuple[str, str]]:
    """The command tree's texts, from the tree the bot registers (no models, no network)."""
    from bot.client import VoxcloneBot  # the bot and its cogs only when the tree is wanted
    from core.settings import load_settings

    bot = VoxcloneBot(load_settings({}), commands_only=True)
    try:
        await bot.setup_hook()
        return await command_messages(bot.tree)
    finally:
        await bot.close()


def template(tree: Iterable[tuple[str, str]]) -> Catalog:
    """The catalog every language must translate: the source's messages and the command tree's."""
    catalog = source_messages()
    for context, text in tree:
        catalog.add(text, context=context, locations=[("command-tree", 0)])
    return catalog


def read_catalog(language: str) -> Catalog:
    with catalog_path(language).open("rb") as po:
        return read_po(po, locale=language, domain=DOMAIN)


def write_catalog(catalog: Catalog, language: str) -> Path:
    path = catalog_path(language)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as po:
        write_po(po, catalog, width=100, include_lineno=False, ignore_obsolete=True)
    return path


def update(tmpl: Catalog) -> list[Path]:
    """Bring every language's catalog up to the template (new messages empty, changed ones fuzzy)."""
    written = []
    for language in available_locales()[1:]:
        catalog = read_catalog(language)
        catalog.update(tmpl)
        written.append(write_catalog(catalog, language))
    return written


def add(tmpl: Catalog, language: str) -> Path:
    if catalog_path(language).exists():
        raise SystemExit(f"{catalog_path(language)} already exists: run `python -m bot.catalogs update`.")
    try:
        catalog = Catalog(
            project="voxclone",
            version="1",
            domain=DOMAIN,
            locale=language,
            fuzzy=False,
            header_comment=HEADER.format(language=language),
            last_translator="",
            language_team="",
        )
    except UnknownLocaleError:
        raise SystemExit(
            f"{language!r} is not a locale Babel knows: use a code like `de` or `pt_BR`."
        ) from None
    catalog.update(tmpl)
    return write_catalog(catalog, language)


def problems(tmpl: Catalog, language: str) -> list[str]:
    """What ``language``'s catalog lacks or gets wrong, one line per message; empty when complete."""
    catalog = read_catalog(language)
    found = []
    for wanted in tmpl:
        if not wanted.id:
            continue
        label = f"{language}: {_label(wanted)}"
        have = catalog.get(wanted.id, context=wanted.context)
        strings = _strings(have) if have is not None else []
        if have is None or not all(strings):
            found.append(f"{label}: no translation")
            continue
        if have.fuzzy:
            found.append(f"{label}: marked fuzzy (check it, then remove the fuzzy flag)")
            continue
        expected = set().union(*(placeholders(s) for s in _ids(wanted)))
        for text in strings:  # a plural form may leave a field out ("one voice"), never add one
            if placeholders(text) != expected and not (wanted.pluralizable and placeholders(text) < expected):
                found.append(
                    f"{label}: placeholders {sorted(placeholders(text))} instead of {sorted(expected)}"
                )
                break
        if wanted.context in NAME_CONTEXTS and not (
            SLASH_NAME.match(strings[0]) and strings[0] == strings[0].lower()
        ):
            found.append(f"{label}: {strings[0]!r} is not a valid command name (lower case, no spaces, 1-32)")
        limit = LIMITS.get(wanted.context or "")
        if limit and len(strings[0]) > limit:
            found.append(f"{label}: {len(strings[0])} characters, Discord allows {limit}")
    return found


def _ids(message: Message) -> list[str]:
    return list(message.id) if isinstance(message.id, tuple | list) else [message.id]


def _strings(message: Message) -> list[str]:
    strings = message.string if isinstance(message.string, tuple | list) else [message.string]
    return [text or "" for text in strings]


def _label(message: Message) -> str:
    text = _ids(message)[0]
    short = text if len(text) <= 60 else text[:57] + "..."
    return f"[{message.context}] {short!r}" if message.context else repr(short)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.catalogs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("update", help="add new messages to every catalog, mark changed ones fuzzy")
    sub.add_parser("check", help="list what each catalog lacks (exit 1 if anything)")
    new = sub.add_parser("add", help="start a catalog for a new language")
    new.add_argument("language", help="a locale code such as de, es or pt_BR")
    args = parser.parse_args(argv)
    tmpl = template(asyncio.run(tree_messages()))
    if args.action == "update":
        for path in update(tmpl):
            print(f"updated {path.relative_to(ROOT)}")
    elif args.action == "add":
        path = add(tmpl, args.language)
        print(f"created {path.relative_to(ROOT)}: translate every msgstr, then run the tests")
    else:
        found = untranslatable()
        found += [line for language in available_locales()[1:] for line in problems(tmpl, language)]
        print("\n".join(found) or f"{len(tmpl)} messages, every catalog complete")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
