"""Structured logging: one line per event, JSON by default, ids rather than names.

Never pass a token, a secret or member audio to a logger: the formatter also redacts any value of a
known secret that slips into a message, as a second line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class _Redactor:
    def __init__(self) -> None:
        self.secrets: list[str] = []

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 6 and secret not in self.secrets:
            self.secrets.append(secret)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text


REDACT = _Redactor()


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...extra}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": REDACT(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = REDACT(self.formatException(record.exc_info))
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return REDACT(super().format(record))


def configure_logging(
    level: str = "INFO", fmt: str = "json", secrets: list[str | None] | None = None
) -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    for secret in secrets or []:
        REDACT.add(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_voxclone", False):
            root.removeHandler(old)
    handler._voxclone = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # discord.py logs the gateway at INFO; keep its chatter down unless debugging.
    if level != "DEBUG":
        noisy_loggers = ("discord.client", "discord.gateway", "discord.http", "httpx", "httpcore")
        for noisy in (*noisy_loggers, "alembic.runtime.plugins"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
