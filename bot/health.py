"""Health for container orchestrators: the bot's heartbeat file, and ``voxclone health`` that checks it
(or a worker's ``/readyz``) and exits 0 when healthy, 1 when not, saying why in one line.

The bot has no HTTP port, so with ``HEALTH_FILE`` set it writes a small JSON heartbeat there every
``HEARTBEAT_INTERVAL_S`` while it runs; it is healthy when the file is fresh and says the gateway is
connected. The file is removed on shutdown. Nothing here imports discord.py at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import discord

log = logging.getLogger("voxclone.health")

HEARTBEAT_INTERVAL_S: Final = 15.0
STALE_AFTER_S: Final = 60.0  # a heartbeat older than this means the bot hangs or is gone
WORKER_CHECK_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True)
class Heartbeat:
    """What the bot reports about itself; ``ts`` is Unix time (seconds)."""

    ts: float
    connected: bool
    guilds: int
    latency_ms: float | None

    @classmethod
    def of(cls, bot: discord.Client) -> Heartbeat:
        ws = bot.ws
        connected = not bot.is_closed() and bot.is_ready() and ws is not None and ws.open
        latency = bot.latency
        return cls(
            ts=time.time(),
            connected=connected,
            guilds=len(bot.guilds),
            latency_ms=round(latency * 1000, 1) if math.isfinite(latency) else None,
        )


def write_heartbeat(path: Path, beat: Heartbeat) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(asdict(beat)), encoding="utf-8")
    os.replace(part, path)


async def keep_heartbeat(bot: discord.Client, path: Path, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
    """Write the heartbeat every ``interval_s`` until cancelled, then remove the file."""
    try:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        while True:
            beat = Heartbeat.of(bot)
            try:
                await asyncio.to_thread(write_heartbeat, path, beat)
            except OSError as exc:
                log.warning("cannot write the health file %s: %s", path, exc.strerror)
            # Every second until connected, so the healthcheck turns healthy right after READY.
            await asyncio.sleep(interval_s if beat.connected else min(interval_s, 1.0))
    finally:
        # Synchronous on purpose: this runs while the task is cancelled, and must not be skipped.
        with contextlib.suppress(OSError):
            path.unlink()  # noqa: ASYNC240


def check_heartbeat(path: Path, *, max_age_s: float = STALE_AFTER_S, now: float | None = None) -> str | None:
    """None when the bot is healthy, else the reason."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        beat = Heartbeat(**data)
    except FileNotFoundError:
        return f"no heartbeat in {path}: the bot is not running, or still starting"
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable heartbeat in {path}: {exc}"
    age = (time.time() if now is None else now) - beat.ts
    if age > max_age_s:
        return f"the last heartbeat is {age:.0f} s old (more than {max_age_s:.0f} s): the bot is stuck"
    if not beat.connected:
        return "the bot runs but is not connected to Discord (it keeps trying to reconnect)"
    return None


def check_worker(url: str, *, timeout_s: float = WORKER_CHECK_TIMEOUT_S) -> str | None:
    """None when the worker at ``url`` answers ``/readyz`` with 200, else the reason."""
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/readyz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"no answer from {url}: {type(exc).__name__}"
    if response.status_code == 503:
        return f"{url} is not ready yet: the models are downloading or loading"
    if response.status_code != 200:
        return f"{url}/readyz answered HTTP {response.status_code}"
    return None
