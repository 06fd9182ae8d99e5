"""Every catalog has every message, the source's and the command tree's, checked as Discord would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po

from bot import catalogs
from bot.client import VoxcloneBot
from bot.translator import command_messages
from core.i18n import available_locales
from core.settings import load_settings


@pytest.fixture(scope="module")
def template() -> Any:
    import asyncio

    return catalogs.template(asyncio.run(catalogs.tree_messages()))


def test_there_is_a_french_catalog() -> None:
    assert available_locales() == ("en", "fr")


@pytest.mark.parametrize("language", available_locales()[1:])
def test_every_catalog_is_complete(template: Any, language: str) -> None:
    problems = catalogs.problems(template, language)
    assert not problems, "run `python -m bot.catalogs update`, then translate:\n" + "\n".join(problems)


def test_a_missing_message_is_reported(
    template: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: drop one reply and one command name from a copy of the French catalog."""
    monkeypatch.setattr(catalogs, "LOCALES_DIR", tmp_path)
    source = Path(catalogs.__file__).resolve().parent.parent / "core/locales/fr/LC_MESSAGES/voxclone.po"
    with source.open("rb") as po:
        catalog = read_po(po, locale="fr")
    catalog.delete("This command only works inside a server.")
    catalog.get("speak", context="command name").string = "Parle Vite"  # not a valid slash name
    catalogs.write_catalog(catalog, "fr")
    problems = catalogs.problems(template, "fr")
    assert any("'This command only works inside a server.': no translation" in p for p in problems), problems
    assert any("'Parle Vite' is not a valid command name" in p for p in problems), problems


def test_the_template_holds_replies_and_commands(template: Any) -> None:
    assert template.get("This command only works inside a server.") is not None
    assert template.get("speak", context="command name") is not None
    assert template.get("Enroll this voice message", context="menu name") is not None
    assert template.get("{n} byte") is not None  # plurals are extracted with their plural form


async def test_french_clients_see_french_commands_in_the_synced_payload() -> None:
    bot = VoxcloneBot(load_settings({}), commands_only=True)
    await bot.setup_hook()
    try:
        translator = bot.tree.translator
        assert translator is not None
        payloads = {
            c.name: await c.get_translated_payload(bot.tree, translator) for c in bot.tree.get_commands()
        }
        assert payloads["speak"]["name_localizations"]["fr"] == "parler"
        assert (
            "en-US" not in payloads["speak"]["name_localizations"]
        )  # English is the default, not a translation
        assert payloads["speak"]["description_localizations"]["fr"].startswith("Dire")
        options = {o["name"]: o for o in payloads["speak"]["options"]}
        assert options["text"]["name_localizations"]["fr"] == "texte"
        assert (
            payloads["Enroll this voice message"]["name_localizations"]["fr"]
            == "Enregistrer ma voix avec ce message"
        )
        consent = {o["name"]: o for o in payloads["consent"]["options"]}
        roles = {o["name"]: o for o in consent["roles"]["options"]}
        kind = {c["value"]: c for c in roles["kind"]["choices"]}
        assert kind["enroll"]["name_localizations"]["fr"] == "enregistrer sa voix"
        assert kind["enroll"]["value"] == "enroll"  # values stay as the code knows them
        for payload in payloads.values():  # French names are unique among their siblings
            names = [o.get("name_localizations", {}).get("fr", o["name"]) for o in payload.get("options", [])]
            assert len(names) == len(set(names)), (payload["name"], names)
        assert len(await command_messages(bot.tree)) > 100
    finally:
        await bot.close()


def test_no_marked_message_is_skipped() -> None:
    assert catalogs.untranslatable() == []


def test_an_f_string_inside_tr_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot" / "late.py").write_text('from core.i18n import tr\nx = 1\nTEXT = tr(f"{x} voices")\n')
    for package in catalogs.PACKAGES[:-1]:
        (tmp_path / package).mkdir(exist_ok=True)
    (tmp_path / "cogs").mkdir()
    found = catalogs.untranslatable(tmp_path)
    assert len(found) == 1 and found[0].startswith("bot/late.py:3:"), found
