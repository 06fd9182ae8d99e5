"""The voxclone Discord bot: settings, ``build_bot()``, the command tree, playback and policy.

``Settings`` and ``build_bot`` are imported lazily so that torch-free tools (the audio intake, the
command line) can import ``bot.*`` modules without pulling in discord.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.client import VoxcloneBot, build_bot
    from core.settings import Settings

__all__ = ["Settings", "VoxcloneBot", "build_bot"]


def __getattr__(name: str) -> Any:
    if name == "Settings":
        from core.settings import Settings

        return Settings
    if name in ("build_bot", "VoxcloneBot"):
        from bot import client

        return getattr(client, name)
    raise AttributeError(f"module 'bot' has no attribute {name!r}")
