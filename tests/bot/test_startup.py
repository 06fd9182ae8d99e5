"""``voxclone bot`` as a child process against a fake Discord on loopback: each start-up failure is one
line on stderr saying what to do, with a non-zero exit and no traceback (unless LOG_LEVEL=DEBUG), and
never the token; a running bot stops cleanly on SIGTERM and SIGINT.

WORKER_URLS points at a closed port so the bot needs no models (it contacts workers only when asked to
speak); the tests that need the engines set them up themselves.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from bot.health import check_heartbeat
from bot.shutdown import SHUTDOWN_DEADLINE_S
from bot.startup import LOGIN_BACKOFF_S, LOGIN_TRIES
from tests.support.fake_discord import FakeDiscord, Mode, bot_command, free_port, stop_child

REPO = Path(__file__).resolve().parents[2]
TOKEN = "MTIzNDU2Nzg5MDEy.fake-token.do-not-log-me"
DB_PASSWORD = "hunter2-db-secret"


def child_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no .env (the cwd is empty), this checkout first on the path."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
        "PYTHONPATH": str(REPO),
        "DISCORD_TOKEN": TOKEN,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/voxclone.db",
        "WORKER_URLS": f"http://127.0.0.1:{free_port()}",
        **extra,
    }


def run_bot(tmp: Path, api: str, gateway: str, **extra: str) -> tuple[int, list[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        bot_command(api, gateway, "bot"),
        cwd=tmp,
        env=child_env(tmp, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr.splitlines(), time.monotonic() - started


def run_against(mode: Mode, tmp: Path, **extra: str) -> tuple[int, list[str], FakeDiscord]:
    with FakeDiscord(mode) as discord:
        code, lines, _ = run_bot(tmp, discord.api, discord.gateway, **extra)
    return code, lines, discord


def assert_clean(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert "Traceback" not in text, text
    assert TOKEN not in text and TOKEN.split(".")[0] not in text, text
    assert DB_PASSWORD not in text, text


def test_wrong_token_is_one_line(tmp_path: Path) -> None:
    code, lines, discord = run_against("refuse", tmp_path)
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("voxclone: Discord refused DISCORD_TOKEN")
    assert "Reset Token" in lines[0]
    assert_clean(lines)
    assert discord.requests == [("GET", "/users/@me", f"Bot {TOKEN}")]  # it was sent, and only there


def test_traceback_only_with_debug_logging(tmp_path: Path) -> None:
    code, lines, _ = run_against("refuse", tmp_path, LOG_LEVEL="DEBUG", LOG_FORMAT="text")
    text = "\n".join(lines)
    assert code != 0
    assert "Traceback" in text and "LoginFailure" in text
    assert lines[-1].startswith("voxclone: Discord refused DISCORD_TOKEN")
    assert TOKEN not in text


def test_unreachable_discord_is_retried_then_one_line(tmp_path: Path) -> None:
    port = free_port()
    code, lines, took = run_bot(tmp_path, f"http://127.0.0.1:{port}/api/v10", f"ws://127.0.0.1:{port}/")
    assert code != 0
    assert len(lines) == LOGIN_TRIES, lines  # one line per retry, then the verdict
    for attempt, line in enumerate(lines[:-1], start=2):
        assert "cannot reach Discord" in line and f"try {attempt} of {LOGIN_TRIES}" in line
    assert lines[-1].startswith(f"voxclone: Cannot reach Discord (cannot connect to 127.0.0.1:{port}")
    assert f"after {LOGIN_TRIES} tries" in lines[-1]
    assert took >= sum(LOGIN_BACKOFF_S)
    assert_clean(lines)


def test_privileged_intents_not_enabled(tmp_path: Path) -> None:
    code, lines, discord = run_against("no-intents", tmp_path, MESSAGE_CONTENT_INTENT="true")
    assert code != 0
    assert discord.identified.is_set()
    assert lines[-1].startswith("voxclone: Discord refused the connection: the bot asks for the privileged")
    assert "Server Members and Message Content" in lines[-1]
    assert "Privileged Gateway Intents" in lines[-1]
    assert_clean(lines)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"DATABASE_URL": f"postgresql+asyncpg://vox:{DB_PASSWORD}@127.0.0.1:{free_port()}/vox"},
            "the server cannot be reached",
            id="database-unreachable",
        ),
        pytest.param(
            {"WORKER_URLS": "", "MODEL_DIR": "."}, "is not an XTTS-v2 folder", id="model-incomplete"
        ),
        pytest.param(
            {"WORKER_URLS": "", "MODEL_CACHE_DIR": "models", "COQUI_TOS_AGREED": "0"},
            "set COQUI_TOS_AGREED=1",
            id="licence-not-accepted",
        ),
    ],
)
def test_local_setup_failures_are_one_line(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    code, lines, _ = run_against("accept", tmp_path, **env)
    assert code != 0
    assert lines[-1].startswith("voxclone: ") and expected in lines[-1], lines
    assert_clean(lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_running_bot_stops_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    health = tmp_path / "voxclone-bot.health"
    with FakeDiscord("accept") as discord:
        proc = subprocess.Popen(
            bot_command(discord.api, discord.gateway, "bot"),
            cwd=tmp_path,
            env=child_env(tmp_path, LOG_FORMAT="text", HEALTH_FILE=str(health)),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert discord.identified.wait(60), "the bot never reached the gateway"
            deadline = time.monotonic() + 10
            while check_heartbeat(health) is not None:  # READY handled: the healthcheck passes
                assert time.monotonic() < deadline, check_heartbeat(health)
                time.sleep(0.2)
        finally:
            stderr, took = stop_child(proc, sig, timeout_s=15)
        assert discord.gateway_closed.wait(5)
    assert proc.returncode == 0, stderr
    assert not health.exists()  # a stopped bot is not healthy
    assert took < SHUTDOWN_DEADLINE_S + 2, f"took {took:.1f} s"
    assert f"{sig.name} received: shutting down" in stderr
    assert "Traceback" not in stderr and TOKEN not in stderr
