"""Settings from the environment and ``.env``: every knob of the bot and the worker in one place.

A wrong or missing value stops start-up with one line naming the variable and what is expected
(:func:`load_settings`). Secrets are ``SecretStr``: their repr is ``'**********'``. The speech engine's
switches travel on as one :class:`~core.engine_settings.EngineSettings` (:attr:`Settings.engine`);
nothing else of ours reads the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.engine_settings import AutoOff, AutoOnOff, DecodeDtype, EngineSettings, OnOff, VocoderDtype
from core.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/voxclone.db"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"  # where models are downloaded from (HF_ENDPOINT: a mirror)
EXPERIMENT_PREFIX = "VOXCLONE_"  # the engine's experiment switches (bench/README.md), not in .env.example


DISCORD_SETUP_HELP = """\
DISCORD_TOKEN is not set: voxclone needs a Discord bot token to start.
  1. Open https://discord.com/developers/applications and create an application ("New Application").
  2. Under "Bot", press "Reset Token" and copy the token. Enable the "Server Members" intent (automatic
     deletion when a member leaves) and, only if you want voice messages handled automatically,
     the "Message Content" intent.
  3. Put the token in .env beside the Makefile (copy .env.example):  DISCORD_TOKEN=<your token>
  4. Invite the bot with the scopes "bot" and "applications.commands" and the permissions
     Connect, Speak, Send Messages, Attach Files and Use Application Commands
     (OAuth2 > URL Generator in the same page).
Then run `make run` again."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _checked_urls(urls: list[str]) -> list[str]:
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected http:// or https:// URLs separated by commas, got {url!r}")
    return [u.rstrip("/") for u in urls]


def worker_url_list(text: str) -> list[str]:
    """Comma-separated worker URLs, as ``WORKER_URLS`` takes them; ValueError names a bad one."""
    urls = _split_csv(text)
    return _checked_urls(urls if isinstance(urls, list) else [])


class Settings(BaseSettings):
    """All configuration. Field names are the environment variables (case-insensitive).

    Names starting with ``VOXCLONE_`` are the engine's experiment switches, documented in bench/README.md
    rather than ``.env.example``; the worker gets them (and ``FAST_DECODE``) as :attr:`engine`.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Discord
    discord_token: SecretStr | None = Field(default=None, description="Bot token from the developer portal")
    dev_guild_id: int | None = Field(
        default=None, description="Sync slash commands to this one server (instant) instead of globally"
    )
    message_content_intent: bool = Field(
        default=False, description="Ask for the privileged Message Content intent (automatic voice messages)"
    )

    # Storage
    database_url: str = Field(default=DEFAULT_DATABASE_URL, description="SQLAlchemy async URL")

    # Speech worker
    worker_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated worker URLs; empty runs the engines in-process"
    )
    worker_token: SecretStr | None = Field(default=None, description="Bearer token shared with the workers")
    # The client's limits on a worker (worker/client.py): a worker that misses one is marked unhealthy.
    worker_connect_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Seconds to open a connection to a worker"
    )
    worker_first_chunk_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="Seconds without a first answer (for speech, the first audio chunk) before the worker "
        "must answer /readyz within 1 s or lose the request to the next worker",
    )
    worker_chunk_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="Seconds of silence allowed between two chunks of a stream"
    )
    worker_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds of the workers' time for a whole request (not counting playback)",
    )
    worker_probe_interval_s: float = Field(
        default=5.0, gt=0, le=600, description="Seconds between /readyz probes of an unhealthy worker"
    )
    worker_host: str = Field(default="127.0.0.1", description="Address `voxclone worker` listens on")
    worker_port: int = Field(default=8765, ge=1, le=65535, description="Port `voxclone worker` listens on")
    worker_max_queue: int = Field(default=32, ge=1, description="Synthesis requests waiting before 'busy'")
    worker_max_batch: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Requests decoded together on one GPU (empty: 32 on CUDA, 4 on CPU)",
    )
    # Longest audio each worker route accepts: the body limit alone lets 380 s of 16 kHz PCM through,
    # which Whisper works on for minutes after the bot has given up.
    worker_max_transcription_s: float = Field(
        default=300.0, gt=0, description="Longest audio /v1/transcriptions accepts (seconds)"
    )
    worker_max_clip_s: float = Field(
        default=120.0, gt=0, description="Longest clip /v1/embeddings, /v1/quality and /v1/verify accept"
    )
    worker_max_detect_s: float = Field(
        default=600.0, gt=0, description="Longest audio /v1/watermark/detect accepts (seconds)"
    )
    fast_decode: AutoOnOff | None = Field(
        default=None, description="CUDA-graph + fp16 decoding: auto (default: on when CUDA), on or off"
    )
    # The engine's experiment switches (bench/README.md). Values are case-insensitive, as they always were.
    voxclone_fast_decode: AutoOnOff = Field(
        default="auto", description="FAST_DECODE's name in the benchmarks; FAST_DECODE wins when both are set"
    )
    voxclone_decode_dtype: DecodeDtype | None = Field(
        default=None,
        description="The GPT's dtype in batched decoding (empty: float16 with graphs, else float32)",
    )
    voxclone_prefill_graphs: OnOff = Field(default="on", description="With graphs, capture the prefill too")
    voxclone_vocoder_graphs: OnOff = Field(
        default="on", description="With graphs, replay HiFi-GAN's standard shapes from graphs too"
    )
    voxclone_vocoder_dtype: VocoderDtype = Field(
        default="auto",
        description="Batched HiFi-GAN calls: auto (float16 on CUDA if it checks out), float16, float32",
    )
    voxclone_fused_norm: AutoOff = Field(
        default="auto", description="Residual add + LayerNorm as one Triton kernel where its probe agrees"
    )
    voxclone_fused_sampling: AutoOff = Field(
        default="auto", description="The end of a decode step as one Triton kernel where its probe agrees"
    )
    voxclone_fused_attention: AutoOnOff = Field(
        default="auto",
        description="Cache write + attention as one Triton kernel: where timed faster, always, never",
    )
    voxclone_pipeline: AutoOnOff = Field(
        default="auto", description="Launch each decode step before reading the last (auto: on with CUDA)"
    )

    # Models
    model_dir: Path | None = Field(
        default=None, description="A local XTTS-v2 folder (config.json, model.pth)"
    )
    model_cache_dir: Path = Field(default=Path("data/models"), description="Where downloaded models are kept")
    asr_backend: Literal["faster-whisper", "openai-whisper"] = Field(default="faster-whisper")
    asr_model: str = Field(default="small", description="Whisper model name or a local model folder")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where the models run")
    coqui_tos_agreed: bool = Field(
        default=False, description="You accept the Coqui Public Model License (non-commercial) for XTTS-v2"
    )
    hf_endpoint: str = Field(
        default=DEFAULT_HF_ENDPOINT, description="Where models are downloaded from (a Hugging Face mirror)"
    )

    # Assistant (OpenAI-compatible chat completions)
    llm_base_url: str | None = Field(default=None, description="e.g. https://api.openai.com/v1")
    llm_api_key: SecretStr | None = Field(default=None)
    llm_model: str = Field(default="gpt-4o-mini")
    llm_chunk_timeout_s: float = Field(
        default=20.0,
        ge=1.0,
        le=600.0,
        description="Seconds of silence allowed before and between answer chunks",
    )
    llm_total_timeout_s: float = Field(
        default=90.0, ge=5.0, le=1800.0, description="Seconds allowed for a whole answer"
    )

    # Operations
    health_file: Path | None = Field(
        default=None, description="The bot writes a heartbeat here for `voxclone health` (containers)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    log_format: Literal["json", "text"] = Field(default="json")

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, values: object) -> object:
        """``NAME=`` (as ``.env.example`` has it) means "not set": the default applies, never ``''``.

        Without this an empty ``DEV_GUILD_ID=`` fails as "not an integer" and an empty ``MODEL_DIR=``
        becomes ``Path('')``, the current folder.
        """
        if isinstance(values, Mapping):
            return {k: v for k, v in values.items() if not (isinstance(v, str) and not v.strip())}
        return values

    @field_validator("worker_urls", mode="before")
    @classmethod
    def _parse_urls(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("worker_urls")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        return _checked_urls(urls)

    @field_validator("worker_timeout_s")
    @classmethod
    def _check_worker_timeouts(cls, total: float, info: ValidationInfo) -> float:
        for name in ("worker_connect_timeout_s", "worker_first_chunk_timeout_s", "worker_chunk_timeout_s"):
            part = info.data.get(name)
            if part is not None and part > total:
                raise ValueError(f"must be at least {name.upper()} ({part:g} s): it bounds the whole request")
        return total

    @field_validator("llm_base_url")
    @classmethod
    def _check_llm_url(cls, url: str | None) -> str | None:
        if url is not None and url.strip() and not url.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL such as https://api.openai.com/v1")
        return url.strip().rstrip("/") or None if url is not None else None

    @field_validator("hf_endpoint")
    @classmethod
    def _check_hf_endpoint(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL such as https://huggingface.co")
        return url.strip().rstrip("/")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "fast_decode",
        "voxclone_fast_decode",
        "voxclone_decode_dtype",
        "voxclone_prefill_graphs",
        "voxclone_vocoder_graphs",
        "voxclone_vocoder_dtype",
        "voxclone_fused_norm",
        "voxclone_fused_sampling",
        "voxclone_fused_attention",
        "voxclone_pipeline",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: object) -> object:
        """The engine's switches were always read case-insensitively (``On``, `` float16 ``)."""
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def engine(self) -> EngineSettings:
        """The speech engine's switches, for ``worker.local`` and ``worker.serving`` (and the benchmark)."""
        return EngineSettings(
            fast_decode=self.fast_decode or self.voxclone_fast_decode,
            decode_dtype=self.voxclone_decode_dtype,
            prefill_graphs=self.voxclone_prefill_graphs,
            vocoder_graphs=self.voxclone_vocoder_graphs,
            vocoder_dtype=self.voxclone_vocoder_dtype,
            fused_norm=self.voxclone_fused_norm,
            fused_sampling=self.voxclone_fused_sampling,
            fused_attention=self.voxclone_fused_attention,
            pipeline=self.voxclone_pipeline,
        )

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, url: str) -> str:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "expected sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user:pass@host/db"
            )
        return url

    def require_discord_token(self) -> SecretStr:
        """The token, or a ConfigError that explains how to create one."""
        if self.discord_token is None or not self.discord_token.get_secret_value().strip():
            raise ConfigError(DISCORD_SETUP_HELP)
        return self.discord_token


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | None = ".env") -> Settings:
    """Build Settings, turning validation errors into one line per bad variable.

    ``environ`` replaces the process environment (tests pass a dict instead of patching os.environ).
    """
    try:
        if environ is None:
            return Settings(_env_file=env_file)  # type: ignore[call-arg]
        return _settings_from_mapping(environ)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "settings"
            message = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}: {message} (got {_safe_input(name, err.get('input'))})")
        raise ConfigError("; ".join(lines)) from None


def _settings_from_mapping(environ: Mapping[str, str]) -> Settings:
    values = {k.lower(): v for k, v in environ.items() if k.lower() in Settings.model_fields}
    return Settings.model_validate(values)


def _safe_input(name: str, value: object) -> str:
    if "TOKEN" in name or "KEY" in name or "PASSWORD" in name:
        return "a hidden value"
    text = repr(value)
    if name.endswith("_URL") or name.endswith("_URLS"):
        text = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", text)  # never echo a password
    return text if len(text) <= 80 else text[:77] + "..."
