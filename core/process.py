"""The life of the ``voxclone bot`` and ``voxclone worker`` processes: stop signals, the listening socket,
and leaving promptly once everything we own is closed.

Imports nothing of ours but the error root, so the bot and the worker can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Final, NoReturn

from core.errors import ConfigError

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


@contextlib.contextmanager
def signals_end_quietly() -> Iterator[None]:
    """Around ``uvicorn.Server.serve``: it re-raises the stop signal it caught once it has shut down
    gracefully, which with the default SIGTERM action kills the process before our own clean-up (and
    exits 143). Handlers that ignore that second delivery let ``serve`` return normally instead."""

    def already_handled(signum: int, frame: object) -> None:
        log.debug("signal %s: the server has already shut down", signum)

    previous = {sig: signal.signal(sig, already_handled) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def listening_socket(host: str, port: int, *, what: str = "the worker") -> socket.socket:
    """A socket bound to ``host:port`` and listening, or a ConfigError saying why not and what to do.

    Bound before anything slow (model download, loading) so a port in use fails at once, in one line.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"WORKER_HOST {host!r} is not an address of this machine ({exc.strerror}): "
            "use 127.0.0.1, 0.0.0.0 or one of its addresses."
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restarts reuse TIME_WAIT ports
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"Port {port} on {host} is already in use, so {what} cannot listen there: stop the "
                f"program using it (`ss -ltnp 'sport = :{port}'` shows which), or choose another "
                "WORKER_PORT (--port)."
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"Not allowed to listen on port {port}: ports below 1024 need root; choose a WORKER_PORT "
                "above 1024 (the default is 8765)."
            ) from None
        raise ConfigError(f"Cannot listen on {host}:{port} ({exc.strerror}): check WORKER_HOST.") from None
    sock.set_inheritable(True)
    return sock


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
