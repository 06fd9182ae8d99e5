"""What the bot's services say, in French: to a French member (the current locale) and, for what is
posted in a channel, in the server's language whoever asked. English is the source: the other tests
check it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import discord
import numpy as np
import pytest

from bot import shutdown
from bot.assistant import AssistantClient, LLMConfig
from bot.enrollment import PREVIEW_TEXT, STAGE_TEXT, consent_statement, preview_text
from bot.errors import (
    AssistantRefused,
    CloningDisabled,
    MissingVoicePermissions,
    NotAdmin,
    NotInVoiceChannel,
    NoVoiceProfile,
    QueueFull,
    RoleNotAllowed,
    TextRejected,
)
from bot.languages import language_choices, language_name, resolve
from bot.player import GuildPlayer, Utterance
from bot.policy import Actor, Policy, VoiceFacts
from bot.replies import server_locale
from bot.speaking import disclosure, member_voice_channel
from bot.voice_messages import Answer, Heard, answer_reply, transcript_reply
from core.i18n import current_locale, tr, using_locale
from storage import GuildSettings
from worker.errors import SpeechError, UnsupportedLanguage
from worker.types import SpeechRequest, VoiceEmbedding

MEMBER = Actor(user_id=1, role_ids=frozenset(), is_admin=False)
ON = GuildSettings(guild_id=10, cloning_enabled=True, allow_sharing=True, max_text_length=1000)


def guild_in(locale: discord.Locale, **extra: Any) -> Any:
    return SimpleNamespace(id=10, preferred_locale=locale, **extra)


# ---- refusals, to the member -----------------------------------------------------------------------


def test_policy_refusals_in_french() -> None:
    policy = Policy()
    with using_locale("fr"):
        with pytest.raises(NotAdmin) as admin:
            policy.check_admin(MEMBER)
        with pytest.raises(CloningDisabled) as off:
            policy.check_enroll(MEMBER, GuildSettings(guild_id=10))
        with pytest.raises(NoVoiceProfile) as none:
            policy.check_speak(MEMBER, ON, VoiceFacts(2, "Ada", has_profile=False, shared_with_actor=False))
        with pytest.raises(TextRejected) as long:
            policy.check_text("x" * 1500, ON)
    assert admin.value.message == (
        "Seuls les membres ayant la permission Gérer le serveur peuvent modifier les réglages du clonage "
        "de voix."
    )
    assert off.value.message.startswith("Le clonage de voix est désactivé sur ce serveur. Un administrateur")
    assert none.value.message == "Ada n'a pas de voix enregistrée sur ce serveur."
    assert "1\u202f500 caractères" in long.value.message  # French digit grouping
    with pytest.raises(TextRejected, match="is 1,500 characters"):  # and English outside the block
        policy.check_text("x" * 1500, ON)


def test_a_role_refusal_names_the_roles_in_french() -> None:
    rules = replace(ON, speak_role_ids=(77,))
    with using_locale("fr"), pytest.raises(RoleNotAllowed) as refused:
        Policy().check_speak(MEMBER, rules, VoiceFacts(1, "me", has_profile=True, shared_with_actor=False))
    assert refused.value.message == (
        "Sur ce serveur, seuls les membres ayant l'un de ces rôles peuvent utiliser les voix clonées : "
        "<@&77>."
    )


def test_not_in_voice_in_french() -> None:
    member: Any = SimpleNamespace(voice=None)
    with using_locale("fr"), pytest.raises(NotInVoiceChannel, match="Rejoignez d'abord un salon vocal"):
        member_voice_channel(member)


def test_assistant_http_refusal_in_french() -> None:
    client = AssistantClient(LLMConfig("http://llm.invalid/v1", "m"))
    response: Any = SimpleNamespace(status_code=503)
    with using_locale("fr"), pytest.raises(AssistantRefused) as refused:
        client._check_status(response)
    assert refused.value.message == (
        "Le serveur de l'assistant a rencontré un problème (HTTP 503). Réessayez dans une minute."
    )
    asyncio.run(client.aclose())


# ---- enrolment -------------------------------------------------------------------------------------


def test_the_consent_statement_in_french() -> None:
    expires = datetime(2026, 12, 4, 21, 0, tzinfo=UTC)
    with using_locale("fr"):
        text = consent_statement("le ciel est bleu ce matin", "Les Amis", 30, expires)
        forever = consent_statement("le ciel est bleu", "Les Amis", None, expires)
        stage = tr(STAGE_TEXT["cloning"])
    assert text.startswith("**Enregistrer votre voix sur Les Amis**\n")
    assert "> le ciel est bleu ce matin\n" in text
    assert "ou 30 jours après sa dernière utilisation. Quitter le serveur" in text
    assert f"La phrase expire <t:{int(expires.timestamp())}:R>" in text
    assert "`/voice delete`" in text and "**Applications → Enregistrer ma voix avec ce message**" in text
    assert "**Pendant combien de temps :** jusqu'à ce que vous la supprimiez. Quitter" in forever
    assert stage == "Clonage de votre voix…"
    english = consent_statement("the sky is blue", "Friends", 1, expires)
    assert "or 1 day after it was last used" in english and english.startswith("**Enroll your voice in")


def test_the_preview_is_in_the_language_it_is_spoken_in() -> None:
    with using_locale("fr"):  # a French member, an English voice: the sentence must be English
        assert preview_text("en") == PREVIEW_TEXT
    assert preview_text("fr") == "Bonjour ! Voici comment sonne ma voix clonée sur ce serveur."


# ---- languages -------------------------------------------------------------------------------------


def test_language_names_come_from_babel_in_the_readers_language() -> None:
    with using_locale("fr"):
        names = {choice.value: choice.name for choice in language_choices("")}
        assert names["fr"] == "français (fr)" and names["de"] == "allemand (de)"
        assert names["zh-cn"] == "chinois (zh-cn)"
        assert [c.value for c in language_choices("allem")] == ["de"]
        assert [c.value for c in language_choices("German")] == ["de"]  # English names still match
        assert [c.value for c in language_choices("neerl")] == ["nl"]  # accents optional
        assert resolve("allemand") == "de" and resolve("Français") == resolve("francais") == "fr"
        with pytest.raises(UnsupportedLanguage) as unknown:
            resolve("klingon")
        assert unknown.value.message.startswith(
            "Je ne sais pas parler « klingon ». Choisissez parmi : anglais,"
        )
        assert unknown.value.message.endswith(" et hindi.")
    assert language_name("de") == "German" and language_name("jw") == "jw"  # unknown: the code


def test_the_transcript_reply_in_french() -> None:
    with using_locale("fr"):
        reply = transcript_reply(Heard("bonjour à tous", "de", 4.0))
        answer = answer_reply(Answer(Heard("q", "fr", 1.0), "Oui.", cut=True))
    assert reply.startswith("🎙️ **Transcription** (allemand, ") and reply.endswith(") :\n>>> bonjour à tous")
    assert "*(coupé à la fin d'une phrase" in answer


# ---- channel posts: the server's language ----------------------------------------------------------


def test_server_locale_reads_the_guilds_preferred_locale() -> None:
    assert server_locale(guild_in(discord.Locale.french)) == "fr"
    assert server_locale(SimpleNamespace()) is None and server_locale(None) is None


def test_announcements_are_in_the_servers_language_whoever_asked() -> None:
    french_guild, english_guild = guild_in(discord.Locale.french), guild_in(discord.Locale.american_english)
    with using_locale("en"):  # an English member, a French server
        own = disclosure(french_guild, "ada", None)
        other = disclosure(french_guild, "bob", "ada")
        assistant = disclosure(french_guild, "bob", "ada", assistant=True)
    assert own == "🔊 ada parle avec sa propre voix clonée (générée par IA)."
    assert other == "🔊 bob parle avec la voix clonée de ada (générée par IA)."
    assert assistant == "🔊 L'assistant répond à bob avec la voix clonée de ada (générée par IA)."
    with using_locale("fr"):  # a French member, an English server
        english = disclosure(english_guild, "ada", None, assistant=True)
        assert current_locale() == "fr"  # the member's replies are still French afterwards
    assert english == "🔊 The assistant is answering ada in their own cloned voice (AI-generated)."


async def test_restart_notices_are_in_each_servers_language() -> None:
    channels = {
        1: SimpleNamespace(guild=guild_in(discord.Locale.french)),
        2: SimpleNamespace(guild=guild_in(discord.Locale.british_english)),
    }
    posted: dict[int, str] = {}

    async def post(channel_id: int, text: str) -> None:
        posted[channel_id] = text

    bot: Any = SimpleNamespace(get_channel=channels.get, post=post)
    with using_locale("fr"):
        await shutdown._tell(bot, {1, 2, 3})  # 3: a channel the cache no longer has
    assert (
        posted[1]
        == "voxclone redémarre, j'ai donc arrêté de parler ici. Renvoyez votre message dans une minute."
    )
    assert posted[2] == posted[3] == shutdown.RESTART_NOTICE


# ---- the player ------------------------------------------------------------------------------------


def _channel(connect: bool = True, speak: bool = True) -> Any:
    perms = SimpleNamespace(connect=connect, speak=speak)
    return SimpleNamespace(id=5, mention="<#5>", permissions_for=lambda me: perms)


def _player(locale: discord.Locale, speech: Any = None, notify: Any = None, **options: Any) -> GuildPlayer:
    guild: Any = guild_in(locale, me=object(), voice_client=None)
    return GuildPlayer(guild, speech, notify, **options)


def test_player_refusals_are_in_the_members_language() -> None:
    player = _player(discord.Locale.american_english, max_queue=0)
    with using_locale("fr"):
        with pytest.raises(MissingVoicePermissions) as missing:
            player.check_can_join(_channel(connect=False, speak=False))
        with pytest.raises(QueueFull, match=r"La file d'attente de ce serveur est pleine \(0 message\)"):
            asyncio.run(player.enqueue(_channel(), _utterance()))
    assert missing.value.message.startswith(
        "Je ne peux pas parler dans <#5> : il me manque les permissions Se connecter et Parler."
    )
    with pytest.raises(MissingVoicePermissions, match="missing the Speak permission there"):
        player.check_can_join(_channel(speak=False))


def _utterance() -> Utterance:
    embedding = VoiceEmbedding("test", np.zeros((1, 2, 4), np.float32), np.zeros((1, 4, 1), np.float32))
    return Utterance(SpeechRequest("hello", "en", embedding), 1, 1, text_channel_id=42)


async def test_a_late_player_error_is_posted_in_the_servers_language() -> None:
    """The player's task was started by an English member's command; the server is French."""

    class FailingSpeech:
        def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
            async def stream() -> AsyncIterator[bytes]:
                raise SpeechError(f"the engine stopped ({current_locale()})")  # made in the player's task
                yield b""

            return stream()

    posted: list[tuple[int, str]] = []

    async def notify(channel_id: int, text: str) -> None:
        posted.append((channel_id, text))

    player = _player(discord.Locale.french, FailingSpeech(), notify, idle_timeout_s=0.05)
    with using_locale("en"):
        item = _utterance()
        await player.enqueue(_channel(), item)
        await asyncio.wait_for(item.finished.wait(), 5)
    assert posted == [(42, "Je n'ai pas pu finir de parler : the engine stopped (fr)")]
    assert current_locale() == "en"  # the player's language stayed in its task
    await player.close()
