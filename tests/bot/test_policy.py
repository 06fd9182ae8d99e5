"""The consent policy as a table: every way a voice may or may not be used."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bot.errors import (
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
from bot.policy import Actor, Policy, VoiceFacts

OWNER, OTHER, ROLE_OK, ROLE_X = 1, 2, 10, 11


@dataclass(frozen=True)
class Rules:
    cloning_enabled: bool = True
    enroll_role_ids: frozenset[int] = field(default_factory=frozenset)
    speak_role_ids: frozenset[int] = field(default_factory=frozenset)
    allow_sharing: bool = True
    max_text_length: int = 300
    cooldown_s: float = 0.0


def actor(uid: int = OWNER, roles: tuple[int, ...] = (), admin: bool = False) -> Actor:
    return Actor(uid, frozenset(roles), admin)


def voice(owner: int = OWNER, profile: bool = True, shared: bool = False) -> VoiceFacts:
    return VoiceFacts(owner, "Ada", profile, shared)


SPEAK_CASES = [
    # (who, rules, voice, expected error or None)
    ("own voice", actor(), Rules(), voice(), None),
    ("cloning off", actor(), Rules(cloning_enabled=False), voice(), CloningDisabled),
    ("cloning off beats admin", actor(admin=True), Rules(cloning_enabled=False), voice(), CloningDisabled),
    ("no profile yet", actor(), Rules(), voice(profile=False), NoVoiceProfile),
    ("other's voice, shared", actor(OTHER), Rules(), voice(shared=True), None),
    ("other's voice, not shared", actor(OTHER), Rules(), voice(), VoiceNotShared),
    ("admin can't bypass sharing", actor(OTHER, admin=True), Rules(), voice(), VoiceNotShared),
    ("shared but sharing off", actor(OTHER), Rules(allow_sharing=False), voice(shared=True), SharingDisabled),
    ("other without profile", actor(OTHER), Rules(), voice(profile=False, shared=True), NoVoiceProfile),
    (
        "speak role required, has it",
        actor(roles=(ROLE_OK,)),
        Rules(speak_role_ids=frozenset({ROLE_OK})),
        voice(),
        None,
    ),
    (
        "speak role required, lacks it",
        actor(roles=(ROLE_X,)),
        Rules(speak_role_ids=frozenset({ROLE_OK})),
        voice(),
        RoleNotAllowed,
    ),
    (
        "enroll role doesn't gate speaking",
        actor(),
        Rules(enroll_role_ids=frozenset({ROLE_OK})),
        voice(),
        None,
    ),
]


@pytest.mark.parametrize(
    ("who", "rules", "facts", "error"), [c[1:] for c in SPEAK_CASES], ids=[c[0] for c in SPEAK_CASES]
)
def test_speak(who: Actor, rules: Rules, facts: VoiceFacts, error: type[PolicyError] | None) -> None:
    policy = Policy()
    if error is None:
        policy.check_speak(who, rules, facts)
    else:
        with pytest.raises(error) as info:
            policy.check_speak(who, rules, facts)
        assert info.value.message.endswith((".", ")"))


ENROLL_CASES = [
    ("allowed", actor(), Rules(), None),
    ("off by default", actor(), Rules(cloning_enabled=False), CloningDisabled),
    (
        "role list, member has one",
        actor(roles=(ROLE_OK,)),
        Rules(enroll_role_ids=frozenset({ROLE_OK, 99})),
        None,
    ),
    (
        "role list, member has none",
        actor(roles=(ROLE_X,)),
        Rules(enroll_role_ids=frozenset({ROLE_OK})),
        RoleNotAllowed,
    ),
]


@pytest.mark.parametrize(
    ("who", "rules", "error"), [c[1:] for c in ENROLL_CASES], ids=[c[0] for c in ENROLL_CASES]
)
def test_enroll(who: Actor, rules: Rules, error: type[PolicyError] | None) -> None:
    if error is None:
        Policy().check_enroll(who, rules)
    else:
        with pytest.raises(error):
            Policy().check_enroll(who, rules)


def test_role_refusal_names_the_roles() -> None:
    with pytest.raises(RoleNotAllowed, match=f"<@&{ROLE_OK}>"):
        Policy().check_enroll(actor(), Rules(enroll_role_ids=frozenset({ROLE_OK})))


def test_admin_check() -> None:
    Policy().check_admin(actor(admin=True))
    with pytest.raises(NotAdmin, match="Manage Server"):
        Policy().check_admin(actor())


@pytest.mark.parametrize(
    ("text", "ok"), [("hello", True), ("", False), ("   ", False), ("x" * 300, True), ("x" * 301, False)]
)
def test_text_limits(text: str, ok: bool) -> None:
    if ok:
        Policy().check_text(text, Rules())
    else:
        with pytest.raises(TextRejected):
            Policy().check_text(text, Rules())


def test_cooldown_per_member_and_admin_exempt() -> None:
    now = [100.0]
    policy = Policy(now=lambda: now[0])
    rules = Rules(cooldown_s=10)
    policy.check_cooldown(5, actor(), rules)
    policy.record_spoke(5, actor())
    with pytest.raises(CooldownActive) as info:
        policy.check_cooldown(5, actor(), rules)
    assert info.value.retry_after_s == pytest.approx(10)
    policy.check_cooldown(5, actor(OTHER), rules)  # someone else is not slowed down
    policy.check_cooldown(6, actor(), rules)  # nor the same member in another server
    policy.record_spoke(5, actor(admin=True))
    policy.check_cooldown(5, actor(admin=True), rules)  # admins are exempt
    now[0] += 10.5
    policy.check_cooldown(5, actor(), rules)


SHARE_CASES = [
    # (name, rules, target, target is a bot, sharer has a voice, expected error or None)
    ("allowed", Rules(), OTHER, False, True, None),
    ("cloning off", Rules(cloning_enabled=False), OTHER, False, True, CloningDisabled),
    ("sharing off", Rules(allow_sharing=False), OTHER, False, True, SharingDisabled),
    ("with yourself", Rules(), OWNER, False, True, PolicyError),
    ("with a bot", Rules(), OTHER, True, True, PolicyError),
    ("no voice to share", Rules(), OTHER, False, False, NoVoiceProfile),
]


@pytest.mark.parametrize(
    ("rules", "target", "is_bot", "has_voice", "error"),
    [c[1:] for c in SHARE_CASES],
    ids=[c[0] for c in SHARE_CASES],
)
def test_share(
    rules: Rules, target: int, is_bot: bool, has_voice: bool, error: type[PolicyError] | None
) -> None:
    check = Policy().check_share
    if error is None:
        check(actor(), rules, target_id=target, target_is_bot=is_bot, has_profile=has_voice)
    else:
        with pytest.raises(error):
            check(actor(), rules, target_id=target, target_is_bot=is_bot, has_profile=has_voice)
