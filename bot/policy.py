"""The one place that decides whether a voice may be used, by whom, and where.

Every speaking path (``/speak``, relay of voice messages, the assistant, previews) and every
enrolment goes through :class:`Policy`. The decisions are pure functions of the server settings,
the member and the stored consent facts, so they are tested as a table of cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from babel.numbers import format_decimal

from bot.errors import (
    NOT_ENROLLED,
    AssistantVoiceNotOptedIn,
    CloningDisabled,
    CooldownActive,
    NotAdmin,
    NoVoiceProfile,
    PolicyError,
    RoleNotAllowed,
    SharingDisabled,
    TextRejected,
    VoiceNotShared,
)
from core.i18n import N_, current_locale, tr

ENABLE_HINT = N_("A server admin can turn it on with `/consent set cloning:True`.")
CLONING_OFF = N_("Voice cloning is off in this server. {hint}")


class ServerRules(Protocol):
    """The server settings the policy reads (``storage.GuildSettings`` provides them)."""

    @property
    def cloning_enabled(self) -> bool: ...
    @property
    def enroll_role_ids(self) -> Collection[int]: ...
    @property
    def speak_role_ids(self) -> Collection[int]: ...
    @property
    def allow_sharing(self) -> bool: ...
    @property
    def max_text_length(self) -> int: ...
    @property
    def cooldown_s(self) -> float: ...


@dataclass(frozen=True)
class Actor:
    """Who is asking: enough of a ``discord.Member`` to decide."""

    user_id: int
    role_ids: frozenset[int]
    is_admin: bool  # Manage Server, Administrator or owner

    @classmethod
    def from_member(cls, member: object) -> Actor:
        perms = getattr(member, "guild_permissions", None)
        guild = getattr(member, "guild", None)
        is_owner = guild is not None and getattr(guild, "owner_id", None) == getattr(member, "id", None)
        return cls(
            user_id=int(getattr(member, "id", 0)),
            role_ids=frozenset(int(r.id) for r in getattr(member, "roles", [])),
            is_admin=bool(is_owner or (perms is not None and (perms.manage_guild or perms.administrator))),
        )


@dataclass(frozen=True)
class VoiceFacts:
    """What storage knows about the voice being asked for."""

    owner_id: int
    owner_name: str
    has_profile: bool
    shared_with_actor: bool


def _number(value: int) -> str:
    """A count as the reader writes it ("1,500" in English, "1 500" in French)."""
    return format_decimal(value, locale=current_locale())


def _role_list(role_ids: Collection[int]) -> str:
    return ", ".join(f"<@&{rid}>" for rid in sorted(role_ids))


def _check_gate(actor: Actor, rules: ServerRules, role_ids: Collection[int], refusal: str) -> None:
    """Cloning must be on, and the actor must hold one of ``role_ids`` when the list is not empty.

    ``refusal`` is the marked sentence (with ``{roles}``) that says who may, when the actor may not.
    """
    if not rules.cloning_enabled:
        raise CloningDisabled(tr(CLONING_OFF, hint=tr(ENABLE_HINT)))
    allowed = set(role_ids)
    if allowed and not (allowed & actor.role_ids):
        raise RoleNotAllowed(tr(refusal, roles=_role_list(allowed)))


class Policy:
    """Decisions; each ``check_*`` returns None or raises a ``PolicyError`` with what to do."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._last_spoke: dict[tuple[int, int], float] = {}
        self._now = now

    # ---- admin ------------------------------------------------------------------------------------

    def check_admin(self, actor: Actor) -> None:
        if not actor.is_admin:
            raise NotAdmin(
                tr("Only members with the Manage Server permission can change voice cloning settings.")
            )

    # ---- enrolment --------------------------------------------------------------------------------

    def check_enroll(self, actor: Actor, rules: ServerRules) -> None:
        _check_gate(
            actor,
            rules,
            rules.enroll_role_ids,
            N_("In this server only members with one of these roles can enroll a voice: {roles}."),
        )

    # ---- speaking ---------------------------------------------------------------------------------

    def _check_may_use_voices(self, actor: Actor, rules: ServerRules) -> None:
        _check_gate(
            actor,
            rules,
            rules.speak_role_ids,
            N_("In this server only members with one of these roles can use cloned voices: {roles}."),
        )

    def check_speak(self, actor: Actor, rules: ServerRules, voice: VoiceFacts) -> None:
        """May ``actor`` make the bot speak in ``voice`` here?"""
        self._check_may_use_voices(actor, rules)
        own = voice.owner_id == actor.user_id
        if not voice.has_profile:
            if own:
                raise NoVoiceProfile(tr(NOT_ENROLLED))
            raise NoVoiceProfile(tr("{name} has no enrolled voice in this server.", name=voice.owner_name))
        if own:
            return
        if not rules.allow_sharing:
            raise SharingDisabled(tr("This server doesn't allow speaking in other members' voices."))
        if not voice.shared_with_actor:
            raise VoiceNotShared(
                tr(
                    "{name} hasn't shared their voice with you. They can do that with `/voice share`.",
                    name=voice.owner_name,
                )
            )

    def check_assistant_voice(
        self, actor: Actor, rules: ServerRules, voice: VoiceFacts, *, owner_opted_in: bool
    ) -> None:
        """May the assistant answer ``actor`` in ``voice`` here?

        The asking member's own voice is theirs to use (as with ``/speak``); anyone else's voice only
        when its owner opted in with ``/voice assistant-optin``. Sharing settings do not apply.
        """
        self._check_may_use_voices(actor, rules)
        own = voice.owner_id == actor.user_id
        if not voice.has_profile:
            if own:
                raise NoVoiceProfile(
                    tr(
                        "You haven't enrolled a voice in this server yet, and the assistant answers in your "
                        "voice here: start with `/enroll`, or ask an admin to pick an assistant voice."
                    )
                )
            raise NoVoiceProfile(
                tr(
                    "The assistant voice, {name}, has no enrolled voice in this server. "
                    "An admin can choose another with `/consent assistant`.",
                    name=voice.owner_name,
                )
            )
        if not own and not owner_opted_in:
            raise AssistantVoiceNotOptedIn(
                tr(
                    "{name} hasn't allowed the assistant to use their voice "
                    "(they can with `/voice assistant-optin`). An admin can choose another assistant voice "
                    "with `/consent assistant`.",
                    name=voice.owner_name,
                )
            )

    def check_share(
        self, actor: Actor, rules: ServerRules, *, target_id: int, target_is_bot: bool, has_profile: bool
    ) -> None:
        """May ``actor`` share their voice with the target member here?"""
        if not rules.cloning_enabled:
            raise CloningDisabled(tr(CLONING_OFF, hint=tr(ENABLE_HINT)))
        if not rules.allow_sharing:
            raise SharingDisabled(
                tr(
                    "This server doesn't allow sharing voices. A server admin can allow it with "
                    "`/consent set sharing:True`."
                )
            )
        if target_id == actor.user_id:
            raise PolicyError(tr("You can always use your own voice: no need to share it with yourself."))
        if target_is_bot:
            raise PolicyError(tr("Voices can only be shared with members, not with bots."))
        if not has_profile:
            raise NoVoiceProfile(tr(NOT_ENROLLED))

    def check_text(self, text: str, rules: ServerRules) -> None:
        if not text.strip():
            raise TextRejected(
                tr("There is nothing to say: the message is empty once links and formatting are removed.")
            )
        if len(text) > rules.max_text_length:
            raise TextRejected(
                tr(
                    "That message is {length} characters; this server's limit is {limit}. "
                    "Shorten it or split it in two.",
                    length=_number(len(text)),
                    limit=_number(rules.max_text_length),
                )
            )

    def check_cooldown(self, guild_id: int, actor: Actor, rules: ServerRules) -> None:
        """Per-member cooldown between utterances; admins are exempt."""
        if rules.cooldown_s <= 0 or actor.is_admin:
            return
        last = self._last_spoke.get((guild_id, actor.user_id))
        now = self._now()
        if last is not None and now - last < rules.cooldown_s:
            wait = rules.cooldown_s - (now - last)
            raise CooldownActive(
                tr("Slow down a little: you can speak again in {seconds} s.", seconds=round(wait)),
                retry_after_s=wait,
            )

    def record_spoke(self, guild_id: int, actor: Actor) -> None:
        self._last_spoke[(guild_id, actor.user_id)] = self._now()

    def forget_guild(self, guild_id: int) -> None:
        for key in [k for k in self._last_spoke if k[0] == guild_id]:
            del self._last_spoke[key]
