"""``voxclone voices``, run as an operator runs it: the real command line in a subprocess, real engines.

The speaker is espeak-ng's en-us voice, recorded as Discord-style voice messages; the database is the
default SQLite file in a fresh folder; XTTS is the tiny random-weight checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SPEECH_TEXT
from tests.support.audio import speech_message
from tests.worker.conftest import SAME_SPEAKER_TEXT
from tests.worker.test_cli import Run, clean_env, one_clear_line
from worker.voices import consent_statement


def voxclone(home: Path, *args: str, timeout: float = 300) -> Run:
    """``python -m bot.cli`` from this checkout (PYTHONPATH kept), in a clean environment."""
    env = clean_env(home)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], cwd=home, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voices-cli")


@pytest.fixture(scope="module")
def clips(home: Path) -> dict[str, Path]:
    return {
        "consent": speech_message(home, "consent", consent_statement("Ada")),
        "reference": speech_message(home, "reference", SPEECH_TEXT),
        "wrong": speech_message(home, "wrong", SAME_SPEAKER_TEXT),
    }


def test_statement_names_the_speaker_and_voxclone(home: Path) -> None:
    run = voxclone(home, "voices", "statement", "Ada Lovelace")
    assert run.code == 0
    assert run.out.strip() == (
        "I, Ada Lovelace, am aware that recordings of my voice will be used by voxclone to create and "
        "use a synthetic version of my voice."
    )
    assert "cannot be a voice name" in one_clear_line(voxclone(home, "voices", "statement", "-rm -rf"))


def test_add_list_remove(home: Path, clips: dict[str, Path], tiny_xtts_dir: Path) -> None:
    model = ("--model-dir", str(tiny_xtts_dir))
    reference = ("--reference", str(clips["reference"]))
    refused = voxclone(home, "voices", "add", "Ada", *reference, "--consent", str(clips["wrong"]), *model)
    line = one_clear_line(refused)
    assert "does not say the statement. Heard: “The little" in line and "voices statement 'Ada'" in line
    assert voxclone(home, "voices", "list").out.startswith("no voices yet")  # nothing was stored

    added = voxclone(home, "voices", "add", "Ada", *reference, "--consent", str(clips["consent"]), *model)
    assert added.code == 0, added.err
    assert added.out.startswith("added voice 'Ada' (en, ") and "voice='Ada'" in added.out

    listed = voxclone(home, "voices", "list")
    assert listed.code == 0 and listed.out.startswith("Ada\ten\tadded ")
    rows = json.loads(voxclone(home, "voices", "list", "--json").out)
    assert [(r["name"], r["language"]) for r in rows] == [("Ada", "en")]
    assert "(voxclone voices add)" in rows[0]["added_by"]

    removed = voxclone(home, "voices", "remove", "Ada")
    assert removed.code == 0 and removed.out.strip() == "removed voice 'Ada' and its consent recording"
    assert voxclone(home, "voices", "list").out.startswith("no voices yet")
    assert "no voice called 'Ada'" in one_clear_line(voxclone(home, "voices", "remove", "Ada"))
