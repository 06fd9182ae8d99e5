"""Where the model weights come from: a local folder, the cache, or a download with a progress bar.

XTTS-v2: ``--model-dir``/``MODEL_DIR`` when given (checked for its files), else
``MODEL_CACHE_DIR/xtts_v2``; when that is empty and the operator accepted the Coqui Public Model
License (``COQUI_TOS_AGREED=1``) the files of ``coqui/XTTS-v2`` are downloaded there. Whisper: a local
folder (faster-whisper) or ``.pt`` file (openai-whisper) as is, else a model name downloaded into
``MODEL_CACHE_DIR/faster-whisper/<name>`` or ``MODEL_CACHE_DIR/openai-whisper/<name>.pt``. Every dead end
raises ``ModelUnavailable`` saying exactly which files to fetch from where and which folder to put them in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import httpx

from core.settings import DEFAULT_HF_ENDPOINT
from worker.errors import ModelUnavailable

log = logging.getLogger("voxclone.worker.models")

XTTS_REPO: Final = "coqui/XTTS-v2"
XTTS_FOLDER: Final = "xtts_v2"
XTTS_REQUIRED_FILES: Final = ("config.json", "model.pth", "vocab.json")
XTTS_FILES: Final = (*XTTS_REQUIRED_FILES, "speakers_xtts.pth")
CPML_NOTICE: Final = (
    "The XTTS-v2 weights are licensed under the Coqui Public Model License 1.0.0 "
    "(https://coqui.ai/cpml, copy at https://huggingface.co/coqui/XTTS-v2/blob/main/LICENSE.txt), "
    'which allows non-commercial use only: "I agree to the terms of the non-commercial CPML".'
)
FASTER_WHISPER_REQUIRED: Final = ("config.json", "model.bin", "tokenizer.json")
_FASTER_WHISPER_OPTIONAL: Final = ("vocabulary.txt", "vocabulary.json", "preprocessor_config.json")
_CONNECT_TIMEOUT_S: Final = 10.0  # fail fast when there is no network
_READ_TIMEOUT_S: Final = 60.0
_DOWNLOAD_CHUNK: Final = 1 << 20  # bytes per write (1 MiB)

AsrBackend = Literal["faster-whisper", "openai-whisper"]


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: ``name`` inside the destination folder."""

    name: str
    url: str
    required: bool = True
    sha256: str | None = None


class DownloadFailed(Exception):
    """A download did not complete; ``reason`` is short and safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def hf_url(endpoint: str, repo: str, name: str) -> str:
    return f"{endpoint.rstrip('/')}/{repo}/resolve/main/{name}"


def download_files(
    files: Sequence[RemoteFile],
    dest: Path,
    *,
    transport: httpx.BaseTransport | None = None,
    progress: bool = True,
) -> None:
    """Download into ``dest`` with a progress bar; files already there are kept.

    Each file is written as ``<name>.part`` and renamed when complete, so an interrupted download is
    never mistaken for a model. Raises :class:`DownloadFailed`.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadFailed(f"cannot create {dest}: {exc.strerror}") from exc
    timeout = httpx.Timeout(_READ_TIMEOUT_S, connect=_CONNECT_TIMEOUT_S)
    with httpx.Client(transport=transport, follow_redirects=True, timeout=timeout) as http:
        for remote in files:
            target = dest / remote.name
            if target.is_file():
                continue
            try:
                _download_one(http, remote, target, progress)
            except httpx.HTTPError as exc:
                raise DownloadFailed(f"{remote.name}: {type(exc).__name__}: {exc}") from exc
            except OSError as exc:
                raise DownloadFailed(f"cannot write {target}: {exc.strerror}") from exc


def _download_one(http: httpx.Client, remote: RemoteFile, target: Path, progress: bool) -> None:
    part = target.with_name(target.name + ".part")
    try:
        _stream_to(http, remote, part, progress)
    except BaseException:
        part.unlink(missing_ok=True)  # never leave half a model behind (KeyboardInterrupt included)
        raise
    if part.exists():
        part.replace(target)
        log.info("downloaded %s into %s", remote.name, target.parent)


def _stream_to(http: httpx.Client, remote: RemoteFile, part: Path, progress: bool) -> None:
    from tqdm import tqdm  # the worker extra brings it; the bot never downloads models

    digest = hashlib.sha256()
    with http.stream("GET", remote.url) as response:
        if response.status_code == 404 and not remote.required:
            return
        response.raise_for_status()
        total = int(response.headers.get("content-length", "0")) or None
        bar = tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.name, disable=not progress
        )
        with bar, part.open("wb") as out:
            for chunk in response.iter_bytes(_DOWNLOAD_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    if remote.sha256 and digest.hexdigest() != remote.sha256:
        raise DownloadFailed(f"{remote.name} arrived damaged (checksum mismatch); try again")


# ---- XTTS-v2 ---------------------------------------------------------------------------------------


def missing_xtts_files(folder: Path) -> list[str]:
    """The required XTTS-v2 files that ``folder`` lacks (all of them when it is not a folder)."""
    if not folder.is_dir():
        return list(XTTS_REQUIRED_FILES)
    return [name for name in XTTS_REQUIRED_FILES if not (folder / name).is_file()]


def resolve_xtts_dir(
    model_dir: Path | None,
    cache_dir: Path,
    *,
    tos_agreed: bool,
    endpoint: str = DEFAULT_HF_ENDPOINT,
    transport: httpx.BaseTransport | None = None,
    progress: bool = True,
) -> Path:
    """The folder to load XTTS-v2 from, downloading it into the cache when allowed."""
    if model_dir is not None:
        missing = missing_xtts_files(model_dir)
        if missing:
            raise ModelUnavailable(
                f"MODEL_DIR (--model-dir) {model_dir.resolve()} is not an XTTS-v2 folder: "
                f"it lacks {', '.join(missing)}. Point it at the folder that holds "
                f"{', '.join(XTTS_REQUIRED_FILES)} (from https://huggingface.co/{XTTS_REPO}/tree/main)."
            )
        _check_config(model_dir)
        return model_dir
    folder = cache_dir / XTTS_FOLDER
    if not missing_xtts_files(folder):
        _check_config(folder)
        return folder
    where = f"put them in {folder.resolve()} (or set MODEL_DIR / --model-dir to a folder that holds them)"
    if not tos_agreed:
        raise ModelUnavailable(
            f"XTTS-v2 is not in {folder.resolve()} and will only be downloaded after you accept its licence. "
            f"{CPML_NOTICE} If you accept it, set COQUI_TOS_AGREED=1 (in .env or the environment) and start "
            f"again; or download {', '.join(XTTS_FILES)} from https://huggingface.co/{XTTS_REPO} and {where}."
        )
    files = [
        RemoteFile(name, hf_url(endpoint, XTTS_REPO, name), required=name in XTTS_REQUIRED_FILES)
        for name in XTTS_FILES
    ]
    log.info("downloading XTTS-v2 (about 1.9 GB) into %s", folder)
    try:
        download_files(files, folder, transport=transport, progress=progress)
    except DownloadFailed as exc:
        raise ModelUnavailable(
            f"Could not download XTTS-v2 from {endpoint.rstrip('/')}/{XTTS_REPO} ({exc.reason}). "
            f"Without network, download {', '.join(XTTS_FILES)} "
            f"from https://huggingface.co/{XTTS_REPO}/tree/main and {where}."
        ) from exc
    return folder


def _check_config(folder: Path) -> None:
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"{folder.resolve() / 'config.json'} cannot be read as JSON ({exc}); download it again "
            f"from https://huggingface.co/{XTTS_REPO}/tree/main."
        ) from exc


# ---- Whisper -------------------------------------------------------------------------------------


def resolve_asr_model(
    backend: AsrBackend,
    name_or_path: str,
    cache_dir: Path,
    *,
    endpoint: str = DEFAULT_HF_ENDPOINT,
    transport: httpx.BaseTransport | None = None,
    progress: bool = True,
) -> str:
    """A local path for the Whisper model ``name_or_path``, downloading a named model when needed."""
    path = Path(name_or_path).expanduser()
    if backend == "faster-whisper":
        if path.exists():
            return str(_checked_faster_whisper_dir(path))
        return str(_faster_whisper_by_name(name_or_path, cache_dir, endpoint, transport, progress))
    if path.exists():
        if not path.is_file():
            raise ModelUnavailable(
                f"ASR_MODEL {path.resolve()} is a folder; "
                "openai-whisper needs a .pt checkpoint file or a model name."
            )
        return str(path)
    return str(_openai_whisper_by_name(name_or_path, cache_dir, transport, progress))


def _checked_faster_whisper_dir(path: Path) -> Path:
    missing = (
        [n for n in FASTER_WHISPER_REQUIRED if not (path / n).is_file()] if path.is_dir() else ["everything"]
    )
    if missing:
        raise ModelUnavailable(
            f"ASR_MODEL {path.resolve()} is not a faster-whisper (CTranslate2) model folder: it lacks "
            f"{', '.join(missing)}. Use a model name such as 'small', or a folder with "
            f"{', '.join(FASTER_WHISPER_REQUIRED)} and vocabulary.txt."
        )
    return path


def _faster_whisper_by_name(
    name: str, cache_dir: Path, endpoint: str, transport: httpx.BaseTransport | None, progress: bool
) -> Path:
    from faster_whisper.utils import _MODELS  # the name -> Hugging Face repository table

    repo = name if "/" in name else _MODELS.get(name)
    if repo is None:
        raise ModelUnavailable(
            f"ASR_MODEL '{name}' is neither a faster-whisper model name ({', '.join(_MODELS)}) "
            "nor an existing folder."
        )
    folder = cache_dir / "faster-whisper" / name.replace("/", "--")
    if folder.is_dir() and not [n for n in FASTER_WHISPER_REQUIRED if not (folder / n).is_file()]:
        return folder
    names = (*FASTER_WHISPER_REQUIRED, *_FASTER_WHISPER_OPTIONAL)
    files = [RemoteFile(n, hf_url(endpoint, repo, n), required=n in FASTER_WHISPER_REQUIRED) for n in names]
    log.info("downloading the Whisper model %s into %s", name, folder)
    try:
        download_files(files, folder, transport=transport, progress=progress)
    except DownloadFailed as exc:
        raise ModelUnavailable(
            f"Could not download the Whisper model '{name}' from {endpoint.rstrip('/')}/{repo} "
            f"({exc.reason}). "
            f"Without network, download {', '.join(FASTER_WHISPER_REQUIRED)} and vocabulary.txt from "
            f"https://huggingface.co/{repo}/tree/main into {folder.resolve()}, or set ASR_MODEL to a folder "
            "that holds them."
        ) from exc
    return folder


def _openai_whisper_by_name(
    name: str, cache_dir: Path, transport: httpx.BaseTransport | None, progress: bool
) -> Path:
    from whisper import _MODELS  # the name -> checkpoint URL table (the URL holds the SHA-256)

    url = _MODELS.get(name)
    if url is None:
        raise ModelUnavailable(
            f"ASR_MODEL '{name}' is neither an openai-whisper model name ({', '.join(_MODELS)}) "
            "nor an existing file."
        )
    folder = cache_dir / "openai-whisper"
    target = folder / f"{name}.pt"
    if target.is_file():
        return target
    remote = RemoteFile(target.name, url, sha256=url.split("/")[-2])
    try:
        download_files([remote], folder, transport=transport, progress=progress)
    except DownloadFailed as exc:
        raise ModelUnavailable(
            f"Could not download the Whisper model '{name}' ({exc.reason}). Without network, download "
            f"{url} and save it as {target.resolve()}, or set ASR_MODEL to the path of a .pt file."
        ) from exc
    return target
