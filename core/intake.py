"""Audio intake: the one place untrusted media is parsed, by ffprobe/ffmpeg in a bounded subprocess.

Any upload becomes mono float32 PCM at the rate asked for, or an ``IntakeError`` a member can act on.
Files only, allow-listed demuxers and decoders, size, duration and wall-clock caps. Uploads given as
bytes are read from an anonymous in-memory file (``memfd_create``), never from the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import ffmpeg
import numpy as np
import numpy.typing as npt
from babel.numbers import format_decimal
from ffmpeg._utils import convert_kwargs_to_cmd_line_args

from core.errors import (
    AudioTooLarge,
    AudioTooLong,
    CorruptAudio,
    EmptyAudio,
    IntakeTimeout,
    NotAudio,
    UnsupportedCodec,
)
from core.i18n import N_, current_locale, tr

log = logging.getLogger(__name__)

# Member-facing: marked here, translated where an error is raised (in the member's locale).
SEND_AUDIO_HINT = N_("Send a voice message or an mp3/ogg/m4a/wav file.")
CORRUPT_MESSAGE = N_(
    "That file is damaged or incomplete (it may not have finished uploading). "
    "Record it again or send the file again."
)
EMPTY_MESSAGE = N_("That file contains no sound I could decode. Check the recording and send it again.")
NOT_READABLE = N_("That file is not audio I can read.")
PROTOCOL_WHITELIST = "file,pipe"  # no http, tcp, rtmp, concat of other URLs...
# Demuxers by ffmpeg name; a name matches any part of a multi-name demuxer ("mov" → "mov,mp4,m4a,...").
DEMUXER_WHITELIST = (
    "ogg", "matroska", "webm", "mp3", "wav", "w64", "flac", "mov", "mp4", "m4a", "aac", "aiff",
)  # fmt: skip
# Decoders by ffmpeg decoder name (what -codec_whitelist checks).
DECODER_WHITELIST = (
    "opus", "libopus", "vorbis", "libvorbis", "mp3", "mp3float", "mp2", "mp2float", "aac", "aac_fixed",
    "flac", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be",
    "pcm_f32le", "pcm_f32be", "pcm_f64le", "pcm_u8", "pcm_s8", "pcm_alaw", "pcm_mulaw",
)  # fmt: skip
# The same codecs by codec id, as ffprobe reports them.
AUDIO_CODECS = frozenset(DECODER_WHITELIST) - {"libopus", "libvorbis", "mp3float", "mp2float", "aac_fixed"}
PCM_BYTES_PER_SAMPLE = 4  # f32le
DURATION_SLACK_S = 0.5  # s decoded past the cap, so that "longer than the cap" is visible in the output
DURATION_SHORTFALL_S = 0.5  # s: decoding this much less than the container declares means truncation
# ffmpeg messages (lowercased) that mean the file is damaged rather than of the wrong kind.
CORRUPTION_MARKERS = (
    "moov atom not found", "ended prematurely", "partial file", "truncat", "invalid data found",
    "error while decoding", "decode_frame() failed", "invalid frame", "corrupt",
)  # fmt: skip
# First bytes of the containers we accept: such a file that ffprobe cannot open is damaged, not foreign.
CONTAINER_MAGIC = (b"OggS", b"ID3", b"RIFF", b"fLaC", b"\x1aE\xdf\xa3", b"FORM")
OGG_PAGE_HEADER = 27  # bytes before the segment table of an Ogg page
INPUT_OPTIONS = {"protocol_whitelist": PROTOCOL_WHITELIST, "format_whitelist": ",".join(DEMUXER_WHITELIST)}
# Older versions staged uploads in folders of this name in the system temp folder (see sweep_stale_...).
STALE_DIR_PREFIX: Final = "voxclone-intake-"
STALE_DIR_AGE_S: Final = 300.0  # s: far past any intake's time limit, so no running intake is touched


@dataclass(frozen=True)
class AudioProbe:
    """What ffprobe found in a file, before any decoding."""

    format_name: str
    codec_name: str
    duration_s: float | None  # None when the container does not say (e.g. a browser-recorded webm)
    sample_rate: int
    channels: int


@dataclass
class DecodedAudio:
    """Mono float32 PCM in [-1, 1] at ``sample_rate`` Hz, and where it came from."""

    pcm: npt.NDArray[np.float32]
    sample_rate: int
    duration_s: float
    format_name: str
    codec_name: str


def _fmt_duration(seconds: float) -> str:
    """A length a member reads at a glance: "45 s", "2 min 5 s", "2 h 0 min"."""
    whole = round(seconds)
    if whole < 60:
        return tr("{seconds} s", seconds=_decimal(seconds, "0" if seconds >= 10 else "0.0"))
    if whole < 3600:
        return tr("{minutes} min {seconds} s", minutes=whole // 60, seconds=whole % 60)
    return tr("{hours} h {minutes} min", hours=whole // 3600, minutes=whole % 3600 // 60)


def _fmt_bytes(size: int) -> str:
    if size >= 100_000:
        return tr("{size} MB", size=_decimal(size / 1_000_000, "0.0"))
    return tr("{size} kB", size=_decimal(size / 1000, "0"))


def _decimal(value: float, pattern: str) -> str:
    """``value`` in the reader's notation ("1.5" in English, "1,5" in French)."""
    return format_decimal(value, format=pattern, locale=current_locale())


def _with_hint(sentence: str) -> str:
    """A refusal and what to send instead, both in the member's language."""
    return f"{sentence} {tr(SEND_AUDIO_HINT)}"


def _looks_like_audio_container(head: bytes) -> bool:
    return head.startswith(CONTAINER_MAGIC) or head[4:8] == b"ftyp"


def _ogg_is_truncated(fh: BinaryIO, size: int) -> bool:
    """True when the last Ogg page runs past the end of the file (an upload cut short).

    ffmpeg silently drops a partial last page, so a cut voice message would otherwise pass as a
    shorter one. Only page headers are read: 27 bytes and a segment table per page.
    """
    offset = 0
    while offset < size:
        fh.seek(offset)
        header = fh.read(OGG_PAGE_HEADER)
        if len(header) < OGG_PAGE_HEADER:
            return True
        if header[:4] != b"OggS":
            return False  # trailing bytes that are not a page: ffmpeg ignores them, so do we
        segments = fh.read(header[26])
        if len(segments) < header[26]:
            return True
        offset += OGG_PAGE_HEADER + len(segments) + sum(segments)
    return offset > size


def probe_argv(url: str) -> list[str]:
    """The ffprobe command line for ``url`` (a ``file:`` URL)."""
    opts = {"v": "error", "of": "json", "show_format": None, "show_streams": None, **INPUT_OPTIONS}
    return ["ffprobe", "-hide_banner", *convert_kwargs_to_cmd_line_args(opts), url]


def decode_argv(url: str, *, sample_rate: int, max_seconds: float) -> list[str]:
    """The ffmpeg command line that decodes the first audio stream of ``url`` to f32le on stdout."""
    stream = ffmpeg.input(url, codec_whitelist=",".join(DECODER_WHITELIST), **INPUT_OPTIONS)
    out = stream.output(
        "pipe:1", map="0:a:0", vn=None, sn=None, dn=None, ac=1, ar=sample_rate, acodec="pcm_f32le",
        format="f32le", t=f"{max_seconds + DURATION_SLACK_S:.3f}",
    )  # fmt: skip
    argv: list[str] = out.global_args("-nostdin", "-hide_banner", "-loglevel", "error").compile()
    return argv


def _probe_failure(stderr: str, source: _Input) -> Exception:
    text = stderr.lower()
    with source.open() as fh:
        head = fh.read(16)
    if "not on whitelist" in text:
        return NotAudio(_with_hint(tr(NOT_READABLE)))
    if head.startswith(b"OggS") and not source.ogg_is_truncated():
        return EmptyAudio(tr(EMPTY_MESSAGE))  # complete Ogg headers and no audio packets after them
    if "moov atom not found" in text or _looks_like_audio_container(head):
        return CorruptAudio(tr(CORRUPT_MESSAGE))
    return NotAudio(_with_hint(tr(NOT_READABLE)))


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def interpret_probe(info: dict[str, Any]) -> AudioProbe:
    """Turn ffprobe's JSON into an :class:`AudioProbe`, refusing files without an allowed audio stream."""
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not audio:
        raise NotAudio(_with_hint(tr("That file has no sound in it.")))
    first = audio[0]
    codec = str(first.get("codec_name") or "unknown")
    if codec not in AUDIO_CODECS:
        raise UnsupportedCodec(
            tr(
                "That file's sound is encoded as {codec}, which I don't accept. "
                "Send a voice message or an mp3/ogg/m4a/wav/flac file.",
                codec=codec,
            )
        )
    duration = _float_or_none(first.get("duration"))
    if duration is None:
        duration = _float_or_none(fmt.get("duration"))
    return AudioProbe(
        format_name=str(fmt.get("format_name") or "unknown"),
        codec_name=codec,
        duration_s=duration,
        sample_rate=int(_float_or_none(first.get("sample_rate")) or 0),
        channels=int(first.get("channels") or 0),
    )


def _check_length(probe: AudioProbe, max_seconds: float) -> None:
    if probe.duration_s is not None and probe.duration_s > max_seconds + DURATION_SLACK_S / 2:
        raise AudioTooLong(
            tr(
                "That recording is {duration} long; the limit is {limit}. Send a shorter clip.",
                duration=_fmt_duration(probe.duration_s),
                limit=_fmt_duration(max_seconds),
            )
        )


def interpret_decode(
    probe: AudioProbe, stdout: bytes, stderr: str, returncode: int, *, sample_rate: int, max_seconds: float
) -> DecodedAudio:
    """Check what ffmpeg produced against what the probe promised; raise the matching IntakeError."""
    usable = len(stdout) - len(stdout) % PCM_BYTES_PER_SAMPLE
    pcm = np.frombuffer(stdout[:usable], dtype="<f4").astype(np.float32)
    decoded_s = pcm.size / sample_rate
    text = stderr.lower()
    if "not on whitelist" in text and pcm.size == 0:
        raise UnsupportedCodec(_with_hint(tr("That file's sound is encoded in a way I don't accept.")))
    if decoded_s > max_seconds + DURATION_SLACK_S / 2:
        raise AudioTooLong(
            tr(
                "That recording is longer than the limit of {limit}. Send a shorter clip.",
                limit=_fmt_duration(max_seconds),
            )
        )
    shortfall = (probe.duration_s or 0.0) - decoded_s
    damaged = any(marker in text for marker in CORRUPTION_MARKERS)
    if returncode != 0 or damaged or shortfall > max(DURATION_SHORTFALL_S, 0.05 * decoded_s):
        log.info(
            "intake: damaged %s/%s (rc=%s, declared %.2fs, decoded %.2fs)",
            probe.format_name, probe.codec_name, returncode, probe.duration_s or 0.0, decoded_s,
        )  # fmt: skip
        raise CorruptAudio(tr(CORRUPT_MESSAGE))
    if pcm.size == 0:
        raise EmptyAudio(tr(EMPTY_MESSAGE))
    np.clip(pcm, -1.0, 1.0, out=pcm)  # codecs overshoot full scale slightly; keep the [-1, 1] contract
    return DecodedAudio(pcm, sample_rate, decoded_s, probe.format_name, probe.codec_name)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _run(argv: list[str], source: _Input, deadline: float, what: str) -> tuple[int, bytes, str]:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL if source.stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=source.pass_fds,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(source.stdin, timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise _timeout(what) from None
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    return proc.returncode, out, err.decode("utf-8", "replace")


async def _arun(argv: list[str], source: _Input, deadline: float, what: str) -> tuple[int, bytes, str]:
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if source.stdin is None else pipe,
        stdout=pipe,
        stderr=pipe,
        pass_fds=source.pass_fds,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.01)):
            out, err = await proc.communicate(source.stdin)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        raise _timeout(what) from None
    except BaseException:  # cancelled: the member left, the bot is shutting down
        _kill_group(proc.pid)
        await proc.wait()
        raise
    return proc.returncode if proc.returncode is not None else -1, out, err.decode("utf-8", "replace")


def _timeout(what: str) -> IntakeTimeout:
    log.warning("intake: %s ran past its time limit and was killed", what)
    return IntakeTimeout(
        tr("Reading that file took too long, so I stopped. Try a shorter or simpler recording.")
    )


def _parse_probe(rc: int, out: bytes, err: str, source: _Input) -> AudioProbe:
    if rc != 0:
        raise _probe_failure(err, source)
    try:
        info = json.loads(out.decode("utf-8", "replace") or "{}")
    except json.JSONDecodeError:
        raise NotAudio(_with_hint(tr(NOT_READABLE))) from None
    probe = interpret_probe(info)
    if probe.format_name == "ogg" and source.ogg_is_truncated():
        raise CorruptAudio(tr(CORRUPT_MESSAGE))
    return probe


@dataclass(frozen=True)
class _Input:
    """Where ffprobe and ffmpeg read one upload: ``url``, plus the descriptor or the bytes behind it."""

    url: str
    size: int
    path: Path | None = None  # a file the caller named (the command line)
    data: bytes | None = field(default=None, repr=False)  # an upload, held in memory only
    pass_fds: tuple[int, ...] = ()  # the in-memory file, inherited by the child under its own number
    stdin: bytes | None = field(default=None, repr=False)  # fed to the child's stdin (no memfd here)

    def open(self) -> BinaryIO:
        """The raw bytes, for the header checks made here (never handed to a parser but ffmpeg)."""
        return self.path.open("rb") if self.path is not None else io.BytesIO(self.data or b"")

    def ogg_is_truncated(self) -> bool:
        with self.open() as fh:
            return _ogg_is_truncated(fh, self.size)


def _memory_file(data: bytes) -> int | None:
    """An anonymous in-memory file holding ``data`` (seekable, unlike a pipe: an m4a whose index comes
    last needs that); None where the system has no ``memfd_create``."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    fd: int = create("voxclone-intake", getattr(os, "MFD_CLOEXEC", 0))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _staged(source: bytes | Path, max_bytes: int) -> Iterator[_Input]:
    """``source`` as ffmpeg's input, size-checked. Bytes stay in memory: they are never written to disk."""
    if isinstance(source, Path):
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise NotAudio(
                tr("I cannot open {file}: {error}.", file=source.name, error=exc.strerror or exc)
            ) from None
        if not source.is_file():
            raise NotAudio(_with_hint(tr("{file} is not a file.", file=source.name)))
        _check_size(size, max_bytes)
        path = source.resolve()
        yield _Input(f"file:{path}", size, path=path)
        return
    _check_size(len(source), max_bytes)
    fd = _memory_file(source)
    if fd is None:
        yield _Input("pipe:0", len(source), data=source, stdin=source)
        return
    try:
        # /dev/fd/N opens the memory file afresh in the child: its own offset, seekable, nothing on disk.
        yield _Input(f"file:/dev/fd/{fd}", len(source), data=source, pass_fds=(fd,))
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def _astaged(source: bytes | Path, max_bytes: int) -> AsyncIterator[_Input]:
    """:func:`_staged` with its file work off the event loop."""
    staged = _staged(source, max_bytes)
    staged_input = await asyncio.to_thread(staged.__enter__)
    try:
        yield staged_input
    finally:
        await asyncio.to_thread(staged.__exit__, None, None, None)


def sweep_stale_intake_dirs(temp_dir: Path | None = None, *, min_age_s: float = STALE_DIR_AGE_S) -> int:
    """Remove the ``voxclone-intake-*`` folders that earlier versions left in the temp folder; how many.

    Those versions wrote each upload there and lost it when killed mid-intake. Only folders of this
    user older than ``min_age_s`` are removed (no intake runs that long), so a second bot process
    running an older version on the same machine keeps the one it is reading.
    """
    root = temp_dir or Path(tempfile.gettempdir())
    cutoff = time.time() - min_age_s
    removed = 0
    for folder in root.glob(f"{STALE_DIR_PREFIX}*"):
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid() or info.st_mtime > cutoff:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += not folder.exists()
    if removed:
        log.info("intake: removed %d temporary upload folder(s) left by an earlier version", removed)
    return removed


def _check_size(size: int, max_bytes: int) -> None:
    if size == 0:
        raise EmptyAudio(tr("That file is empty. Check the recording and send it again."))
    if size > max_bytes:
        raise AudioTooLarge(
            tr(
                "That file is {size}; the limit is {limit}. "
                "Send a shorter or more compressed recording (a voice message works well).",
                size=_fmt_bytes(size),
                limit=_fmt_bytes(max_bytes),
            )
        )


def _validate_args(sample_rate: int, max_seconds: float, timeout_s: float) -> None:
    if not 8_000 <= sample_rate <= 192_000:
        raise ValueError(f"sample_rate must be 8000..192000 Hz, got {sample_rate}")
    if not (max_seconds > 0 and timeout_s > 0):
        raise ValueError("max_seconds and timeout_s must be positive")


def probe_audio(source: bytes | Path, *, max_bytes: int, timeout_s: float = 10.0) -> AudioProbe:
    """Format, codec and declared duration of ``source`` (no decoding): the bot's pre-check of uploads."""
    deadline = time.monotonic() + timeout_s
    with _staged(source, max_bytes) as staged:
        rc, out, err = _run(probe_argv(staged.url), staged, deadline, "ffprobe")
        return _parse_probe(rc, out, err, staged)


async def probe_audio_async(source: bytes | Path, *, max_bytes: int, timeout_s: float = 10.0) -> AudioProbe:
    """:func:`probe_audio` without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    async with _astaged(source, max_bytes) as staged:
        rc, out, err = await _arun(probe_argv(staged.url), staged, deadline, "ffprobe")
        return await asyncio.to_thread(_parse_probe, rc, out, err, staged)


def decode_audio(
    source: bytes | Path, *, sample_rate: int, max_seconds: float, max_bytes: int, timeout_s: float = 20.0
) -> DecodedAudio:
    """Decode ``source`` to mono float32 PCM at ``sample_rate`` Hz; blocking (see :func:`decode_audio_async`).

    Raises NotAudio, UnsupportedCodec, AudioTooLong, AudioTooLarge, CorruptAudio, EmptyAudio or
    IntakeTimeout; ``timeout_s`` bounds the probe and the decode together.
    """
    _validate_args(sample_rate, max_seconds, timeout_s)
    deadline = time.monotonic() + timeout_s
    with _staged(source, max_bytes) as staged:
        rc, out, err = _run(probe_argv(staged.url), staged, deadline, "ffprobe")
        probe = _parse_probe(rc, out, err, staged)
        _check_length(probe, max_seconds)
        argv = decode_argv(staged.url, sample_rate=sample_rate, max_seconds=max_seconds)
        rc, out, err = _run(argv, staged, deadline, "ffmpeg")
    return interpret_decode(probe, out, err, rc, sample_rate=sample_rate, max_seconds=max_seconds)


async def decode_audio_async(
    source: bytes | Path, *, sample_rate: int, max_seconds: float, max_bytes: int, timeout_s: float = 20.0
) -> DecodedAudio:
    """:func:`decode_audio` without blocking the event loop; cancelling it kills ffmpeg."""
    _validate_args(sample_rate, max_seconds, timeout_s)
    deadline = time.monotonic() + timeout_s
    async with _astaged(source, max_bytes) as staged:
        rc, out, err = await _arun(probe_argv(staged.url), staged, deadline, "ffprobe")
        probe = await asyncio.to_thread(_parse_probe, rc, out, err, staged)
        _check_length(probe, max_seconds)
        argv = decode_argv(staged.url, sample_rate=sample_rate, max_seconds=max_seconds)
        rc, out, err = await _arun(argv, staged, deadline, "ffmpeg")
    return interpret_decode(probe, out, err, rc, sample_rate=sample_rate, max_seconds=max_seconds)
