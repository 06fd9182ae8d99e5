"""``voxclone voices``: the consented voices that the worker's OpenAI-shaped API serves.

``statement NAME`` prints what the speaker reads; ``add NAME --reference CLIP --consent CLIP`` checks
the reading the way ``/enroll`` does (``worker.voices``) and stores the voice with its consent record,
or says exactly why not and stores nothing; ``list`` and ``remove NAME`` manage them. The voices live
in DATABASE_URL: the worker that serves them must use the same database.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import mimetypes
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from core.errors import ConfigError
from core.settings import Settings
from storage.repos.api_voices import MAX_CONSENT_RECORDING_BYTES, ApiVoiceLibrary
from worker.service import SpeechService
from worker.voices import CLIP_SAMPLE_RATE, ApiVoiceInfo, Clip, add_voice, check_name, consent_statement

MAX_CLIP_SECONDS: Final = 120.0  # s: a consent reading or a reference clip, as /enroll takes them
MAX_REFERENCE_BYTES: Final = 200 * 1024 * 1024
_T = TypeVar("_T")


def _read_clip(path: str, max_bytes: int) -> Clip:
    from core.intake import decode_audio

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such file")
    data = file.read_bytes()
    audio = decode_audio(
        data, sample_rate=CLIP_SAMPLE_RATE, max_seconds=MAX_CLIP_SECONDS, max_bytes=max_bytes
    )
    mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return Clip(data=data, mime=mime, pcm=audio.pcm, sample_rate=audio.sample_rate)


def _operator() -> str:
    """Who ran the command, for the consent record."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user} (voxclone voices add)"


def _with_library(settings: Settings, op: Callable[[ApiVoiceLibrary], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        async with ApiVoiceLibrary(settings.database_url) as library:
            return await op(library)

    return asyncio.run(main())


def cmd_statement(args: argparse.Namespace, settings: Settings) -> int:
    print(consent_statement(check_name(args.name)))
    return 0


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli import with_all_engines

    name = check_name(args.name)
    consent = _read_clip(args.consent, MAX_CONSENT_RECORDING_BYTES)
    reference = _read_clip(args.reference, MAX_REFERENCE_BYTES)
    # Before the engines load (tens of seconds): the database opens and the name is free.
    if _with_library(settings, lambda library: library.get(name)) is not None:
        raise ConfigError(f"a voice called {name!r} exists already: `voxclone voices remove` it first")

    async def add(service: SpeechService) -> ApiVoiceInfo:
        async with ApiVoiceLibrary(settings.database_url) as library:
            return await add_voice(
                service,
                library,
                name,
                consent=consent,
                reference=reference,
                added_by=_operator(),
                language=args.language,
            )

    info = with_all_engines(args, settings, add)
    print(
        f"added voice {info.name!r} ({info.language}, {info.speech_seconds:.1f} s of reference speech) with "
        f"its consent recording; the worker serves it as voice={info.name!r}"
    )
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    voices = _with_library(settings, lambda library: library.list())
    if args.json:
        rows = [
            {
                "name": v.name,
                "language": v.language,
                "model_id": v.model_id,
                "created_at": v.created_at.isoformat(),
                "added_by": v.added_by,
            }
            for v in voices
        ]
        print(json.dumps(rows, indent=2))
    elif not voices:
        print("no voices yet: add one with `voxclone voices add NAME --reference CLIP --consent CLIP`")
    for v in voices if not args.json else []:
        print(f"{v.name}\t{v.language}\tadded {v.created_at:%Y-%m-%d %H:%M} UTC by {v.added_by}")
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    name = check_name(args.name)
    removed = _with_library(settings, lambda library: library.remove(name))
    if not removed:
        raise ConfigError(f"there is no voice called {name!r} (`voxclone voices list` shows them)")
    print(f"removed voice {name!r} and its consent recording")
    return 0


def register(subparsers: Any) -> None:
    """Add ``voxclone voices`` to ``voxclone``'s subparsers (with ``worker.cli``'s helpers)."""
    from worker.cli import _add as add
    from worker.cli import _command, _settings

    def run(func: Callable[[argparse.Namespace, Settings], int]) -> Callable[[argparse.Namespace], int]:
        return _command(lambda args: func(args, _settings(args)))

    p = add(subparsers, "voices", run(cmd_list), "manage the consented voices the worker's OpenAI API serves",
            "Each voice is stored with a recording of its speaker reading a consent statement.")  # fmt: skip
    sub = p.add_subparsers(dest="voices_command", metavar="ACTION", required=True)

    s = add(sub, "statement", run(cmd_statement), "print the consent statement NAME must read aloud")
    s.add_argument("name", metavar="NAME", help="the speaker's name, which is also the voice's name")

    a = add(sub, "add", run(cmd_add), "add NAME's voice, checked against a recording of their consent",
            "The consent clip must say `voxclone voices statement NAME` (checked with Whisper) in the same "
            "voice as the reference clip (checked by speaker verification), as /enroll checks. Nothing is "
            "stored when a check fails.")  # fmt: skip
    a.add_argument("name", metavar="NAME", help="the speaker's name, as read in the statement")
    a.add_argument("--reference", required=True, metavar="CLIP", help="6-30 s of NAME speaking naturally")
    a.add_argument("--consent", required=True, metavar="CLIP", help="NAME reading the consent statement")
    a.add_argument("--language", default="en", help="what the voice speaks by default (default en)")
    a.add_argument(
        "--worker-url", metavar="URL", help="use this worker instead of the engines in this process"
    )
    a.add_argument("--model-dir", type=Path, metavar="DIR", help="a local XTTS-v2 folder (MODEL_DIR)")

    ls = add(sub, "list", run(cmd_list), "list the voices")
    ls.add_argument("--json", action="store_true", help="print them as JSON")
    p.set_defaults(json=False)

    r = add(sub, "remove", run(cmd_remove), "remove NAME's voice and its consent recording")
    r.add_argument("name", metavar="NAME")


__all__ = ["register"]
