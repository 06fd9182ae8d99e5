"""The speech subcommands of ``voxclone``: serve the worker API, and try every engine without Discord.

``register(subparsers)`` adds ``worker``, ``say``, ``transcribe``, ``check-voice``, ``verify``,
``watermark detect`` and ``dev make-test-model``; each handler returns the exit code. CLIP is any file
ffmpeg reads (voice messages, mp3, m4a, wav, webm...), decoded by ``core.intake``. The tools run the
engines in this process, each loading only what it uses (``say``: XTTS-v2, the quality gate and the
watermark; ``transcribe``: Whisper) and saying what and how long on stderr, or on a worker with
``--worker-url``. Errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from core.audio import (
    ANALYSIS_SAMPLE_RATE,
    CONDITIONING_SAMPLE_RATE,
    OUTPUT_SAMPLE_RATE,
    OUTPUT_SAMPLE_WIDTH,
)
from core.errors import ConfigError, VoxcloneError
from core.logs import configure_logging
from core.settings import Settings, load_settings, worker_url_list
from worker.service import SpeechService
from worker.types import FloatArray, QualityReport, SpeechRequest
from worker.voices import VoiceLibrary

if TYPE_CHECKING:
    from worker.service import SpeechTools

log = logging.getLogger("voxclone.worker.cli")

MAX_CLIP_SECONDS: Final = 600.0  # s: longer files are refused before decoding
MAX_CLIP_BYTES: Final = 200 * 1024 * 1024
DECODE_TIMEOUT_S: Final = 60.0
_MIB: Final = 1024 * 1024
_T = TypeVar("_T")

Handler = Callable[[argparse.Namespace], int]


def _command(func: Callable[[argparse.Namespace], int]) -> Handler:
    """Turn every failure into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except VoxcloneError as exc:
            return _fail(exc.message)
        except OSError as exc:
            return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        except KeyboardInterrupt:
            return 130
        except Exception as exc:
            log.debug("command failed", exc_info=True)
            return _fail(f"{type(exc).__name__}: {exc} (set LOG_LEVEL=DEBUG for details)")

    return run


def _fail(message: str) -> int:
    print(f"voxclone: {message}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    level = "DEBUG" if settings.log_level == "DEBUG" else "WARNING"  # tools stay quiet unless debugging
    token = settings.worker_token.get_secret_value() if settings.worker_token else None
    configure_logging(level, "text", secrets=[token])
    return settings


def _clip(path: str, sample_rate: int) -> tuple[FloatArray, int]:
    from core.intake import decode_audio

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such file")
    audio = decode_audio(
        file,
        sample_rate=sample_rate,
        max_seconds=MAX_CLIP_SECONDS,
        max_bytes=MAX_CLIP_BYTES,
        timeout_s=DECODE_TIMEOUT_S,
    )
    return audio.pcm, audio.sample_rate


def _note(line: str) -> None:
    """Progress for the person at the terminal, on stderr (stdout is for results)."""
    print(line, file=sys.stderr, flush=True)


def _worker_urls(args: argparse.Namespace) -> list[str] | None:
    """``--worker-url``'s comma-separated list, None without it."""
    if not args.worker_url:
        return None
    try:
        return worker_url_list(args.worker_url) or None
    except ValueError as exc:
        raise ConfigError(f"--worker-url: {exc}") from None


def _with_service(
    args: argparse.Namespace,
    settings: Settings,
    op: Callable[[SpeechService], Awaitable[_T]],
    load: Callable[[], Awaitable[SpeechService]],
) -> _T:
    """Run ``op`` on a worker (``--worker-url``) or on the engines ``load`` loads here, then close it."""

    async def main() -> _T:
        from worker.factory import create_http_service

        if urls := _worker_urls(args):
            service: SpeechService = create_http_service(settings, urls)
        else:
            started = time.perf_counter()
            service = await load()
            _note(f"loaded in {time.perf_counter() - started:.1f} s")
        try:
            return await op(service)
        finally:
            await service.aclose()

    with contextlib.redirect_stdout(sys.stderr):  # model loaders print banners; stdout is for results
        return asyncio.run(main())


def _with_synthesis(
    args: argparse.Namespace, settings: Settings, op: Callable[[SpeechService], Awaitable[_T]]
) -> _T:
    """``op`` on a worker or on the engines cloning needs, loaded here: XTTS-v2, the quality gate and the
    watermark (no Whisper: ``say`` works without a Whisper model)."""

    async def load() -> SpeechService:
        from worker.factory import load_synthesis_service, resolve_xtts

        xtts_dir = await asyncio.to_thread(resolve_xtts, settings, model_dir=args.model_dir)
        _note(f"loading XTTS-v2 from {xtts_dir}, the quality gate and the watermark ...")
        return await load_synthesis_service(settings, xtts_dir)

    return _with_service(args, settings, op, load)


def with_all_engines(
    args: argparse.Namespace, settings: Settings, op: Callable[[SpeechService], Awaitable[_T]]
) -> _T:
    """``op`` on a worker or on every engine loaded here (XTTS-v2, Whisper, the quality gate, speaker
    verification and the watermark): what a consent check needs."""

    async def load() -> SpeechService:
        from worker.factory import load_local_service, resolve_local_models

        models = await asyncio.to_thread(resolve_local_models, settings, model_dir=args.model_dir)
        _note("loading XTTS-v2, Whisper, the quality gate, speaker verification and the watermark ...")
        return await load_local_service(settings, models)

    return _with_service(args, settings, op, load)


def _with_tools(
    args: argparse.Namespace, settings: Settings, op: Callable[[SpeechTools], Awaitable[_T]]
) -> _T:
    """Run ``op`` on a worker (``--worker-url``) or on just the one engine it needs, loaded here."""

    async def main() -> _T:
        from worker.factory import create_http_service

        overrides = {k: getattr(args, k) for k in ("asr_model", "asr_backend") if getattr(args, k, None)}
        local = settings.model_copy(update=overrides)
        urls = _worker_urls(args)
        tools: SpeechTools
        if urls:
            tools = create_http_service(local, urls)
        else:
            from worker.local import LocalTools  # torch: only when the engines run here

            tools = LocalTools(local, announce=_note)
        try:
            return await op(tools)
        finally:
            await tools.aclose()

    with contextlib.redirect_stdout(sys.stderr):
        return asyncio.run(main())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# ---- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spoken:
    audio_s: float
    first_chunk_s: float
    total_s: float
    warnings: list[str]


async def speak_to_wav(
    service: SpeechService, pcm: FloatArray, rate: int, args: argparse.Namespace
) -> _Spoken:
    """Clone the voice in ``pcm``, then stream the speech into ``args.out`` as it arrives."""
    voice = await service.embed(pcm, rate)
    request = SpeechRequest(args.text, args.language, voice.embedding, max_new_tokens=args.max_tokens)
    started = time.perf_counter()
    first_at: float | None = None
    total = 0
    try:
        with wave.open(str(args.out), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(OUTPUT_SAMPLE_WIDTH)
            wav.setframerate(OUTPUT_SAMPLE_RATE)
            async for chunk in service.synthesize(request):
                if first_at is None:
                    first_at = time.perf_counter() - started
                wav.writeframes(chunk)
                total += len(chunk)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.out)  # no half-written WAV that looks like a result
        raise
    audio_s = total / OUTPUT_SAMPLE_WIDTH / OUTPUT_SAMPLE_RATE
    return _Spoken(audio_s, first_at or 0.0, time.perf_counter() - started, voice.quality.warnings)


@_command
def cmd_say(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pcm, rate = _clip(args.voice, CONDITIONING_SAMPLE_RATE)
    spoken = _with_synthesis(args, settings, lambda service: speak_to_wav(service, pcm, rate, args))
    for warning in spoken.warnings:
        print(f"note: {warning}", file=sys.stderr)
    print(
        f"wrote {args.out}: {spoken.audio_s:.2f} s of speech at {OUTPUT_SAMPLE_RATE // 1000} kHz "
        f"(first audio after {spoken.first_chunk_s:.2f} s, done in {spoken.total_s:.2f} s)"
    )
    return 0


@_command
def cmd_transcribe(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pcm, rate = _clip(args.clip, ANALYSIS_SAMPLE_RATE)
    result = _with_tools(args, settings, lambda tools: tools.transcribe(pcm, rate, args.language))
    if args.json:
        _print_json(asdict(result))
    else:
        print(result.text.strip())
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    return 0


def format_report(report: QualityReport) -> str:
    """The quality report as a few lines a member can read."""
    kept = ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in report.kept) or "none"
    lines = [
        "accepted: this clip can be used to clone the voice" if report.accepted else "REJECTED",
        f"duration {report.duration_s:.1f} s, speech {report.speech_s:.1f} s, kept for cloning: {kept}",
        f"speech level {report.level_dbfs:.1f} dBFS, peak {report.peak_dbfs:.1f} dBFS, "
        f"clipped {100 * report.clipped_fraction:.2f} %",
        f"noise floor {report.noise_dbfs:.1f} dBFS, signal-to-noise {report.snr_db:.1f} dB",
    ]
    lines += [f"- {reason}" for reason in report.reasons]
    lines += [f"note: {warning}" for warning in report.warnings]
    return "\n".join(lines)


@_command
def cmd_check_voice(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pcm, rate = _clip(args.clip, CONDITIONING_SAMPLE_RATE)
    report = _with_tools(args, settings, lambda tools: tools.check_quality(pcm, rate))
    if args.json:
        _print_json(asdict(report))
    else:
        print(format_report(report))
    if args.plot:
        from worker.analysis.plot import render_spectrogram

        Path(args.plot).write_bytes(render_spectrogram(pcm, rate, report.kept))
        print(f"spectrogram with the kept speech highlighted: {args.plot}", file=sys.stderr)
    return 0 if report.accepted else 1


@_command
def cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pcm_a, rate = _clip(args.clip_a, ANALYSIS_SAMPLE_RATE)
    pcm_b, _ = _clip(args.clip_b, ANALYSIS_SAMPLE_RATE)
    check = _with_tools(args, settings, lambda tools: tools.compare_speakers(pcm_a, pcm_b, rate))
    if args.json:
        _print_json(asdict(check))
    else:
        verdict = "same speaker" if check.same_speaker else "different speakers"
        print(f"similarity {check.similarity:.3f} (threshold {check.threshold:.2f}): {verdict}")
    return 0 if check.same_speaker else 1


@_command
def cmd_watermark_detect(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pcm, rate = _clip(args.file, OUTPUT_SAMPLE_RATE)
    result = _with_tools(args, settings, lambda tools: tools.detect_watermark(pcm, rate))
    if args.json:
        _print_json(asdict(result))
    elif result.detected:
        print(f"watermark found (confidence {result.confidence:.2f}): this audio was made by voxclone")
    else:
        print(f"no watermark found (confidence {result.confidence:.2f})")
    return 0 if result.detected else 1


@_command
def cmd_make_test_model(args: argparse.Namespace) -> int:
    from worker.tts.testmodel import make_test_model

    _settings(args)
    started = time.perf_counter()
    folder = make_test_model(Path(args.dir), size=args.size, seed=args.seed)
    files = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
    elapsed = time.perf_counter() - started
    print(f"wrote a random-weight {args.size} XTTS-v2 checkpoint to {folder} ({files}) in {elapsed:.1f} s")
    return 0


@_command
def cmd_worker(args: argparse.Namespace) -> int:
    from worker.api.serve import serve_worker

    settings = load_settings()
    return serve_worker(
        settings,
        model_dir=args.model_dir,
        host=args.host or settings.worker_host,
        port=args.port or settings.worker_port,
        max_body_bytes=args.max_body_mb * _MIB,
        voices=args.voice_library(settings.database_url) if args.voice_library else None,
    )


# ---- argparse ----------------------------------------------------------------------------------


def _add(sub: Any, name: str, func: Handler, summary: str, details: str = "") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {details}".strip()
    )
    parser.set_defaults(func=func)
    return parser


def _engine_options(parser: argparse.ArgumentParser, *, xtts: bool = False, asr: bool = False) -> None:
    parser.add_argument(
        "--worker-url",
        metavar="URL[,URL...]",
        help="use these workers (comma-separated, as in WORKER_URLS: when one fails or hangs, the next "
        "takes over, with a warning) instead of the engines in this process",
    )
    if xtts:
        parser.add_argument(
            "--model-dir", type=Path, metavar="DIR", help="a local XTTS-v2 folder (MODEL_DIR)"
        )
    if asr:
        parser.add_argument(
            "--asr-model", metavar="NAME_OR_DIR", help="Whisper model name or folder (ASR_MODEL)"
        )
        parser.add_argument(
            "--asr-backend",
            choices=["faster-whisper", "openai-whisper"],
            help="Whisper implementation (ASR_BACKEND)",
        )


def register(subparsers: Any, voice_library: Callable[[str], VoiceLibrary] | None = None) -> None:
    """Add the speech subcommands to ``voxclone``'s subparsers.

    ``voice_library``: makes the consented voices' library from DATABASE_URL for ``voxclone worker``
    (the bot's side passes the database's; the worker's layer does not import storage).
    """
    p = _add(subparsers, "worker", cmd_worker, "serve the speech API (Worker API v1) over HTTP",
             "Host, port and token come from WORKER_HOST, WORKER_PORT and WORKER_TOKEN. On first start the "
             "models are downloaded into MODEL_CACHE_DIR (XTTS-v2 needs COQUI_TOS_AGREED=1).")  # fmt: skip
    p.add_argument("--model-dir", type=Path, metavar="DIR", help="a local XTTS-v2 folder (MODEL_DIR)")
    p.add_argument("--host", help="listen address (WORKER_HOST)")
    p.add_argument("--port", type=int, help="listen port (WORKER_PORT)")
    p.add_argument("--max-body-mb", type=int, default=48, help="largest request body in MiB (default 48)")
    p.set_defaults(voice_library=voice_library)

    p = _add(subparsers, "say", cmd_say, "speak TEXT in the voice of CLIP into a WAV file",
             "CLIP is a recording of the voice to clone (6-30 s of clear speech works best).")  # fmt: skip
    p.add_argument(
        "--voice", required=True, metavar="CLIP", help="audio or video file with the voice to clone"
    )
    p.add_argument("--text", required=True, help="what to say")
    p.add_argument("--language", default="en", help="language of TEXT (en, fr, de, ...; default en)")
    p.add_argument("--out", required=True, metavar="FILE.wav", help="where to write the 24 kHz mono WAV")
    p.add_argument(
        "--max-tokens", type=int, metavar="N", help="at most N audio tokens (46 ms each) per sentence"
    )
    _engine_options(p, xtts=True)

    p = _add(subparsers, "transcribe", cmd_transcribe, "print what is said in CLIP")
    p.add_argument("clip", metavar="CLIP", help="audio or video file")
    p.add_argument("--language", help="spoken language (default: detect)")
    p.add_argument("--json", action="store_true", help="print text, language and segments as JSON")
    _engine_options(p, asr=True)

    p = _add(subparsers, "check-voice", cmd_check_voice, "run the enrollment quality gate on CLIP",
             "Exit status 0 when the clip is accepted, 1 when rejected (with the reasons).")  # fmt: skip
    p.add_argument("clip", metavar="CLIP", help="audio or video file")
    p.add_argument("--plot", metavar="FILE.png", help="draw the spectrogram with the kept speech highlighted")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _engine_options(p)

    p = _add(subparsers, "verify", cmd_verify, "say whether two clips are the same speaker",
             "Exit status 0 for the same speaker, 1 for different speakers.")  # fmt: skip
    p.add_argument("clip_a", metavar="CLIP_A")
    p.add_argument("clip_b", metavar="CLIP_B")
    p.add_argument("--json", action="store_true", help="print the score as JSON")
    _engine_options(p)

    p = _add(subparsers, "watermark", cmd_watermark_detect, "inspect the inaudible watermark")
    wm = p.add_subparsers(dest="watermark_command", metavar="ACTION", required=True)
    d = _add(wm, "detect", cmd_watermark_detect, "check FILE for voxclone's watermark",
             "Exit status 0 when marked, 1 when not, 2 on error.")  # fmt: skip
    d.add_argument("file", metavar="FILE")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    _engine_options(d)

    p = _add(subparsers, "dev", cmd_make_test_model, "developer tools")
    dev = p.add_subparsers(dest="dev_command", metavar="TOOL", required=True)
    m = _add(dev, "make-test-model", cmd_make_test_model, "write a random-weight XTTS-v2 checkpoint to DIR",
             "The files of the real download (config.json, model.pth, vocab.json): "
             "for tests, demos and benchmarks.")  # fmt: skip
    m.add_argument("dir", metavar="DIR")
    m.add_argument(
        "--size", choices=["tiny", "full"], default="tiny", help="tiny (93 MB) or full size (1.9 GB)"
    )
    m.add_argument("--seed", type=int, default=0, help="random seed of the weights")
