"""Errors of the speech worker, under the one root (``core.errors.VoxcloneError``).

    VoxcloneError (core.errors)
    └── SpeechError                  code             HTTP
        ├── InvalidAudio             invalid_audio    400   PCM malformed, empty or at a rate we don't take
        ├── QualityRejected          quality_rejected 422   the clip failed the quality gate (has .report)
        ├── UnsupportedLanguage      unsupported_language 422
        ├── InvalidRequest           invalid_request  400   any other malformed field
        ├── PayloadTooLarge          payload_too_large 413
        ├── Unauthorized             unauthorized     401
        ├── IncompatibleVoice        incompatible_voice 409 latents made by another checkpoint
        ├── WorkerBusy               busy             503   the bounded queue is full (Retry-After: 2)
        ├── ModelNotReady            not_ready        503   models still loading or failed (Retry-After: 10)
        ├── ModelUnavailable         model_unavailable 500  no weights on disk and none downloadable
        ├── WorkerUnavailable        worker_unavailable 502 no worker answered (client side)
        ├── SynthesisCancelled       cancelled        499
        └── InternalWorkerError      internal         500

The ``code`` strings are the API's contract: clients map on them, never on messages.
"""

from __future__ import annotations

from typing import Any, ClassVar

from core.errors import VoxcloneError
from core.i18n import tr


class SpeechError(VoxcloneError):
    """Base of every worker error. ``message`` is safe to show to a member."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    retry_after_s: ClassVar[int | None] = None  # sent as Retry-After: try again in that many seconds

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class InvalidAudio(SpeechError):
    code = "invalid_audio"
    http_status = 400


class QualityRejected(SpeechError):
    code = "quality_rejected"
    http_status = 422


class UnsupportedLanguage(SpeechError):
    code = "unsupported_language"
    http_status = 422


class InvalidRequest(SpeechError):
    code = "invalid_request"
    http_status = 400


class PayloadTooLarge(SpeechError):
    code = "payload_too_large"
    http_status = 413


class Unauthorized(SpeechError):
    code = "unauthorized"
    http_status = 401


class IncompatibleVoice(SpeechError):
    code = "incompatible_voice"
    http_status = 409


class WorkerBusy(SpeechError):
    code = "busy"
    http_status = 503
    retry_after_s = 2  # a queue slot comes free as soon as one stream ends: a sentence takes seconds


class ModelNotReady(SpeechError):
    code = "not_ready"
    http_status = 503
    retry_after_s = 10  # loading the models takes tens of seconds


class ModelUnavailable(SpeechError):
    code = "model_unavailable"
    http_status = 500


class WorkerUnavailable(SpeechError):
    code = "worker_unavailable"
    http_status = 502


class SynthesisCancelled(SpeechError):
    code = "cancelled"
    http_status = 499


class InternalWorkerError(SpeechError):
    code = "internal"
    http_status = 500


ERRORS_BY_CODE: dict[str, type[SpeechError]] = {
    cls.code: cls
    for cls in (
        InvalidAudio,
        QualityRejected,
        UnsupportedLanguage,
        InvalidRequest,
        PayloadTooLarge,
        Unauthorized,
        IncompatibleVoice,
        WorkerBusy,
        ModelNotReady,
        ModelUnavailable,
        WorkerUnavailable,
        SynthesisCancelled,
        InternalWorkerError,
    )
}


def error_from_json(status: int, payload: Any) -> SpeechError:
    """Rebuild the error a worker sent (client side); unknown shapes become InternalWorkerError."""
    try:
        err = payload["error"]
        cls = ERRORS_BY_CODE.get(str(err["code"]), InternalWorkerError)
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
        return cls(str(err["message"]), **details)
    except (KeyError, TypeError):
        return InternalWorkerError(
            tr("The speech worker answered with HTTP {status} and no usable error.", status=status)
        )
