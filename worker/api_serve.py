"""``voxclone worker``: resolve (or download) the models, then serve the API with uvicorn while they load.

The port opens at once so ``/healthz`` answers and ``/readyz`` says ``not_ready`` until the engines are
in memory; a load failure stops the process with the reason, so an orchestrator notices.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path
from typing import Final

import uvicorn

from bot.errors import ConfigError
from bot.logs import configure_logging
from bot.settings import Settings
from worker.api import AudioLimits, create_app
from worker.errors import SpeechError
from worker.factory import DeferredSpeechService, load_local_service, resolve_local_models
from worker.service import SpeechService

log = logging.getLogger("voxclone.worker.serve")

GRACEFUL_SHUTDOWN_S: Final = 10  # s that streams in flight get to finish on SIGTERM


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_worker(
    settings: Settings, *, model_dir: Path | None, host: str, port: int, max_body_bytes: int
) -> int:
    """Run the worker until SIGINT/SIGTERM; returns the exit code. Blocking."""
    token = settings.worker_token.get_secret_value() if settings.worker_token else None
    if not token and not is_loopback(host):
        raise ConfigError(
            f"WORKER_TOKEN is not set but the worker would listen on {host}: set WORKER_TOKEN to a long "
            "random value (the same on the bot), or listen on 127.0.0.1 only (WORKER_HOST)."
        )
    configure_logging(settings.log_level, settings.log_format, secrets=[token])
    if not token:
        log.warning("WORKER_TOKEN is not set: any program on this machine can use the worker")
    models = resolve_local_models(settings, model_dir=model_dir)

    async def load() -> SpeechService:
        return await load_local_service(settings, models)

    service = DeferredSpeechService(load)
    limits = AudioLimits.from_settings(settings)
    app = create_app(service, token=token, max_body_bytes=max_body_bytes, audio_limits=limits)
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
    return asyncio.run(_serve(uvicorn.Server(config), service, f"{host}:{port}"))


async def _serve(server: uvicorn.Server, service: DeferredSpeechService, where: str) -> int:
    failure: list[BaseException] = []

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
        await server.serve()
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        raise ConfigError(
            f"cannot listen on {where} (see the error above): is another worker running there? "
            "Choose another WORKER_PORT or WORKER_HOST."
        ) from exc
    finally:
        await service.aclose()
    if failure:
        error = failure[0]
        if isinstance(error, SpeechError):
            raise error
        raise SpeechError(f"The speech models failed to load: {type(error).__name__}: {error}") from error
    return 0
