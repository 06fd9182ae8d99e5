"""A bot that talks to remote workers needs no speech stack: it imports no torch, and a bot-only install
without WORKER_URLS says so at once instead of failing deep inside a model loader."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from bot.runtime import check_speech_engines
from core.errors import ConfigError
from core.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchaudio", "TTS", "whisper", "faster_whisper", "ctranslate2", "transformers", "perth")

# Builds the whole bot as `voxclone bot` does before connecting: the CLI, storage, the speech service,
# every cog. Prints the heavy modules that got imported.
_BUILD = f"""
import asyncio, sys
from bot.cli import build_parser
build_parser()
from bot.client import build_bot
from core.settings import load_settings
settings = load_settings({{"WORKER_URLS": "http://127.0.0.1:9", "DATABASE_URL": sys.argv[1]}})
async def main():
    async with build_bot(settings) as bot:
        await bot.setup_hook()
asyncio.run(main())
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_bot_with_workers_imports_no_speech_stack(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD, f"sqlite+aiosqlite:///{tmp_path}/voxclone.db"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported {proc.stdout.strip()}"


def test_bot_only_install_needs_worker_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name in ("torch", "TTS") else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError) as info:
        check_speech_engines(load_settings({}))
    assert "WORKER_URLS" in info.value.message and "voxclone[worker]" in info.value.message
    check_speech_engines(load_settings({"WORKER_URLS": "http://gpu-1:8765"}))
