"""Fixtures shared by the whole suite. Keep it small: package-specific fixtures live beside their tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The worker's Triton kernels (worker.triton_kernels, a CUDA path) run in Triton's interpreter in this suite,
# which has no GPU. Triton decides that when it is first imported, hence here. Nothing else here launches
# Triton kernels, and the worker never uses them on the CPU unless a test asks for them.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_xtts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny XTTS-v2 checkpoint (config.json, model.pth, vocab.json), made once per session."""
    from worker.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("xtts-tiny"), size="tiny", seed=0)
