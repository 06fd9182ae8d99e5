"""The life of the ``voxclone bot`` and ``voxclone worker`` processes: stop signals, and leaving promptly
once everything we own is closed.

Imports nothing of ours, so the bot and the worker can both use it (a ``core`` module).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Final, NoReturn

log = logging.getLogger("voxclone.process")

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
EXIT_ON_SECOND_SIGNAL: Final = 130  # a second Ctrl-C (or SIGTERM) while shutting down: leave at once


class StopRequest:
    """Set by the first SIGTERM or SIGINT on the running loop; a second one exits immediately."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signal_name: str | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._received, sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

    def _received(self, sig: signal.Signals) -> None:
        if self.event.is_set():
            log.warning("%s again while shutting down: exiting now", sig.name)
            exit_now(EXIT_ON_SECOND_SIGNAL)
        self.signal_name = sig.name
        self.event.set()

    async def wait(self) -> str:
        await self.event.wait()
        return self.signal_name or "signal"


async def drain_threads(timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the loop's worker threads (a model still loading) to finish.

    ``asyncio.run`` would otherwise wait for them without limit on its way out, and a SIGTERM during a
    model load would not stop the process until the load is done.
    """
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(asyncio.shield(loop.shutdown_default_executor()), timeout_s)
    except TimeoutError:
        return False
    return True


def exit_now(code: int) -> NoReturn:
    """Flush the logs and leave without waiting for threads (everything we own is already closed)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
