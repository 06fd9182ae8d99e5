"""``voxclone worker``: resolve (or download) the models, then serve the API with uvicorn while they load.

The port opens at once so ``/healthz`` answers and ``/readyz`` says ``not_ready`` until the engines are
in memory; a load failure stops the process with the reason, so an orchestrator notices.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path
from typing import Final

import uvicorn

from core.errors import ConfigError
from core.logs import configure_logging
from core.process import drain_threads, exit_now, listening_socket, signals_end_quietly
from core.settings import Settings
from worker.api.app import AudioLimits, create_app
from worker.errors import SpeechError
from worker.factory import DeferredSpeechService, load_local_service, resolve_local_models
from worker.service import SpeechService
from worker.voices import VoiceLibrary

log = logging.getLogger("voxclone.worker.serve")

GRACEFUL_SHUTDOWN_S: Final = 10  # s that streams in flight get to finish on SIGTERM
THREADS_GRACE_S: Final = 2.0  # s after that for threads still busy (a model loading) before we leave


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_worker(
    settings: Settings,
    *,
    model_dir: Path | None,
    host: str,
    port: int,
    max_body_bytes: int,
    voices: VoiceLibrary | None = None,
) -> int:
    """Run the worker until SIGINT/SIGTERM; returns the exit code. Blocking.

    ``voices``: the consented voices of ``/v1/audio/speech``, opened here (none without it).
    """
    token = settings.worker_token.get_secret_value() if settings.worker_token else None
    if not token and not is_loopback(host):
        raise ConfigError(
            f"WORKER_TOKEN is not set but the worker would listen on {host}: set WORKER_TOKEN to a long "
            "random value (the same on the bot), or listen on 127.0.0.1 only (WORKER_HOST)."
        )
    configure_logging(settings.log_level, settings.log_format, secrets=[token])
    sock = listening_socket(host, port)  # a port in use fails now, not after a model download
    if not token:
        log.warning("WORKER_TOKEN is not set: any program on this machine can use the worker")
    try:
        models = resolve_local_models(settings, model_dir=model_dir)
    except BaseException:
        sock.close()
        raise

    async def load() -> SpeechService:
        return await load_local_service(settings, models)

    service = DeferredSpeechService(load)
    limits = AudioLimits.from_settings(settings)
    app = create_app(service, token=token, max_body_bytes=max_body_bytes, voices=voices, audio_limits=limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our handler and format (no tokens, no audio)
        access_log=False,  # the app logs one line per request itself
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return asyncio.run(_serve(uvicorn.Server(config), service, sock, voices))


async def _serve(
    server: uvicorn.Server,
    service: DeferredSpeechService,
    sock: socket.socket,
    voices: VoiceLibrary | None,
) -> int:
    failure: list[BaseException] = []
    if voices is not None:
        await voices.open()  # a database that cannot be opened stops the start with its reason

    def loaded(task: asyncio.Task[SpeechService]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            log.info("speech models loaded: the worker is ready")
            return
        failure.append(exc)
        log.error("the speech models failed to load: %s", exc)
        server.should_exit = True

    service.start().add_done_callback(loaded)
    try:
        # On SIGTERM/SIGINT uvicorn stops accepting, lets streams in flight finish (up to
        # GRACEFUL_SHUTDOWN_S), then returns; a load still running in a thread is not waited for.
        with signals_end_quietly():
            await server.serve(sockets=[sock])
    finally:
        sock.close()
        await service.aclose()
        if voices is not None:
            await voices.aclose()
    if not await drain_threads(THREADS_GRACE_S):
        log.warning("leaving a model load unfinished")
        exit_now(1 if failure else 0)
    if failure:
        error = failure[0]
        if isinstance(error, SpeechError):
            raise error
        raise SpeechError(f"The speech models failed to load: {type(error).__name__}: {error}") from error
    return 0
