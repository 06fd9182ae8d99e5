"""Loading an XTTS-v2 checkpoint folder the way coqui-tts does, with errors an operator can act on.

The folder holds ``config.json``, ``model.pth`` and ``vocab.json`` (the ``coqui/XTTS-v2`` download, or
``voxclone dev make-test-model``). :func:`load_xtts` validates it, loads through coqui's own path
(``Xtts(config)`` + ``load_checkpoint``) and names the checkpoint with :func:`checkpoint_id`, which every
voice embedding carries: latents from one checkpoint are meaningless to another.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import ModelUnavailable

if TYPE_CHECKING:
    import torch
    from TTS.tts.models.xtts import Xtts

log = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.pth", "vocab.json")
_HASH_BYTES = 8 << 20  # bytes of model.pth hashed from each end for the checkpoint id (8 MiB)
_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError)


def check_model_dir(model_dir: Path) -> None:
    """ModelUnavailable naming what is missing, unless ``model_dir`` has the three XTTS-v2 files."""
    files = ", ".join(REQUIRED_FILES)
    fix = f"download coqui/XTTS-v2 ({files}) into it, or point --model-dir at a complete copy."
    if not model_dir.is_dir():
        raise ModelUnavailable(f"The XTTS-v2 model folder {model_dir} does not exist: {fix}")
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ModelUnavailable(
            f"The XTTS-v2 model folder {model_dir} has no {', '.join(missing)}: {fix}", missing=missing
        )


def load_xtts(model_dir: Path, device: str) -> tuple[Xtts, str]:
    """The model from ``model_dir``, ready for inference on ``device``, and its checkpoint id."""
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    started = time.perf_counter()
    try:
        config = XttsConfig()
        config.load_json(str(model_dir / "config.json"))
        model = Xtts(config)
        model.load_checkpoint(config, checkpoint_dir=str(model_dir), eval=True)
    except _LOAD_ERRORS as exc:
        raise ModelUnavailable(
            f"The XTTS-v2 checkpoint in {model_dir} could not be loaded ({type(exc).__name__}: {exc}). "
            "Download it again: the files may be incomplete or from another model."
        ) from exc
    model.to(device)
    fold_weight_norm(model.hifigan_decoder.waveform_decoder)
    model_id = checkpoint_id(model_dir)
    elapsed = time.perf_counter() - started
    log.info("loaded XTTS-v2 %s from %s on %s in %.1f s", model_id, model_dir, device, elapsed)
    return model, model_id


def fold_weight_norm(module: torch.nn.Module) -> None:
    """Bake weight-norm parametrizations into plain weights: same output, fewer kernels per call."""
    from torch.nn.utils import parametrize

    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)


def checkpoint_id(model_dir: Path) -> str:
    """A stable name for a checkpoint: changes whenever its config, vocabulary or weights change."""
    digest = hashlib.sha256()
    for name in ("config.json", "vocab.json"):
        digest.update((model_dir / name).read_bytes())
    weights = model_dir / "model.pth"
    size = weights.stat().st_size
    digest.update(str(size).encode())
    with weights.open("rb") as fh:
        digest.update(fh.read(_HASH_BYTES))
        if size > _HASH_BYTES:
            fh.seek(max(_HASH_BYTES, size - _HASH_BYTES))
            digest.update(fh.read())
    return f"xtts-v2-{digest.hexdigest()[:16]}"
