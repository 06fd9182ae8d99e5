"""A French server and French members, through the whole bot: every reply the cogs build is French.

Interactions carry the member's client language (``harness.locale``); posts without an interaction (voice
messages, read-aloud replies) use the server's (``Guild.preferred_locale``). The English tests elsewhere
are the other half: the same commands, unchanged, for an English client.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
import pytest_asyncio

from cogs.voice import CANCEL_ID, CONFIRM_ID
from core.i18n import set_locale
from storage import ProfileNotFound
from tests.cogs.conftest import World, dump, open_world, wait_for
from tests.cogs.test_read_aloud import post
from tests.cogs.test_read_aloud import replies as read_aloud_replies
from tests.cogs.test_voice import click, prompt
from tests.cogs.test_voice_messages import deliver, message_with, mode, replies
from tests.support.discord_harness import Recorded
from tests.support.voices import embed_espeak, store_voice
from worker.local import LocalSpeechService
from worker.types import EmbeddingResult

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def voice(speech: LocalSpeechService, tmp_path_factory: pytest.TempPathFactory) -> EmbeddingResult:
    return await embed_espeak(speech, tmp_path_factory.mktemp("french"))


@pytest_asyncio.fixture(loop_scope="session")
async def fr(speech: LocalSpeechService, tmp_path: Path) -> AsyncIterator[World]:
    """A French-speaking server whose members' Discord is in French; Message Content intent on."""
    async with open_world(speech, tmp_path, MESSAGE_CONTENT_INTENT="true") as world:
        world.harness.locale = "fr"
        world.fx.guild.preferred_locale = discord.Locale.french
        yield world


def text_of(call: Recorded) -> str:
    """Everything a member reads in a reply: content, embed titles, descriptions, fields, footers."""
    footers = [(e.get("footer") or {}).get("text") or "" for e in call.embeds]
    return "\n".join([call.text, *footers])


def english_free(text: str, *sentences: str) -> None:
    for sentence in sentences:
        assert sentence not in text, f"English {sentence!r} in: {text}"


async def say(world: World, member: discord.Member, command: str, options: dict[str, Any] | None = None,
              **kwargs: Any) -> Recorded:  # fmt: skip
    await world.harness.slash(world.fx, member, command, options or {}, **kwargs)
    return world.harness.responses()[-1]


async def test_a_french_member_goes_through_the_commands_in_french(fr: World, voice: EmbeddingResult) -> None:
    h, fx, gid = fr.harness, fr.fx, fr.fx.guild.id

    # An admin turns cloning on: the reply and the settings embed are French.
    saved = await say(fr, fr.admin, "consent set", {"cloning": True, "sharing": True, "cooldown": 60})
    text = text_of(saved)
    assert "Enregistré." in text and "Réglages du clonage de voix" in text, text
    assert "Clonage" in text and "activé" in text and "Qui peut enregistrer sa voix" in text
    assert "tout le monde" in text and "60 s par membre" in text
    english_free(text, "Saved.", "Voice cloning settings", "Who may enroll", "everyone", "per member")
    nothing = await say(fr, fr.admin, "consent set")
    assert nothing.text == "Rien à modifier : indiquez au moins une option."

    # Nothing stored yet.
    status = text_of(await say(fr, fr.ada, "voice status"))
    assert "Vos données vocales sur" in status and "Vous n'avez pas de voix clonée sur ce serveur" in status
    english_free(status, "Your voice data", "You have no cloned voice", "shared with you")
    assert (await say(fr, fr.bob, "voice delete")).text == "Rien n'est stocké sur vous sur ce serveur."

    # Enrolment: a phrase, then a file that is not audio: the intake's refusal, in French.
    await say(fr, fr.ada, "enroll")
    junk = h.attachment("phrase.ogg", b"<html>not audio</html>" * 20, "audio/ogg", duration_s=5.0)
    refused = await say(fr, fr.ada, "enroll", attachments={"clip": junk})
    assert "Ce fichier n'est pas un audio que je sais lire. Envoyez un message vocal" in refused.text, dump(
        fr
    )
    english_free(refused.text, "not audio I can read", "Send a voice message")

    # A stored voice: the status embed.
    await store_voice(fr.bot.repos, gid, fr.ada.id, voice)
    status = text_of(await say(fr, fr.ada, "voice status"))
    for french in ("Enregistrée", "Dernière utilisation", "jamais", "jusqu'à ce que vous la supprimiez",
                   "Consentements enregistrés", "Parole utilisée", "Qualité", "niveau", "bruit",
                   "Vous partagez votre voix avec", "personne", "L'assistant peut utiliser votre voix", "non",
                   "/voice export télécharge tout"):  # fmt: skip
        assert french in status, (french, status)
    english_free(status, "Last used", "never", "until you delete it", "Speech used", "nobody", "downloads")
    assert re.search(r"Parole utilisée.*\d,\d s", status, re.S), status  # a French decimal comma

    # Sharing.
    shared = await say(fr, fr.ada, "voice share", users={"member": fr.bob})
    assert "peut désormais parler avec votre voix ici" in shared.text
    english_free(shared.text, "can now speak", "Undo it")

    # /speak and the player's controls: refusals and answers.
    assert (
        await say(fr, fr.ada, "skip")
    ).text == "Je ne suis dans aucun salon vocal de ce serveur pour le moment."
    assert (await say(fr, fr.ada, "queue")).text == "Rien en file d'attente."
    h.join_voice(fx, fr.ada.id)
    spoken = await say(fr, fr.ada, "speak", {"text": "Bonjour."})
    assert spoken.text.startswith("Je parle dans <#"), dump(fr)
    elsewhere = await say(fr, fr.bob, "skip")  # Bob is not in the bot's voice channel
    assert elsewhere.text.startswith("Rejoignez <#") and "pour contrôler ce que j'y dis" in elsewhere.text
    player = fr.bot.players.existing(gid)
    assert player is not None
    await wait_for(lambda: player.current is None and not player.queue, timeout=120)

    # /voice delete: the question, its buttons, someone else pressing, cancelling, then deleting.
    await say(fr, fr.ada, "voice delete")
    question = h.responses()[-1]
    assert "**Supprimer vos données vocales sur" in question.text and "votre voix clonée" in question.text
    assert "Ces boutons restent actifs 60 s." in question.text
    english_free(question.text, "Delete your voice data", "This removes", "These buttons")
    labels = [b["label"] for row in _components(question) for b in row["components"]]
    assert labels == ["Tout supprimer", "Annuler"], labels
    message, ids = prompt(fr)
    assert ids == [CONFIRM_ID, CANCEL_ID]
    not_yours = await click(fr, fr.bob, CONFIRM_ID, message)
    assert "Ces boutons appartiennent au membre qui a lancé `/voice delete`" in not_yours
    assert await click(fr, fr.ada, CANCEL_ID, message) == "Annulé : rien n'a été supprimé."

    await say(fr, fr.ada, "voice delete")
    message, _ = prompt(fr)
    deleted = await click(fr, fr.ada, CONFIRM_ID, message)
    assert deleted.startswith("Supprimé : votre voix clonée (") and "1 partage de voix" in deleted, deleted
    assert "Rien d'autre sur votre voix n'est conservé sur ce serveur" in deleted
    english_free(deleted, "Deleted", "Nothing else", "voice share")
    assert await fr.bot.repos.profiles.get(gid, fr.ada.id) is None

    # A prompt left unanswered says so in French (the view's own timer task).
    await store_voice(fr.bot.repos, gid, fr.ada.id, voice)
    cog = fr.bot.get_cog("Voice")
    assert cog is not None
    cog.confirm_timeout_s = 0.2  # type: ignore[attr-defined]
    set_locale("en")  # the harness runs commands in the test's task: the view must not rely on it
    await say(fr, fr.ada, "voice delete")
    await wait_for(lambda: "Pas de réponse à temps" in h.last_text(), timeout=5)
    assert h.last_text().startswith("Pas de réponse à temps : rien n'a été supprimé."), dump(fr)

    # The admin's audit log, French too.
    audit = text_of(await say(fr, fr.admin, "consent audit"))
    assert "Journal du clonage de voix" in audit and "a modifié les réglages" in audit, audit
    english_free(audit, "audit log", "changed settings")


def _components(call: Recorded) -> list[dict[str, Any]]:
    data = (call.payload or {}).get("data", call.payload) or {}
    return list(data.get("components") or [])


async def test_voice_messages_are_answered_in_the_servers_language(fr: World) -> None:
    """No interaction: the listener answers in the server's language, whatever the author's client."""
    await mode(fr, "transcribe")
    set_locale("en")  # the harness runs commands in the test's task: the listener must set French itself
    junk = message_with(fr, fr.bob.id, b"<html>not audio</html>" * 20, "song.mp3", "audio/mpeg", voice=False,
                        duration_s=None)  # fmt: skip
    await deliver(fr, junk)
    reply = replies(fr)[-1].content
    assert reply == (
        "Ce fichier n'est pas un audio que je sais lire. "
        "Envoyez un message vocal ou un fichier mp3/ogg/m4a/wav."
    ), dump(fr)

    # The same server switched to English: the same refusal in English.
    fr.fx.guild.preferred_locale = discord.Locale.american_english
    again = message_with(fr, fr.bob.id, b"<html>not audio</html>" * 20, "song.mp3", "audio/mpeg", voice=False,
                         duration_s=None)  # fmt: skip
    await deliver(fr, again)
    assert replies(fr)[-1].content.startswith("That file is not audio I can read."), dump(fr)


async def test_read_aloud_refusals_are_in_the_servers_language(fr: World, voice: EmbeddingResult) -> None:
    h, fx = fr.harness, fr.fx
    await fr.enable_cloning(cooldown=0)
    await h.slash(fx, fr.admin, "consent read-aloud", channels={"channel": fx.text_channel})
    await store_voice(fr.bot.repos, fx.guild.id, fr.ada.id, voice)
    h.join_voice(fx, fr.ada.id)
    await h.slash(fx, fr.ada, "join")
    joined = h.last_text()
    assert joined.startswith("J'ai rejoint <#") and "sont lus avec leur propre voix clonée" in joined, joined

    async def refuse(*_: Any, **__: Any) -> Any:  # a refusal built below the cog, at the time it happens
        raise ProfileNotFound()

    fr.bot.speaking.say = refuse  # type: ignore[method-assign]
    set_locale("en")  # the harness runs commands in the test's task: the listener must set French itself
    await post(fr, fr.ada.id, "Bonjour tout le monde")
    assert read_aloud_replies(fr)[-1] == (
        "Vous n'avez pas encore de voix clonée sur ce serveur : commencez par /enroll."
    ), dump(fr)
