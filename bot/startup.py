"""Connecting the bot to Discord: log in with a few retries, and turn each known failure into one line.

A wrong token, privileged intents missing in the developer portal and Discord being unreachable are
what a self-hoster meets first; each becomes a :class:`~bot.errors.ConfigError` or
:class:`~bot.errors.StartupError` whose message says what to do (``voxclone bot`` prints it and exits
non-zero, with no traceback unless ``LOG_LEVEL=DEBUG``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import aiohttp
import discord

from core.errors import ConfigError, StartupError

log = logging.getLogger("voxclone.startup")

LOGIN_TRIES: Final = 3
LOGIN_BACKOFF_S: Final = (2.0, 4.0)  # s before the 2nd and the 3rd try
PORTAL: Final = "https://discord.com/developers/applications"

TOKEN_REFUSED: Final = (
    "Discord refused DISCORD_TOKEN (401 Unauthorized): copy a fresh token from the developer portal "
    f"({PORTAL} > your application > Bot > Reset Token) into .env as DISCORD_TOKEN=... and start again."
)

# What "cannot reach Discord" looks like from aiohttp and discord.py (5xx after its own retries).
_UNREACHABLE = (OSError, aiohttp.ClientError, asyncio.TimeoutError, discord.DiscordServerError)


def intents_refused(intents: discord.Intents) -> str:
    """The message for gateway close code 4014, naming the intents this bot asked for."""
    asked = ["Server Members"] + (["Message Content"] if intents.message_content else [])
    also = (
        " (or set MESSAGE_CONTENT_INTENT=false to do without automatic voice messages)"
        if intents.message_content
        else ""
    )
    plural = "s" if len(asked) > 1 else ""
    return (
        f"Discord refused the connection: the bot asks for the privileged intent{plural} "
        f"{' and '.join(asked)}, not enabled for this application. Enable {' and '.join(asked)} under "
        f"{PORTAL} > your application > Bot > Privileged Gateway Intents{also}, then start again."
    )


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a connection failure."""
    if isinstance(exc, discord.HTTPException):
        return f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


async def login(
    bot: discord.Client,
    token: str,
    *,
    tries: int = LOGIN_TRIES,
    backoff_s: Sequence[float] = LOGIN_BACKOFF_S,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """``bot.login`` (which also runs ``setup_hook``), tried ``tries`` times while Discord is unreachable."""
    for attempt in range(1, tries + 1):
        try:
            await bot.login(token)
            return
        except discord.LoginFailure as exc:
            raise ConfigError(TOKEN_REFUSED) from exc
        except _UNREACHABLE as exc:
            # The failed session closes with its connector; the next login makes both anew.
            await bot.http.close()
            bot.http.connector = discord.utils.MISSING
            reason = describe(exc)
            if attempt >= tries:
                raise StartupError(
                    f"Cannot reach Discord ({reason}) after {tries} tries: check this machine's network, "
                    "DNS and firewall (the bot needs HTTPS to discord.com and gateway.discord.gg), "
                    "then start again."
                ) from exc
            delay = backoff_s[min(attempt, len(backoff_s)) - 1]
            log.warning(
                "cannot reach Discord (%s): trying again in %.0f s (try %d of %d)",
                reason,
                delay,
                attempt + 1,
                tries,
            )
            await sleep(delay)


async def connect(bot: discord.Client) -> None:
    """The gateway connection (reconnecting by itself once up); 4014 becomes a ConfigError."""
    try:
        await bot.connect(reconnect=True)
    except discord.PrivilegedIntentsRequired as exc:
        raise ConfigError(intents_refused(bot.intents)) from exc


async def start(bot: discord.Client, token: str) -> None:
    """Log in, run ``setup_hook``, connect; returns when the bot is closed."""
    await login(bot, token)
    await connect(bot)
