"""Settings: defaults, parsing, one-line errors that name the variable, secrets never shown."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import DEFAULT_DATABASE_URL, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_embedded_setup() -> None:
    s = load_settings({})
    assert s.database_url == DEFAULT_DATABASE_URL
    assert s.worker_urls == []
    assert s.device == "auto"
    assert s.discord_token is None


def test_worker_urls_are_comma_separated() -> None:
    s = load_settings({"WORKER_URLS": "http://a:8765/, https://b:1"})
    assert s.worker_urls == ["http://a:8765", "https://b:1"]


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"WORKER_PORT": "eighty"}, "WORKER_PORT"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"WORKER_URLS": "gpu-1:8765"}, "WORKER_URLS"),
        ({"DEVICE": "tpu"}, "DEVICE"),
        ({"DEV_GUILD_ID": "my server"}, "DEV_GUILD_ID"),
        ({"LLM_BASE_URL": "localhost:11434"}, "LLM_BASE_URL"),
        ({"LLM_TOTAL_TIMEOUT_S": "0"}, "LLM_TOTAL_TIMEOUT_S"),
        ({"WORKER_FIRST_CHUNK_TIMEOUT_S": "soon"}, "WORKER_FIRST_CHUNK_TIMEOUT_S"),
        ({"WORKER_CHUNK_TIMEOUT_S": "0"}, "WORKER_CHUNK_TIMEOUT_S"),
        ({"WORKER_TIMEOUT_S": "5"}, "WORKER_TIMEOUT_S"),  # shorter than the 10 s allowed between chunks
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.message.startswith(name + ":")
    assert "\n" not in info.value.message


def test_secrets_are_never_shown() -> None:
    s = load_settings({"DISCORD_TOKEN": "tok-abcdef-123456", "WORKER_TOKEN": "wtok-987654"})
    assert "tok-abcdef" not in repr(s) and "wtok-9876" not in str(s)
    assert s.require_discord_token().get_secret_value() == "tok-abcdef-123456"


def test_missing_token_explains_how_to_get_one() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}).require_discord_token()
    text = info.value.message
    assert "DISCORD_TOKEN" in text and "applications.commands" in text and "Message Content" in text


def test_settings_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"


def test_env_example_documents_every_variable() -> None:
    text = (REPO / ".env.example").read_text()
    documented = {line.split("=", 1)[0].lstrip("# ").strip() for line in text.splitlines() if "=" in line}
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_bot_without_token_exits_quickly_naming_it(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "bot"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "DISCORD_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 5, f"took {elapsed:.1f}s"


def test_database_password_is_masked_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"DATABASE_URL": "mysql://admin:hunter2secret@db/x"})
    assert "hunter2secret" not in info.value.message
    assert "admin:***@" in info.value.message
