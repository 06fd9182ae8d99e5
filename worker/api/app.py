"""The worker's HTTP service (FastAPI): the Worker API v1 over any ``SpeechService``.

Endpoints (wire format in ``worker.wire``): ``POST /v1/embeddings``, ``/v1/speech`` (framed stream of
24 kHz mono s16le PCM), ``/v1/transcriptions``, ``/v1/verify``, ``/v1/quality``, ``/v1/watermark/detect``;
``GET /healthz`` (process alive, no auth), ``/readyz`` (models loaded, no auth, for load balancers) and
``/metrics`` (Prometheus). OpenAI's audio routes (``worker.api.openai``) and the OpenAPI schema and docs
(``worker.api.docs``) are served too. Everything else needs ``Authorization: Bearer <token>`` when a token
is set. Bodies are read with a running size check and refused with 413 as soon as they pass the limit,
and audio longer than its route's :class:`AudioLimits` is refused with 413 before any model sees it.
Errors are ``{"error": {"code", "message"}}`` with the stable codes of ``worker.errors``, also for an
unexpected failure (the connection stays open). Neither tokens nor audio nor text are ever logged: a log
line names the endpoint, the status and the time taken.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.i18n import SOURCE_LOCALE, resolve, using_locale
from worker.api.docs import docs_router
from worker.api.metrics import CONTENT_TYPE, WorkerMetrics
from worker.api.openai import OPENAI_ENDPOINTS, openai_router
from worker.api.stream import STREAM_STATUS_KEY, UNEXPECTED_MESSAGE, stream_speech
from worker.errors import (
    InternalWorkerError,
    InvalidAudio,
    InvalidRequest,
    ModelNotReady,
    PayloadTooLarge,
    SpeechError,
    Unauthorized,
)
from worker.service import SpeechService
from worker.types import FloatArray
from worker.voices import VoiceLibrary
from worker.wire import (
    PHRASE_ADAPTER,
    QUALITY_ADAPTER,
    SPEAKER_ADAPTER,
    TRANSCRIPTION_ADAPTER,
    WATERMARK_ADAPTER,
    AudioBody,
    SpeechBody,
    TranscriptionBody,
    VerifyBody,
    WirePcm,
    jsonable,
    to_json_obj,
)

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger("voxclone.worker.api")

DEFAULT_MAX_BODY_BYTES: Final = 48 * 1024 * 1024  # two 60 s clips at 48 kHz float32, base64: ~31 MiB
_ENDPOINTS: Final = frozenset(
    {
        "/v1/embeddings",
        "/v1/speech",
        "/v1/transcriptions",
        "/v1/verify",
        "/v1/quality",
        "/v1/watermark/detect",
        "/healthz",
        "/readyz",
        "/metrics",
        *OPENAI_ENDPOINTS,
    }
)
_M = TypeVar("_M", bound=BaseModel)
_R = TypeVar("_R")


@dataclass(frozen=True)
class AudioLimits:
    """The longest audio, in seconds, that each route accepts (settings ``WORKER_MAX_*_S``).

    The body limit is not enough: 48 MiB holds 380 s of 16 kHz float32, which Whisper took 214 s of CPU
    over while the bot had given up after 30 s. Defaults: what the bot itself accepts (voice messages of
    5 minutes, enrolment clips of 2 minutes) and a watermark check of 10 minutes.
    """

    transcription_s: float = 300.0  # /v1/transcriptions
    clip_s: float = 120.0  # /v1/embeddings, /v1/quality, each clip of /v1/verify
    detect_s: float = 600.0  # /v1/watermark/detect

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioLimits:
        return cls(
            settings.worker_max_transcription_s, settings.worker_max_clip_s, settings.worker_max_detect_s
        )


# Each limit's setting, and what the route does with the audio (for the 413's message).
_LIMIT_NAMES: Final = {
    "transcription_s": ("WORKER_MAX_TRANSCRIPTION_S", "a transcription"),
    "clip_s": ("WORKER_MAX_CLIP_S", "a voice clip"),
    "detect_s": ("WORKER_MAX_DETECT_S", "a watermark check"),
}


def audio_within(audio: WirePcm, limits: AudioLimits, limit: str) -> FloatArray:
    """``audio`` decoded, or ``PayloadTooLarge`` (413) naming the limit when it is longer than ``limit``."""
    pcm = audio.to_array()
    seconds, most = pcm.size / audio.sample_rate, getattr(limits, limit)
    if seconds > most:
        setting, what = _LIMIT_NAMES[limit]
        raise PayloadTooLarge(
            f"This audio is {seconds:.1f} s long; the speech worker takes at most {most:g} s for {what} "
            f"({setting}): send a shorter clip.",
            audio_s=round(seconds, 3),
            limit_s=most,
            setting=setting,
        )
    return pcm


def error_response(exc: SpeechError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON body of ``exc``; details (a quality report...) become plain JSON. A 503 says when to
    come back (``Retry-After``)."""
    if exc.retry_after_s is not None:
        headers = {**(headers or {}), "Retry-After": str(exc.retry_after_s)}
    return JSONResponse(jsonable(exc.to_json()), status_code=exc.http_status, headers=headers)


async def read_body(request: Request, model: type[_M], limit: int) -> _M:
    """Read the body with a running size check (never buffering past ``limit``), then validate it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise _too_large(limit)
    except ClientDisconnect:
        raise InvalidRequest("The request body was cut off before it was complete.") from None
    try:
        return model.model_validate_json(bytes(buf))
    except ValidationError as exc:
        raise InvalidRequest(f"The request body is not valid: {_describe(exc)}.") from None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request is larger than this worker accepts ({_size(limit)}); send a shorter clip."
    )


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1_048_576:.0f} MiB" if n_bytes >= 1_048_576 else f"{n_bytes / 1024:.0f} KiB"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


async def _call(what: str, op: Callable[[], Awaitable[_R]]) -> _R:
    """Run a service call; anything but a SpeechError is logged and becomes ``internal``."""
    try:
        return await op()
    except SpeechError:
        raise
    except Exception as exc:
        log.exception("%s failed", what)
        raise InternalWorkerError(UNEXPECTED_MESSAGE) from exc


def accept_language(header: str | None) -> str | None:
    """The best language of an ``Accept-Language`` header that has a catalog (``"fr-FR,fr;q=0.9"`` → fr)."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag.strip() and tag.strip() != "*" and q > 0:
            ranked.append((-q, i, tag.strip()))
    for _, _, tag in sorted(ranked):
        locale = resolve(tag)
        if locale != SOURCE_LOCALE or tag.lower().split("-")[0] == SOURCE_LOCALE:
            return locale
    return None


class _RequestLocale:
    """Pure ASGI middleware: a request's messages in its ``Accept-Language`` (the bot sends the member's).

    The locale is set around the whole request, so the handler, its error handlers and a streaming
    response's generator (run inside this call) all build their sentences in it. OpenAI's routes keep
    OpenAI's English errors.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") in OPENAI_ENDPOINTS:
            with using_locale(None):
                await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", []) if k == b"accept-language"), b"")
        with using_locale(accept_language(header.decode("latin-1"))):
            await self.app(scope, receive, send)


class _ObserveRequests:
    """Pure ASGI middleware (streams pass through untouched): metrics and one log line per request."""

    def __init__(self, app: ASGIApp, metrics: WorkerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else "other"

        async def observe_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        except Exception:
            if started:  # the answer is under way: only closing the connection can tell the client
                raise
            # Answered here, as JSON, the connection stays open for the client's next request (an
            # exception left to the server would close it after a plain-text 500).
            log.exception("%s failed unexpectedly", endpoint)
            status = 500
            await error_response(InternalWorkerError(UNEXPECTED_MESSAGE))(scope, receive, send)
        finally:
            # A stream that was cut (the client left) or failed after its 200 header is counted by how
            # it ended, not by the header.
            status = scope.get(STREAM_STATUS_KEY, status)
            elapsed = time.perf_counter() - start
            self.metrics.observe_request(endpoint, status, elapsed)
            level = logging.INFO if endpoint.startswith("/v1/") else logging.DEBUG
            log.log(level, "%s %s -> %s in %.3f s", scope.get("method", "?"), endpoint, status, elapsed)


def create_app(
    service: SpeechService,
    *,
    token: str | None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    metrics: WorkerMetrics | None = None,
    queue_depth: Callable[[], float] | None = None,
    voices: VoiceLibrary | None = None,
    audio_limits: AudioLimits | None = None,
) -> FastAPI:
    """The Worker API v1 over ``service``. ``token=None`` turns auth off (local development only).

    ``voices``: the consented voices that ``POST /v1/audio/speech`` serves (none without it).
    """
    metrics = metrics if metrics is not None else WorkerMetrics()
    limits = audio_limits or AudioLimits()
    if queue_depth is None:
        queue_depth = _queue_depth_reader(service)
    if queue_depth is not None:
        metrics.track_queue_depth(queue_depth)
    expected = token.encode() if token else None

    async def authorize(request: Request) -> None:
        if expected is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
            raise Unauthorized(
                "The worker token is missing or wrong: "
                "set WORKER_TOKEN to the same value on the bot and the worker."
            )

    app = FastAPI(
        title="voxclone speech worker", version="1", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.metrics = metrics
    app.state.service = service
    _install_error_handlers(app)
    app.add_middleware(_ObserveRequests, metrics=metrics)
    app.add_middleware(_RequestLocale)  # outermost: everything below answers in the request's language
    secured = APIRouter(dependencies=[Depends(authorize)])

    # Open to load balancers and probes: no token, no request body, no secrets in the answer.
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        try:
            ready = await service.ready()
        except Exception:
            log.exception("readiness check failed")
            ready = False
        if not ready:
            return error_response(ModelNotReady("The speech models are not loaded yet; try again shortly."))
        return JSONResponse({"status": "ready"})

    @secured.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @secured.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await read_body(request, AudioBody, max_body_bytes)
        pcm, rate = audio_within(body.audio, limits, "clip_s"), body.audio.sample_rate
        result = await _call("embed", lambda: service.embed(pcm, rate))
        return {
            "embedding": result.embedding.to_wire(),
            "quality": to_json_obj(QUALITY_ADAPTER, result.quality),
        }

    @secured.post("/v1/speech")
    async def speech(request: Request) -> Response:
        started = time.perf_counter()
        body = await read_body(request, SpeechBody, max_body_bytes)
        return await stream_speech(service, body.to_request(), metrics, started)

    @secured.post("/v1/transcriptions")
    async def transcriptions(request: Request) -> Any:
        body = await read_body(request, TranscriptionBody, max_body_bytes)
        pcm = audio_within(body.audio, limits, "transcription_s")
        result = await _call(
            "transcribe", lambda: service.transcribe(pcm, body.audio.sample_rate, body.language)
        )
        return to_json_obj(TRANSCRIPTION_ADAPTER, result)

    @secured.post("/v1/verify")
    async def verify(request: Request) -> dict[str, Any]:
        body = await read_body(request, VerifyBody, max_body_bytes)
        return await _verify(service, body, limits)

    @secured.post("/v1/quality")
    async def quality(request: Request) -> Any:
        body = await read_body(request, AudioBody, max_body_bytes)
        pcm, rate = audio_within(body.audio, limits, "clip_s"), body.audio.sample_rate
        result = await _call("check_quality", lambda: service.check_quality(pcm, rate))
        return to_json_obj(QUALITY_ADAPTER, result)

    @secured.post("/v1/watermark/detect")
    async def watermark_detect(request: Request) -> Any:
        body = await read_body(request, AudioBody, max_body_bytes)
        pcm = audio_within(body.audio, limits, "detect_s")
        result = await _call(
            "detect_watermark", lambda: service.detect_watermark(pcm, body.audio.sample_rate)
        )
        return to_json_obj(WATERMARK_ADAPTER, result)

    app.include_router(secured)
    app.include_router(
        openai_router(service, voices, metrics, max_body_bytes), dependencies=[Depends(authorize)]
    )
    app.include_router(docs_router(app, token))
    return app


async def _verify(service: SpeechService, body: VerifyBody, limits: AudioLimits) -> dict[str, Any]:
    clips = (body.audio_a, body.audio_b)
    phrases = (body.expected, body.heard)
    if any(c is None for c in clips) and any(c is not None for c in clips):
        raise InvalidRequest("Send both audio_a and audio_b to compare two speakers.")
    if any(p is None for p in phrases) and any(p is not None for p in phrases):
        raise InvalidRequest("Send both expected and heard to match a phrase.")
    if body.audio_a is None and body.expected is None:
        raise InvalidRequest("Send two clips (audio_a, audio_b), a phrase pair (expected, heard), or both.")
    result: dict[str, Any] = {"speaker": None, "phrase": None}
    if body.audio_a is not None and body.audio_b is not None:
        if body.audio_a.sample_rate != body.audio_b.sample_rate:
            raise InvalidAudio("Both clips must be at the same sample rate.")
        pcm_a, pcm_b = (audio_within(c, limits, "clip_s") for c in (body.audio_a, body.audio_b))
        rate = body.audio_a.sample_rate
        check = await _call("compare_speakers", lambda: service.compare_speakers(pcm_a, pcm_b, rate))
        result["speaker"] = to_json_obj(SPEAKER_ADAPTER, check)
    if body.expected is not None and body.heard is not None:
        expected, heard, language = body.expected, body.heard, body.language
        match = await _call("match_phrase", lambda: service.match_phrase(expected, heard, language))
        result["phrase"] = to_json_obj(PHRASE_ADAPTER, match)
    return result


def _queue_depth_reader(service: SpeechService) -> Callable[[], float] | None:
    """Use the service's ``queue_depth`` (attribute, property or method) when it has one."""
    if not hasattr(service, "queue_depth"):
        return None

    def read() -> float:
        value = getattr(service, "queue_depth", 0)
        return float(value() if callable(value) else value)

    return read


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SpeechError)
    async def speech_error(request: Request, exc: SpeechError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return error_response(exc, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": f"{request.method} {request.url.path}: {exc.detail}"}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "AudioLimits",
    "audio_within",
    "create_app",
    "error_response",
    "read_body",
]
