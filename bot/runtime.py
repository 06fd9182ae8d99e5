"""The bot process: checks, then ``bot.startup`` until SIGTERM/SIGINT (then ``bot.shutdown``)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import importlib.util
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigError
from core.logs import configure_logging
from core.process import StopRequest, drain_threads, exit_now
from core.settings import Settings

if TYPE_CHECKING:
    import discord

log = logging.getLogger("voxclone.runtime")

THREADS_GRACE_S = 2.0  # s that threads still busy after shutdown (a model loading) get before we leave


def check_voice_dependencies() -> None:
    """Fail with a clear message when voice playback cannot work on this machine.

    Discord accepts only end-to-end encrypted (DAVE) voice since March 2026: discord.py needs PyNaCl,
    davey and the system's libopus.
    """
    missing = [name for name in ("nacl", "davey") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"Voice support is missing the Python packages {', '.join(missing)}: "
            "reinstall with `pip install 'discord.py[voice]>=2.7'` (`make run` does this)."
        )
    import discord.opus

    if not discord.opus.is_loaded():
        with contextlib.suppress(OSError):
            discord.opus._load_default()
    if not discord.opus.is_loaded() and ctypes.util.find_library("opus") is None:
        raise ConfigError(
            "libopus is not installed, so the bot cannot speak in voice channels: "
            "install it with `apt-get install libopus0` (Debian/Ubuntu) or `brew install opus` (macOS)."
        )


def check_speech_engines(settings: Settings) -> None:
    """Without WORKER_URLS the engines run in the bot: fail at once if this install lacks them.

    A bot-only install (``pip install voxclone``, the ``bot`` Docker image) has no torch or coqui-tts.
    """
    if settings.worker_urls:
        return
    missing = [name for name in ("torch", "TTS") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            "WORKER_URLS is empty, so the speech engines would run inside the bot, but they are not "
            "installed here (a bot-only install, such as the `bot` Docker image): set WORKER_URLS (and "
            "WORKER_TOKEN) to your speech workers, or install the engines with "
            "`pip install 'voxclone[worker]'` (`make run` does)."
        )


def run_bot(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (then shut down gracefully); returns the process exit code.

    Start-up failures raise a ConfigError, StartupError, StorageError or SpeechError whose message is the
    one line ``voxclone bot`` prints.
    """
    token = settings.require_discord_token().get_secret_value()
    configure_logging(
        settings.log_level,
        settings.log_format,
        secrets=[token, *(s.get_secret_value() for s in (settings.worker_token, settings.llm_api_key) if s)],
    )
    check_voice_dependencies()
    check_speech_engines(settings)
    return asyncio.run(_run(settings, token))


async def _run(settings: Settings, token: str) -> int:
    from bot.client import build_bot
    from bot.shutdown import SHUTDOWN_DEADLINE_S, shut_down
    from bot.startup import start

    stop = StopRequest()
    stop.install()
    async with build_bot(settings) as bot, _heartbeat(bot, settings.health_file):
        running = asyncio.create_task(start(bot, token), name="voxclone-bot")
        stopping = asyncio.create_task(stop.wait(), name="voxclone-stop")
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():  # start-up failed (raises here), or the bot was closed from inside
            stopping.cancel()
            running.result()
            return 0
        log.info("%s received: shutting down", stop.signal_name)
        took = await shut_down(bot)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    # A model still loading in a thread would keep asyncio.run (and the process) waiting until it is
    # loaded, for nothing: give threads a moment, then leave; storage and the gateway are closed already.
    if not await drain_threads(min(THREADS_GRACE_S, max(0.1, SHUTDOWN_DEADLINE_S - took))):
        log.warning("leaving a model load unfinished")
        exit_now(0)
    return 0


@contextlib.asynccontextmanager
async def _heartbeat(bot: discord.Client, path: Path | None) -> AsyncIterator[None]:
    """With HEALTH_FILE set, keep the heartbeat that `voxclone health` checks (bot.health)."""
    if path is None:
        yield
        return
    from bot.health import keep_heartbeat

    task = asyncio.create_task(keep_heartbeat(bot, path), name="voxclone-heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sync_commands(settings: Settings, guild_id: int | None) -> int:
    """Register the slash commands with Discord: in one server (instant) or globally (up to an hour)."""
    token = settings.require_discord_token().get_secret_value()
    configure_logging(settings.log_level, settings.log_format, secrets=[token])
    import discord

    from bot.client import VoxcloneBot
    from bot.startup import login

    async def _main() -> int:
        async with VoxcloneBot(settings, commands_only=True) as bot:
            await login(bot, token)
            if guild_id is not None:
                guild = discord.Object(id=guild_id)
                bot.tree.copy_global_to(guild=guild)
                synced = await bot.tree.sync(guild=guild)
                where = f"server {guild_id}"
            else:
                synced = await bot.tree.sync()
                where = "every server (global commands can take up to an hour to appear)"
            print(f"registered {len(synced)} commands in {where}")
        return 0

    return asyncio.run(_main())
