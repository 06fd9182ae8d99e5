"""Speaking in a cloned voice: the path every utterance takes (``/speak``, voice messages, the assistant).

:meth:`SpeakingService.say` checks the policy (cloning on, roles, own or shared voice, text limits,
cooldown), normalises the text, loads the voice and queues it on the server's player, which announces
whose cloned voice is speaking. :meth:`SpeakingService.assistant_voice` does the same checks once for an
assistant answer (the voice's owner must have opted in) and then queues its sentences as they arrive.
Nothing reaches the player without passing here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import discord

from bot.errors import NotInVoiceChannel, NoVoiceProfile
from bot.languages import TextLanguage, choose_language
from bot.player import GuildPlayer, Utterance
from bot.policy import Actor, Policy, ServerRules, VoiceFacts
from bot.replies import server_locale
from bot.text import NameResolver, normalize_for_speech
from core.i18n import tr, using_locale
from storage import GuildSettings, Repositories, StoredVoice
from worker.service import SpeechService
from worker.types import SpeechRequest

log = logging.getLogger("voxclone.speaking")

PlayerFactory = Callable[[discord.Guild], GuildPlayer]


@dataclass(frozen=True)
class Queued:
    utterance: Utterance
    position: int  # 0 = playing next
    channel: discord.VoiceChannel


def names_for(guild: discord.Guild) -> NameResolver:
    def member(uid: int) -> str | None:
        m = guild.get_member(uid)
        return m.display_name if m else None

    def role(rid: int) -> str | None:
        r = guild.get_role(rid)
        return r.name if r else None

    def channel(cid: int) -> str | None:
        c = guild.get_channel(cid)
        return c.name if c else None

    return NameResolver(member=member, role=role, channel=channel)


def member_voice_channel(member: discord.Member) -> discord.VoiceChannel:
    state = member.voice
    channel = state.channel if state else None
    if not isinstance(channel, discord.VoiceChannel):
        raise NotInVoiceChannel(tr("Join a voice channel first, then try again: I speak where you are."))
    return channel


def disclosure(guild: object, requester: str, owner: str | None, *, assistant: bool = False) -> str:
    """What the channel is told when a cloned voice speaks; ``owner`` None: the requester's own voice.

    A channel post, so in the server's language whoever asked.
    """
    with using_locale(server_locale(guild)):
        if assistant and owner is None:
            text = tr(
                "The assistant is answering {member} in their own cloned voice (AI-generated).",
                member=requester,
            )
        elif assistant:
            text = tr(
                "The assistant is answering {member} in {owner}'s cloned voice (AI-generated).",
                member=requester,
                owner=owner,
            )
        elif owner is None:
            text = tr("{member} is speaking in their own cloned voice (AI-generated).", member=requester)
        else:
            text = tr(
                "{member} is speaking in {owner}'s cloned voice (AI-generated).",
                member=requester,
                owner=owner,
            )
    return f"🔊 {text}"


class Players:
    """One :class:`GuildPlayer` per server, created on first use."""

    def __init__(self, speech: SpeechService, notify: Callable[[int, str], Awaitable[None]], **options: Any):
        self.speech = speech
        self.notify = notify
        self.options = options
        self._players: dict[int, GuildPlayer] = {}

    def get(self, guild: discord.Guild) -> GuildPlayer:
        player = self._players.get(guild.id)
        if player is None or player.guild is not guild:
            player = GuildPlayer(guild, self.speech, self.notify, **self.options)
            self._players[guild.id] = player
        return player

    def existing(self, guild_id: int) -> GuildPlayer | None:
        return self._players.get(guild_id)

    async def discard(self, guild_id: int) -> None:
        player = self._players.pop(guild_id, None)
        if player is not None:
            await player.close()

    async def close(self) -> None:
        for guild_id in list(self._players):
            await self.discard(guild_id)


@dataclass
class AssistantVoice:
    """A voice checked for one assistant answer: :meth:`say` queues each sentence as it arrives, in order."""

    speaking: SpeakingService
    requester: discord.Member
    owner: discord.Member | discord.User
    channel: discord.VoiceChannel
    text_channel_id: int
    rules: ServerRules
    announcement: str | None
    queued: list[Utterance] = field(default_factory=list)
    stopped: str | None = None  # why later sentences are not spoken (voice deleted meanwhile)

    async def say(self, sentence: str) -> Utterance | None:
        """Queue one sentence; None when it has nothing to say or the voice was deleted meanwhile."""
        if self.stopped is not None:
            return None
        guild = self.requester.guild
        spoken = normalize_for_speech(sentence, names_for(guild))
        if not spoken:
            return None
        self.speaking.policy.check_text(spoken, self.rules)
        # Re-read the voice for every sentence: a /voice delete in the middle of an answer wins.
        voice = await self.speaking.repos.profiles.get_voice(guild.id, self.owner.id)
        if voice is None:
            self.stopped = tr("the voice was deleted")
            return None
        utterance = Utterance(
            request=SpeechRequest(spoken, voice.profile.language, voice.embedding),
            requester_id=self.requester.id,
            voice_owner_id=self.owner.id,
            text_channel_id=self.text_channel_id,
            announcement=None if self.queued else self.announcement,
        )
        await self.speaking.players.get(guild).enqueue(self.channel, utterance)
        self.queued.append(utterance)
        return utterance


@dataclass(frozen=True)
class CheckedVoice:
    """A voice the policy allowed for one use (see :meth:`SpeakingService.check_voice`)."""

    actor: Actor
    rules: GuildSettings
    voice: StoredVoice
    spoken: str  # the text normalised for speech; "" when none was given


class SpeakingService:
    def __init__(
        self, repos: Repositories, policy: Policy, players: Players, languages: TextLanguage | None = None
    ) -> None:
        self.repos = repos
        self.policy = policy
        self.players = players
        self.languages = languages or TextLanguage()

    async def forget_voice(self, guild_id: int, owner_id: int) -> int:
        """A voice was deleted: drop its queued utterances and stop it if it is speaking. Returns how many."""
        player = self.players.existing(guild_id)
        if player is None:
            return 0
        return player.drop_voice(owner_id)

    async def forget_guild(self, guild_id: int) -> None:
        """A server's data was deleted: close its player (dropping its queue) and forget its cooldowns."""
        await self.players.discard(guild_id)
        self.policy.forget_guild(guild_id)

    async def check_voice(
        self,
        requester: discord.Member,
        owner: discord.Member | discord.User,
        text: str | None = None,
        *,
        for_assistant: bool = False,
    ) -> CheckedVoice:
        """The policy sequence before ``requester`` uses ``owner``'s voice here; raises at the first refusal.

        Cloning on and roles, an enrolled voice that is the requester's own or shared with them (for the
        assistant: whose owner opted in), then ``text`` (when given: normalised, then its length), then
        the cooldown. Nothing is recorded: the caller records the utterance once it is on its way
        (``policy.record_spoke``).
        """
        guild = requester.guild
        rules = await self.repos.settings.get(guild.id)
        actor = Actor.from_member(requester)
        voice = await self.repos.profiles.get_voice(guild.id, owner.id)
        others = owner.id != requester.id
        if for_assistant:
            opted_in = others and await self.repos.assistant.is_opted_in(guild.id, owner.id)
            facts = VoiceFacts(owner.id, owner.display_name, voice is not None, shared_with_actor=False)
            self.policy.check_assistant_voice(actor, rules, facts, owner_opted_in=opted_in)
        else:
            shared = others and await self.repos.shares.is_shared(guild.id, owner.id, requester.id)
            facts = VoiceFacts(owner.id, owner.display_name, voice is not None, shared)
            self.policy.check_speak(actor, rules, facts)
        spoken = ""
        if text is not None:
            spoken = normalize_for_speech(text, names_for(guild))
            self.policy.check_text(spoken, rules)
        self.policy.check_cooldown(guild.id, actor, rules)
        if voice is None:  # unreachable: check_speak refused; keeps the type checker honest
            raise NoVoiceProfile(tr("{name} has no enrolled voice in this server.", name=owner.display_name))
        return CheckedVoice(actor, rules, voice, spoken)

    async def say(
        self,
        requester: discord.Member,
        owner: discord.Member | discord.User,
        text: str,
        *,
        text_channel_id: int,
        channel: discord.VoiceChannel | None = None,
        language: str | None = None,
        disclose: bool = True,
    ) -> Queued:
        """Check everything, then queue ``text`` in ``owner``'s voice where ``requester`` is.

        ``language`` (an XTTS code or name) wins; without it the text's own language is detected, and
        the voice's enrolled language is the fallback. ``disclose=False`` leaves out the announcement
        (the read-aloud channel announces a member once per session, not once per message).
        """
        guild = requester.guild
        channel = channel or member_voice_channel(requester)
        checked = await self.check_voice(requester, owner, text)
        rules, actor, voice, spoken = checked.rules, checked.actor, checked.voice, checked.spoken
        player = self.players.get(guild)
        player.check_can_join(channel)
        spoken_in = await asyncio.to_thread(  # the detector's models load on first use
            choose_language,
            spoken,
            requested=language,
            voice_language=voice.profile.language,
            detector=self.languages,
        )
        announcement = None
        if rules.announce and disclose:
            whose = None if owner.id == requester.id else owner.display_name
            announcement = disclosure(guild, requester.display_name, whose)
        utterance = Utterance(
            request=SpeechRequest(spoken, spoken_in, voice.embedding),
            requester_id=requester.id,
            voice_owner_id=owner.id,
            text_channel_id=text_channel_id,
            announcement=announcement,
        )
        position = await player.enqueue(channel, utterance)
        self.policy.record_spoke(guild.id, actor)
        await self.repos.profiles.touch_last_used(guild.id, owner.id)
        log.info(
            "utterance queued",
            extra={"guild_id": guild.id, "user_id": requester.id, "owner_id": owner.id, "chars": len(spoken)},
        )
        return Queued(utterance, position, channel)

    async def assistant_voice(
        self,
        requester: discord.Member,
        owner: discord.Member | discord.User,
        *,
        text_channel_id: int,
        channel: discord.VoiceChannel | None = None,
    ) -> AssistantVoice:
        """Check once that the assistant may answer ``requester`` in ``owner``'s voice where they are.

        The checks of :meth:`say` (:meth:`check_voice`, then Connect/Speak), with the assistant's rule for
        the voice: the requester's own, or one whose owner opted in.
        """
        guild = requester.guild
        channel = channel or member_voice_channel(requester)
        checked = await self.check_voice(requester, owner, for_assistant=True)
        rules = checked.rules
        self.players.get(guild).check_can_join(channel)
        self.policy.record_spoke(guild.id, checked.actor)
        await self.repos.profiles.touch_last_used(guild.id, owner.id)
        announcement = None
        if rules.announce:
            whose = None if owner.id == requester.id else owner.display_name
            announcement = disclosure(guild, requester.display_name, whose, assistant=True)
        log.info(
            "assistant voice checked",
            extra={"guild_id": guild.id, "user_id": requester.id, "owner_id": owner.id},
        )
        return AssistantVoice(self, requester, owner, channel, text_channel_id, rules, announcement)
