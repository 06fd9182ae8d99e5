"""Fixtures shared by the whole suite. Keep it small: package-specific fixtures live beside their tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_xtts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny XTTS-v2 checkpoint (config.json, model.pth, vocab.json), made once per session."""
    from worker.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("xtts-tiny"), size="tiny", seed=0)
