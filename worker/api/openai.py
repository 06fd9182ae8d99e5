"""OpenAI's audio routes on the worker, so the ``openai`` package, Open WebUI or Home Assistant can use it.

``POST /v1/audio/speech`` (JSON: ``model``, ``input``, ``voice``, ``response_format``, ``speed``) streams
the speech encoded as it is made (``worker.api.encode``), watermarked like every output of the engine;
``POST /v1/audio/transcriptions`` (multipart: ``file``, ``model``, ``language``, ``prompt``,
``response_format``) answers ``{"text": ...}`` or text, SRT, WebVTT, verbose JSON; ``GET
/v1/audio/voices`` lists the voices whose speaker's recorded consent was added (``worker.voices``),
the only ones served. ``model`` is accepted and not used: there is one voice model and one Whisper.

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with our stable codes, the
token check included, so a client's own error handling reads them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive

from core.audio import ANALYSIS_SAMPLE_RATE, OUTPUT_SAMPLE_RATE, OUTPUT_SAMPLE_WIDTH
from core.errors import AudioTooLarge, AudioTooLong, IntakeError
from worker.api.encode import (
    FORMATS,
    MAX_SPEED,
    MIN_SPEED,
    SUPPORTED_FORMATS,
    EncodedStreamResponse,
    atempo_chain,
    encode,
)
from worker.api.metrics import WorkerMetrics
from worker.api.stream import start_synthesis, unexpected
from worker.errors import InternalWorkerError, InvalidRequest, PayloadTooLarge, SpeechError
from worker.service import SpeechService
from worker.types import SpeechRequest, Transcription
from worker.voices import VoiceLibrary, find_voice

log = logging.getLogger("voxclone.worker.api")

MAX_INPUT_CHARS: Final = 4000  # characters of `input`: the engine's limit (worker.xtts.MAX_TEXT_CHARS)
MAX_TRANSCRIPTION_SECONDS: Final = 600.0  # s of audio per transcription request
TRANSCRIPTION_FORMATS: Final = ("json", "text", "srt", "verbose_json", "vtt")
OPENAI_ENDPOINTS: Final = frozenset({"/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/voices"})
_BYTES_PER_SECOND: Final = OUTPUT_SAMPLE_RATE * OUTPUT_SAMPLE_WIDTH


# ---- errors ---------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


def openai_error(exc: SpeechError, param: str | None = None) -> JSONResponse:
    """``exc`` in OpenAI's error shape, with its HTTP status."""
    status = exc.http_status
    kind = (
        "authentication_error"
        if status == 401
        else "invalid_request_error"
        if 400 <= status < 500
        else "server_error"
    )
    detail = ErrorDetail(
        message=exc.message, type=kind, param=param or exc.details.get("param"), code=exc.code
    )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": detail.model_dump()}, status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = [str(p) for p in first.get("loc", ()) if p not in ("body", "form")]
    param = ".".join(where) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return openai_error(InvalidRequest(f"The request is not valid: {message}."), param)


def _intake_error(exc: IntakeError) -> SpeechError:
    if isinstance(exc, AudioTooLarge | AudioTooLong):
        return PayloadTooLarge(exc.message, param="file")
    return InvalidRequest(exc.message, param="file")


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises PayloadTooLarge once the body passes ``limit`` bytes."""
    seen = 0

    async def read() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return read


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request is larger than this worker accepts ({limit // 1_048_576} MiB).")


def openai_route_class(max_body_bytes: int) -> type[APIRoute]:
    """Routes whose errors (token, validation, size, service) all come back in OpenAI's shape."""

    class OpenAIRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_body_bytes:
                    return openai_error(_too_large(max_body_bytes))
                limited = Request(request.scope, _limited(request.receive, max_body_bytes))
                try:
                    return await handler(limited)
                except SpeechError as exc:
                    return openai_error(exc)
                except IntakeError as exc:
                    return openai_error(_intake_error(exc))
                except RequestValidationError as exc:
                    return _validation_error(exc)
                except StarletteHTTPException as exc:
                    if isinstance(exc.__cause__, SpeechError):  # raised by _limited while parsing
                        return openai_error(exc.__cause__)
                    return openai_error(InvalidRequest(str(exc.detail)))

            return run

    return OpenAIRoute


# ---- request and response models ------------------------------------------------------------------


class VoiceId(BaseModel):
    """A voice given as an object, as newer OpenAI clients may send it."""

    id: str


class SpeechBody(BaseModel):
    """``POST /v1/audio/speech``: OpenAI's fields; ``instructions`` and other extras are accepted, unused."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=200, description="Accepted for compatibility (tts-1, ...); not used.")
    input: str = Field(max_length=MAX_INPUT_CHARS, description="The text to speak.")
    voice: str | VoiceId = Field(description="A voice from GET /v1/audio/voices.")
    response_format: str = Field(
        default="mp3", json_schema_extra={"enum": list(SUPPORTED_FORMATS)}, description="The audio format."
    )
    speed: float = Field(default=1.0, description=f"{MIN_SPEED} to {MAX_SPEED}; pitch is kept.")
    stream_format: Literal["audio"] = Field(
        default="audio", description="Only `audio` (the file's bytes as they are encoded)."
    )
    language: str | None = Field(
        default=None,
        max_length=16,
        description="voxclone extension: the language of `input` (default: the voice's language).",
    )

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class VoiceObject(BaseModel):
    id: str
    object: Literal["audio.voice"] = "audio.voice"
    name: str
    type: Literal["audio_sample"] = "audio_sample"
    created_at: int = Field(description="Unix time the voice was added.")
    language: str = Field(description="What the voice speaks when a request names no language.")


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceObject]


class TranscriptionJson(BaseModel):
    text: str


_SPEECH_CONTENT: Final = {
    f.media_type: {"schema": {"type": "string", "format": "binary"}} for f in FORMATS.values()
}
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Bad input"),
        (401, "Missing or wrong token"),
        (404, "No such voice"),
        (413, "Too large"),
        (422, "Unusable audio or language"),
        (503, "Busy or still loading"),
    )
}


# ---- routes ---------------------------------------------------------------------------------------


def openai_router(
    service: SpeechService,
    voices: VoiceLibrary | None,
    metrics: WorkerMetrics,
    max_body_bytes: int,
) -> APIRouter:
    """The OpenAI-shaped routes; include it with the token check as a dependency."""
    router = APIRouter(route_class=openai_route_class(max_body_bytes), tags=["OpenAI-compatible"])

    def library() -> VoiceLibrary:
        if voices is None:
            raise InternalWorkerError("This worker was started without a voice library.")
        return voices

    @router.post(
        "/v1/audio/speech",
        response_class=EncodedStreamResponse,
        status_code=200,
        responses={200: {"content": _SPEECH_CONTENT, "description": "The audio, streamed"}, **_ERRORS},
        summary="Speak text in a consented voice (OpenAI's createSpeech)",
    )
    async def speech(body: SpeechBody) -> Response:
        started = time.perf_counter()
        fmt = FORMATS.get(body.response_format)
        if fmt is None:
            raise InvalidRequest(
                f"response_format {body.response_format!r} is not supported: use one of "
                f"{', '.join(SUPPORTED_FORMATS)}.",
                param="response_format",
            )
        text = body.input.strip()
        if not text:
            raise InvalidRequest("input is empty: send the text to speak.", param="input")
        try:
            atempo_chain(body.speed)
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, param="speed") from None
        try:
            voice = await find_voice(library(), body.voice_name)
        except SpeechError as exc:
            exc.details.setdefault("param", "voice")
            raise
        request = SpeechRequest(
            text=text, language=body.language or voice.language, embedding=voice.embedding
        )
        first, chunks = await start_synthesis(service, request)
        metrics.first_chunk.observe(time.perf_counter() - started)
        counted = _Counted(chunks)
        encoded = encode(first, counted, fmt, body.speed)
        observed = _observed(encoded, counted, len(first), metrics, started)
        return EncodedStreamResponse(observed, chunks, fmt.media_type)

    @router.post(
        "/v1/audio/transcriptions",
        response_model=TranscriptionJson,
        responses={200: {"content": {"text/plain": {}}}, **_ERRORS},
        summary="Transcribe an audio file (OpenAI's createTranscription)",
    )
    async def transcriptions(
        file: Annotated[UploadFile, File(description="Audio: mp3, ogg, opus, m4a, wav, flac, webm...")],
        model: Annotated[str, Form(description="Accepted for compatibility (whisper-1, ...); not used.")],
        language: Annotated[str | None, Form(description="ISO-639-1 code; default: detect.")] = None,
        prompt: Annotated[str | None, Form(description="Accepted; not used.")] = None,
        response_format: Annotated[
            str, Form(json_schema_extra={"enum": list(TRANSCRIPTION_FORMATS)})
        ] = "json",
        temperature: Annotated[float | None, Form(description="Accepted; not used.")] = None,
    ) -> Response:
        from core.intake import decode_audio_async

        if response_format not in TRANSCRIPTION_FORMATS:
            raise InvalidRequest(
                f"response_format {response_format!r} is not supported: use one of "
                f"{', '.join(TRANSCRIPTION_FORMATS)}.",
                param="response_format",
            )
        data = await file.read()
        audio = await decode_audio_async(
            data,
            sample_rate=ANALYSIS_SAMPLE_RATE,
            max_seconds=MAX_TRANSCRIPTION_SECONDS,
            max_bytes=max_body_bytes,
        )
        result = await _call(lambda: service.transcribe(audio.pcm, audio.sample_rate, language or None))
        return _transcription_response(result, response_format)

    @router.get("/v1/audio/voices", response_model=VoiceList, responses={401: _ERRORS[401]})
    async def list_voices() -> VoiceList:
        """The voices this worker speaks in: each added with its speaker's recorded consent."""
        found = await library().list() if voices is not None else []
        return VoiceList(
            data=[
                VoiceObject(
                    id=v.name, name=v.name, created_at=int(v.created_at.timestamp()), language=v.language
                )
                for v in found
            ]
        )

    return router


async def _call(op: Callable[[], Awaitable[Transcription]]) -> Transcription:
    try:
        return await op()
    except SpeechError:
        raise
    except Exception as exc:
        raise unexpected("transcribe failed") from exc


class _Counted:
    """The synthesis chunks, counting their bytes and noting whether they ran to the end."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.total = 0
        self.completed = False

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self.completed = True
            raise
        self.total += len(chunk)
        return chunk


async def _observed(
    body: AsyncGenerator[bytes, None], counted: _Counted, first: int, metrics: WorkerMetrics, started: float
) -> AsyncGenerator[bytes, None]:
    metrics.active_streams.inc()
    try:
        async for data in body:
            yield data
    finally:
        await body.aclose()
        metrics.active_streams.dec()
        audio_s = (first + counted.total) / _BYTES_PER_SECOND
        metrics.observe_stream(audio_s, time.perf_counter() - started, counted.completed)


# ---- transcription formats ------------------------------------------------------------------------


def _transcription_response(result: Transcription, fmt: str) -> Response:
    text = result.text.strip()
    if fmt == "json":
        return JSONResponse({"text": text})
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt == "verbose_json":
        return JSONResponse(
            {
                "task": "transcribe",
                "language": _language_name(result.language),
                "duration": result.duration_s,
                "text": text,
                "segments": [
                    {"id": i, "start": s.start_s, "end": s.end_s, "text": s.text, "tokens": []}
                    for i, s in enumerate(result.segments)
                ],
            }
        )
    cues = [(s.start_s, s.end_s, s.text.strip()) for s in result.segments if s.text.strip()]
    if fmt == "srt":
        blocks = [f"{i}\n{_stamp(a, ',')} --> {_stamp(b, ',')}\n{t}\n" for i, (a, b, t) in enumerate(cues, 1)]
        return PlainTextResponse("\n".join(blocks), media_type="application/x-subrip")
    blocks = [f"{_stamp(a, '.')} --> {_stamp(b, '.')}\n{t}\n" for a, b, t in cues]
    return PlainTextResponse("WEBVTT\n\n" + "\n".join(blocks), media_type="text/vtt")


def _stamp(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _language_name(code: str) -> str:
    """OpenAI names the language in verbose JSON ("english"); Whisper's table has the names."""
    try:
        from whisper.tokenizer import LANGUAGES
    except ImportError:
        return code
    return str(LANGUAGES.get(code, code))


__all__ = ["OPENAI_ENDPOINTS", "ErrorBody", "SpeechBody", "openai_error", "openai_router"]
