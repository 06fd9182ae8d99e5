"""Speech recognition: faster-whisper by default, openai-whisper when the operator picks it.

Both backends take 16 kHz mono float32 PCM and return a typed :class:`~worker.types.Transcription`.
:func:`load_transcriber` resolves a model name or a local folder/file, downloads only when allowed,
and otherwise stops with a :class:`~worker.errors.ModelUnavailable` that says what to fetch and where.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np

from core.audio import ANALYSIS_SAMPLE_RATE
from worker.errors import InvalidAudio, ModelUnavailable, UnsupportedLanguage
from worker.types import FloatArray, Segment, Transcription

log = logging.getLogger(__name__)

BACKENDS: Final = ("faster-whisper", "openai-whisper")
BEAM_SIZE: Final = 5  # faster-whisper beam width (its default; cheap with CTranslate2)
FASTER_WHISPER_FILES: Final = "config.json, model.bin, tokenizer.json, vocabulary.*"


@runtime_checkable
class Transcriber(Protocol):
    """Speech to text. ``pcm16k`` is mono float32 at 16 kHz; ``language`` None means detect it."""

    model_id: str

    def transcribe(self, pcm16k: FloatArray, language: str | None) -> Transcription: ...


def normalize_language(code: str | None, supported: set[str], english_only: bool) -> str | None:
    """A Whisper language code for ``code`` ("en", "EN", "en-US", "zh-cn" → "zh"), or UnsupportedLanguage."""
    if code is None or not code.strip():
        return "en" if english_only else None
    wanted = code.strip().lower().replace("_", "-")
    base = wanted.split("-", 1)[0]
    found = wanted if wanted in supported else base if base in supported else None
    if found is None:
        raise UnsupportedLanguage(
            f"I don't know the language code {code!r}. Use a two-letter code such as en, fr, de or es."
        )
    if english_only and found != "en":
        raise UnsupportedLanguage(
            f"The speech recognition model here understands English only, not {code!r}. "
            "Ask the operator to configure a multilingual Whisper model (e.g. small instead of small.en)."
        )
    return found


def warn_english_only(model_id: str) -> None:
    """Say at start-up what an English-only model (``*.en``) cannot do: members whose Discord is in French
    get French consent phrases, and their readings would be refused."""
    log.warning(
        "asr: %s understands English only: French consent phrases (members whose Discord is in French) "
        "and other languages will be refused. "
        "Set ASR_MODEL to a multilingual model (e.g. small, not small.en).",
        model_id,
    )


def _check_pcm(pcm16k: Any) -> FloatArray:
    if not isinstance(pcm16k, np.ndarray) or pcm16k.ndim != 1 or pcm16k.size == 0:
        raise InvalidAudio("The audio to transcribe must be a non-empty single channel of samples.")
    pcm = np.ascontiguousarray(pcm16k, dtype=np.float32)
    if not np.all(np.isfinite(pcm)):
        raise InvalidAudio("The audio contains invalid samples (NaN or infinity).")
    return pcm


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class FasterWhisperTranscriber:
    """CTranslate2 Whisper: int8 on the CPU, float16 on CUDA. Safe to share between threads."""

    def __init__(
        self, model: str, device: str = "auto", compute_type: str | None = None, *,
        download_root: Path | None = None, allow_download: bool = True,
    ) -> None:  # fmt: skip
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        device = _resolve_device(device)
        compute = compute_type or ("float16" if device == "cuda" else "int8")
        source = _faster_whisper_source(model)
        try:
            self._model = WhisperModel(
                source,
                device=device,
                compute_type=compute,
                download_root=str(download_root) if download_root else None,
                local_files_only=not allow_download,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise _faster_whisper_unavailable(model, download_root, allow_download, exc) from exc
        self.model_id = f"faster-whisper:{Path(model).name if Path(model).is_dir() else model}"
        self._english_only = not self._model.model.is_multilingual
        self._languages = set(_LANGUAGE_CODES)
        log.info("asr: loaded %s on %s (%s)", self.model_id, device, compute)
        if self._english_only:
            warn_english_only(self.model_id)

    def transcribe(self, pcm16k: FloatArray, language: str | None) -> Transcription:
        lang = normalize_language(language, self._languages, self._english_only)
        pcm = _check_pcm(pcm16k)
        segments, info = self._model.transcribe(
            pcm, language=lang, beam_size=BEAM_SIZE, condition_on_previous_text=False, vad_filter=False
        )
        parts = [Segment(round(s.start, 3), round(s.end, 3), s.text.strip()) for s in segments]
        return Transcription(
            text=" ".join(p.text for p in parts if p.text).strip(),
            language=info.language,
            segments=parts,
            duration_s=round(pcm.size / ANALYSIS_SAMPLE_RATE, 3),
        )


def _faster_whisper_source(model: str) -> str:
    from faster_whisper.utils import _MODELS

    if Path(model).is_dir():
        return str(Path(model))
    if model not in _MODELS and "/" not in model:
        raise ModelUnavailable(
            f"There is no Whisper model called {model!r} and no folder of that name. "
            f"Use one of {', '.join(_MODELS)}, or a folder with {FASTER_WHISPER_FILES}."
        )
    return model


def _faster_whisper_unavailable(
    model: str, download_root: Path | None, allow_download: bool, exc: Exception
) -> ModelUnavailable:
    from faster_whisper.utils import _MODELS

    repo = _MODELS.get(model, model)
    where = download_root or Path("~/.cache/huggingface/hub")
    log.error("asr: cannot load faster-whisper model %s: %s", model, exc)
    return ModelUnavailable(
        f"The Whisper model {model!r} is not on this machine and "
        f"{'could not be downloaded' if allow_download else 'downloading is off'}. "
        f"Download {FASTER_WHISPER_FILES} from https://huggingface.co/{repo} into a folder "
        f"(for example {where / model}) and set ASR_MODEL to that folder, "
        "or allow this machine to reach huggingface.co once."
    )


class OpenAIWhisperTranscriber:
    """The reference ``openai-whisper`` package, greedy decoding (``temperature=0``)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        *,
        download_root: Path | None = None,
        allow_download: bool = True,
    ) -> None:
        import whisper

        self._device = _resolve_device(device)
        checkpoint = _openai_whisper_checkpoint(model, download_root, allow_download)
        try:
            self._model = whisper.load_model(
                checkpoint, device=self._device, download_root=str(download_root) if download_root else None
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelUnavailable(
                f"The Whisper model {model!r} could not be loaded ({exc}). Put the official {model}.pt "
                f"file in {download_root or '~/.cache/whisper'} or set ASR_MODEL to a checkpoint file."
            ) from exc
        self._english_only = not self._model.is_multilingual
        self._languages = set(whisper.tokenizer.LANGUAGES)
        with warnings.catch_warnings():
            # Load the (cached) tokenizer now, not on the first request; whisper leaves its vocabulary
            # file for the garbage collector to close, which warns.
            warnings.simplefilter("ignore", ResourceWarning)
            whisper.tokenizer.get_tokenizer(
                self._model.is_multilingual, num_languages=self._model.num_languages
            )
        self.model_id = f"openai-whisper:{Path(model).stem if Path(model).is_file() else model}"
        # decode() installs key/value-cache hooks on the shared modules: one transcription at a time.
        self._lock = threading.Lock()
        log.info("asr: loaded %s on %s", self.model_id, self._device)
        if self._english_only:
            warn_english_only(self.model_id)

    def transcribe(self, pcm16k: FloatArray, language: str | None) -> Transcription:
        lang = normalize_language(language, self._languages, self._english_only)
        pcm = _check_pcm(pcm16k)
        with self._lock:
            result = self._model.transcribe(
                pcm, language=lang, temperature=0.0, fp16=self._device == "cuda", verbose=None,
                condition_on_previous_text=False,
            )  # fmt: skip
        parts = [
            Segment(round(float(s["start"]), 3), round(float(s["end"]), 3), str(s["text"]).strip())
            for s in result.get("segments", [])
        ]
        return Transcription(
            text=str(result.get("text", "")).strip(),
            language=str(result.get("language") or lang or ""),
            segments=parts,
            duration_s=round(pcm.size / ANALYSIS_SAMPLE_RATE, 3),
        )


def _openai_whisper_checkpoint(model: str, download_root: Path | None, allow_download: bool) -> str:
    import whisper

    if Path(model).is_file():
        return str(Path(model))
    url = whisper._MODELS.get(model)
    if url is None:
        raise ModelUnavailable(
            f"There is no openai-whisper model called {model!r} and no file of that name. "
            f"Use one of {', '.join(whisper._MODELS)}, or the path of a .pt checkpoint."
        )
    root = download_root or Path.home() / ".cache" / "whisper"
    target = root / url.rsplit("/", 1)[-1]
    if not allow_download and not target.is_file():
        raise ModelUnavailable(
            f"The Whisper model {model!r} is not on this machine and downloading is off. "
            f"Download {url} to {target}, or set ASR_MODEL to the path of a .pt checkpoint."
        )
    return model


def load_transcriber(
    backend: str, model: str, device: str = "auto", download_root: Path | None = None,
    *, allow_download: bool = True,
) -> Transcriber:  # fmt: skip
    """The configured speech recogniser (``Settings.asr_backend``/``asr_model``), loaded and ready."""
    if backend == "faster-whisper":
        return FasterWhisperTranscriber(
            model, device, download_root=download_root, allow_download=allow_download
        )
    if backend == "openai-whisper":
        return OpenAIWhisperTranscriber(
            model, device, download_root=download_root, allow_download=allow_download
        )
    raise ModelUnavailable(
        f"Unknown speech recognition backend {backend!r}: use one of {', '.join(BACKENDS)}."
    )
