"""The command tree Discord would receive: every command present, every text within Discord's limits."""

from __future__ import annotations

from typing import Any

import discord

from bot.client import VoxcloneBot
from core.settings import load_settings

EXPECTED = {
    "enroll",
    "speak",
    "skip",
    "stop",
    "leave",
    "queue",
    "consent",
    "voice",
    "Enroll this voice message",
}


def _walk(payload: dict[str, Any]) -> list[dict[str, Any]]:
    items = [payload]
    for option in payload.get("options", []):
        items += _walk(option)
    return items


async def test_tree_payload_is_valid_for_discord() -> None:
    bot = VoxcloneBot(load_settings({}), commands_only=True)
    await bot.setup_hook()
    commands = bot.tree.get_commands()
    names = {c.name for c in commands}
    assert names >= EXPECTED, EXPECTED - names
    for command in commands:
        payload = command.to_dict(bot.tree)
        for item in _walk(payload):
            description = item.get("description", "")
            assert len(description) <= 100, (item["name"], description)
            if payload.get("type", 1) == 1:  # slash commands: lower-case names, 1-32 chars, a description
                assert item["name"] == item["name"].lower() and 1 <= len(item["name"]) <= 32
                assert description
    slash = [c for c in commands if isinstance(c, discord.app_commands.Command | discord.app_commands.Group)]
    assert all(c.guild_only for c in slash), [c.name for c in slash if not c.guild_only]
    await bot.close()
