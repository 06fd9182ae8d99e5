"""Settings: defaults, parsing, one-line errors that name the variable, secrets never shown."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.engine_settings import EngineSettings
from core.errors import ConfigError
from core.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_HF_ENDPOINT,
    EXPERIMENT_PREFIX,
    Settings,
    load_settings,
)

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
        ({"HF_ENDPOINT": "hf-mirror.local"}, "HF_ENDPOINT"),
        ({"COQUI_TOS_AGREED": "maybe"}, "COQUI_TOS_AGREED"),
        ({"FAST_DECODE": "fast"}, "FAST_DECODE"),
        ({"VOXCLONE_PIPELINE": "maybe"}, "VOXCLONE_PIPELINE"),
        ({"VOXCLONE_PREFILL_GRAPHS": "1"}, "VOXCLONE_PREFILL_GRAPHS"),
        ({"VOXCLONE_VOCODER_DTYPE": "int8"}, "VOXCLONE_VOCODER_DTYPE"),
        ({"VOXCLONE_FUSED_NORM": "on"}, "VOXCLONE_FUSED_NORM"),  # auto or off: it is never forced
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.message.startswith(name + ":")
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("FAST_DECODE", "'auto', 'on' or 'off'"),
        ("VOXCLONE_FAST_DECODE", "'auto', 'on' or 'off'"),
        ("VOXCLONE_DECODE_DTYPE", "'float16', 'bfloat16' or 'float32'"),
        ("VOXCLONE_PREFILL_GRAPHS", "'on' or 'off'"),
        ("VOXCLONE_VOCODER_GRAPHS", "'on' or 'off'"),
        ("VOXCLONE_VOCODER_DTYPE", "'auto', 'float16' or 'float32'"),
        ("VOXCLONE_FUSED_NORM", "'auto' or 'off'"),
        ("VOXCLONE_FUSED_SAMPLING", "'auto' or 'off'"),
        ("VOXCLONE_FUSED_ATTENTION", "'auto', 'on' or 'off'"),
        ("VOXCLONE_PIPELINE", "'auto', 'on' or 'off'"),
    ],
)
def test_a_bad_engine_switch_fails_at_load_naming_it_and_its_values(name: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: "sometimes"})
    assert info.value.message == f"{name}: Input should be {allowed} (got 'sometimes')"


def test_engine_switches_default_to_the_engines_defaults() -> None:
    assert load_settings({}).engine == EngineSettings()
    assert EngineSettings().fast_decode == "auto" and EngineSettings().decode_dtype is None


def test_engine_switches_are_read_case_insensitively() -> None:
    engine = load_settings(
        {"VOXCLONE_PIPELINE": "On", "VOXCLONE_VOCODER_DTYPE": " Float16 ", "VOXCLONE_FUSED_ATTENTION": " ON "}
    ).engine
    assert (engine.pipeline, engine.vocoder_dtype, engine.fused_attention) == ("on", "float16", "on")


def test_every_engine_switch_reaches_the_engine() -> None:
    engine = load_settings(
        {
            "VOXCLONE_FAST_DECODE": "off",
            "VOXCLONE_DECODE_DTYPE": "bfloat16",
            "VOXCLONE_PREFILL_GRAPHS": "off",
            "VOXCLONE_VOCODER_GRAPHS": "off",
            "VOXCLONE_VOCODER_DTYPE": "float32",
            "VOXCLONE_FUSED_NORM": "off",
            "VOXCLONE_FUSED_SAMPLING": "off",
            "VOXCLONE_FUSED_ATTENTION": "on",
            "VOXCLONE_PIPELINE": "off",
        }
    ).engine
    assert engine == EngineSettings(
        fast_decode="off",
        decode_dtype="bfloat16",
        prefill_graphs="off",
        vocoder_graphs="off",
        vocoder_dtype="float32",
        fused_norm="off",
        fused_sampling="off",
        fused_attention="on",
        pipeline="off",
    )


def test_fast_decode_wins_over_the_benchmarks_name_for_it() -> None:
    both = load_settings({"FAST_DECODE": "on", "VOXCLONE_FAST_DECODE": "off"})
    assert both.engine.fast_decode == "on"
    assert load_settings({"VOXCLONE_FAST_DECODE": "off"}).engine.fast_decode == "off"


def test_model_downloads_follow_hf_endpoint() -> None:
    assert load_settings({}).hf_endpoint == DEFAULT_HF_ENDPOINT
    assert load_settings({"HF_ENDPOINT": "http://127.0.0.1:9/"}).hf_endpoint == "http://127.0.0.1:9"
    assert load_settings({"COQUI_TOS_AGREED": "yes"}).coqui_tos_agreed


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
    names = {name.upper() for name in Settings.model_fields}
    missing = {name for name in names if not name.startswith(EXPERIMENT_PREFIX)} - documented
    assert not missing, f".env.example lacks {sorted(missing)}"
    experiments = names - {name for name in names if not name.startswith(EXPERIMENT_PREFIX)}
    assert not experiments & documented, "the engine's experiment switches belong in bench/README.md"


def test_bench_readme_documents_every_experiment_switch() -> None:
    text = (REPO / "bench" / "README.md").read_text()
    switches = {name.upper() for name in Settings.model_fields if name.upper().startswith(EXPERIMENT_PREFIX)}
    assert switches and {name for name in switches if f"`{name}=" not in text} == set()


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
