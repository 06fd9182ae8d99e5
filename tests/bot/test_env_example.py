"""``.env.example`` as a new user uses it: copied unchanged it means the defaults (its empty lines are
"not set")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.settings import Settings, load_settings
from worker.errors import ModelUnavailable
from worker.factory import resolve_local_models

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / ".env.example"


@pytest.fixture
def example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``.env.example`` copied unchanged into an empty folder, with nothing of ours in the environment."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("COQUI_TOS_AGREED", raising=False)
    shutil.copy(EXAMPLE, tmp_path / ".env")
    monkeypatch.chdir(tmp_path)
    return tmp_path / ".env"


def test_unchanged_example_is_the_defaults(example_env: Path) -> None:
    settings = load_settings(env_file=str(example_env))
    assert settings.model_dump() == load_settings({}).model_dump()
    assert settings.dev_guild_id is None and settings.worker_max_batch is None
    assert settings.fast_decode is None and settings.model_dir is None
    assert settings.worker_token is None and settings.llm_api_key is None


def test_empty_model_dir_is_not_the_current_folder(example_env: Path) -> None:
    settings = load_settings(env_file=str(example_env))
    with pytest.raises(ModelUnavailable) as info:
        resolve_local_models(settings, environ={})
    # The download path (it asks for the licence first), not "the current folder is not XTTS-v2".
    assert "COQUI_TOS_AGREED=1" in info.value.message
    assert "is not an XTTS-v2 folder" not in info.value.message


def test_blank_values_are_unset_everywhere() -> None:
    blank = {name.upper(): "  " for name in Settings.model_fields}
    assert load_settings(blank).model_dump() == load_settings({}).model_dump()
