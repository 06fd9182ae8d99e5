"""``make run`` on a fresh clone says what it installs and how long that takes before the long silence
of pip (a dry run: nothing is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["run", "install", "test"])
def test_first_install_is_announced(tmp_path: Path, target: str) -> None:
    done = subprocess.run(
        ["make", "--dry-run", "-C", str(REPO), target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    plan = done.stdout
    announced = [line for line in plan.splitlines() if line.startswith("echo ")]
    text = " ".join(announced)
    assert "PyTorch" in text and "about 6 GB" in text and "a few minutes" in text
    # The announcement comes before pip runs, and the time it took is printed after.
    assert plan.index("about 6 GB") < plan.index("pip install -q -e")
    assert "installed in" in plan
