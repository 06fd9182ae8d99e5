"""Guild settings (defaults, partial updates, validation), voice shares and assistant opt-ins."""

from __future__ import annotations

import dataclasses

import pytest

from storage import GuildSettings, ProfileNotFound, Repositories
from tests.storage.factories import enroll

GUILD = 7_000_000_000_000_000_001
ADMIN, ALICE, BOB, CAROL = 8_000_000_000_000_000_001, 8_000_000_000_000_000_002, 8_000_000_000_000_000_003, 44


async def test_a_server_without_settings_gets_safe_defaults(repos: Repositories) -> None:
    settings = await repos.settings.get(GUILD)
    assert settings == GuildSettings(guild_id=GUILD)
    assert not settings.cloning_enabled and not settings.allow_sharing and settings.announce
    assert settings.voice_message_mode == "off" and settings.updated_at is None


async def test_updates_change_only_the_named_fields(repos: Repositories) -> None:
    first = await repos.settings.update(
        GUILD, updated_by=ADMIN, cloning_enabled=True, enroll_role_ids=[3, 1, 3], voice_message_mode="relay"
    )
    assert first.cloning_enabled and first.enroll_role_ids == (1, 3) and first.voice_message_mode == "relay"
    assert first.updated_by == ADMIN and first.updated_at is not None and first.updated_at.tzinfo is not None
    # The columns' server defaults are the dataclass defaults.
    untouched = dataclasses.replace(
        first,
        cloning_enabled=False,
        enroll_role_ids=(),
        voice_message_mode="off",
        updated_at=None,
        updated_by=None,
    )
    assert untouched == GuildSettings(guild_id=GUILD)
    second = await repos.settings.update(
        GUILD, updated_by=ALICE, retention_days=30, llm_system_prompt="Be brief.", cooldown_s=2
    )
    assert second.cloning_enabled and second.enroll_role_ids == (1, 3)  # untouched by the second update
    assert (second.retention_days, second.llm_system_prompt, second.cooldown_s) == (30, "Be brief.", 2.0)
    assert second.max_text_length == 300 and second.announce  # defaults of the row
    assert await repos.settings.get(GUILD) == second
    third = await repos.settings.update(GUILD, updated_by=ADMIN, retention_days=None, llm_system_prompt="")
    assert third.retention_days is None and third.llm_system_prompt is None
    audit = await repos.audit.recent(GUILD)
    assert [e.details["fields"] for e in audit][-1] == [
        "cloning_enabled",
        "enroll_role_ids",
        "voice_message_mode",
    ]
    assert all("Be brief." not in str(e.details) for e in audit)  # names, never values


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "blue"}, "unknown guild setting"),
        ({"guild_id": 5}, "unknown guild setting"),
        ({"cloning_enabled": "yes"}, "true or false"),
        ({"voice_message_mode": "shout"}, "voice_message_mode must be one of"),
        ({"speak_role_ids": "123"}, "list of Discord ids"),
        ({"speak_role_ids": [1, -2]}, "list of Discord ids"),
        ({"max_text_length": 0}, "max_text_length"),
        ({"cooldown_s": -1}, "cooldown_s"),
        ({"retention_days": 0}, "retention_days"),
        ({"assistant_voice_user_id": True}, "assistant_voice_user_id"),
        ({"llm_system_prompt": "x" * 4001}, "llm_system_prompt"),
        ({}, "at least one field"),
    ],
)
async def test_invalid_settings_are_refused(
    repos: Repositories, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await repos.settings.update(GUILD, updated_by=ADMIN, **changes)
    assert await repos.settings.get(GUILD) == GuildSettings(guild_id=GUILD)


async def test_sharing_a_voice(repos: Repositories) -> None:
    with pytest.raises(ProfileNotFound, match="/enroll"):
        await repos.shares.grant(GUILD, ALICE, BOB)
    await enroll(repos, GUILD, ALICE)
    with pytest.raises(ValueError, match="themselves"):
        await repos.shares.grant(GUILD, ALICE, ALICE)
    share = await repos.shares.grant(GUILD, ALICE, BOB)
    assert (share.guild_id, share.owner_user_id, share.grantee_user_id) == (GUILD, ALICE, BOB)
    assert await repos.shares.grant(GUILD, ALICE, BOB) == share  # idempotent
    await repos.shares.grant(GUILD, ALICE, CAROL)
    assert await repos.shares.is_shared(GUILD, ALICE, BOB)
    assert not await repos.shares.is_shared(GUILD, BOB, ALICE)
    assert not await repos.shares.is_shared(GUILD + 1, ALICE, BOB)
    assert [s.grantee_user_id for s in await repos.shares.granted(GUILD, ALICE)] == [BOB, CAROL]
    assert [s.owner_user_id for s in await repos.shares.received(GUILD, BOB)] == [ALICE]
    assert await repos.shares.revoke(GUILD, ALICE, BOB)
    assert not await repos.shares.revoke(GUILD, ALICE, BOB)
    assert not await repos.shares.is_shared(GUILD, ALICE, BOB)
    actions = [e.action for e in await repos.audit.recent(GUILD)]
    assert actions.count("voice.shared") == 2 and actions.count("voice.unshared") == 1


async def test_assistant_opt_in(repos: Repositories) -> None:
    assert not await repos.assistant.is_opted_in(GUILD, ALICE)
    assert await repos.assistant.opt_in(GUILD, ALICE)
    assert not await repos.assistant.opt_in(GUILD, ALICE)
    assert await repos.assistant.opt_in(GUILD, BOB)
    assert await repos.assistant.opted_in(GUILD) == [ALICE, BOB]
    assert await repos.assistant.opted_in(GUILD + 1) == []
    assert await repos.assistant.opt_out(GUILD, ALICE)
    assert not await repos.assistant.opt_out(GUILD, ALICE)
    assert await repos.assistant.opted_in(GUILD) == [BOB]


async def test_audit_append_and_recent(repos: Repositories) -> None:
    for i in range(5):
        await repos.audit.append(GUILD, "test.event", actor_id=ADMIN, subject_id=i + 1, details={"n": i})
    await repos.audit.append(GUILD + 1, "test.event", actor_id=None)
    recent = await repos.audit.recent(GUILD, limit=3)
    assert [e.details["n"] for e in recent] == [4, 3, 2]
    assert await repos.audit.count(GUILD) == 5
    with pytest.raises(ValueError):
        await repos.audit.recent(GUILD, limit=0)
    with pytest.raises(ValueError):
        await repos.audit.append(GUILD, "", actor_id=None)


async def test_voice_message_limits_are_per_server_and_validated(repos: Repositories) -> None:
    default = await repos.settings.get(GUILD)
    assert (default.voice_message_max_seconds, default.voice_message_max_mb) == (300, 25)
    changed = await repos.settings.update(
        GUILD, updated_by=ALICE, voice_message_max_seconds=60, voice_message_max_mb=8
    )
    assert (changed.voice_message_max_seconds, changed.voice_message_max_mb) == (60, 8)
    assert (await repos.settings.get(GUILD + 1)).voice_message_max_seconds == 300
    for bad in (
        {"voice_message_max_seconds": 0},
        {"voice_message_max_seconds": 4000},
        {"voice_message_max_mb": 1.5},
    ):
        with pytest.raises(ValueError, match="voice_message_max"):
            await repos.settings.update(GUILD, updated_by=ALICE, **bad)


async def test_read_aloud_channels_are_an_id_list(repos: Repositories) -> None:
    assert (await repos.settings.get(GUILD)).read_aloud_channel_ids == ()
    saved = await repos.settings.update(GUILD, updated_by=ADMIN, read_aloud_channel_ids=[9, 5, 9])
    assert saved.read_aloud_channel_ids == (5, 9) and saved.voice_message_channel_ids == ()
    assert (await repos.settings.get(GUILD)).read_aloud_channel_ids == (5, 9)
    with pytest.raises(ValueError, match="read_aloud_channel_ids must be a list of Discord ids"):
        await repos.settings.update(GUILD, updated_by=ADMIN, read_aloud_channel_ids="5")
