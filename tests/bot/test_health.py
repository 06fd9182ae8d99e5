"""``voxclone health``: the bot's heartbeat file and a worker's /readyz, as healthchecks see them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.cli import main
from bot.health import Heartbeat, check_heartbeat, check_worker, write_heartbeat
from tests.support.fake_discord import free_port


def beat(age_s: float = 0.0, connected: bool = True) -> Heartbeat:
    return Heartbeat(ts=time.time() - age_s, connected=connected, guilds=3, latency_ms=41.0)


def test_fresh_connected_heartbeat_is_healthy(tmp_path: Path) -> None:
    path = tmp_path / "health"
    write_heartbeat(path, beat())
    assert check_heartbeat(path) is None
    assert not path.with_name("health.part").exists()


@pytest.mark.parametrize(
    ("age_s", "connected", "reason"),
    [
        (None, True, "no heartbeat"),
        (120.0, True, "s old (more than 60 s): the bot is stuck"),
        (0.0, False, "not connected to Discord"),
    ],
)
def test_unhealthy_heartbeats_say_why(
    tmp_path: Path, age_s: float | None, connected: bool, reason: str
) -> None:
    path = tmp_path / "health"
    if age_s is not None:
        write_heartbeat(path, beat(age_s, connected))
    problem = check_heartbeat(path)
    assert problem is not None and reason in problem, problem


def test_health_command_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    path = tmp_path / "health"
    monkeypatch.setenv("HEALTH_FILE", str(path))
    assert main(["health"]) == 1
    assert "unhealthy: no heartbeat" in capsys.readouterr().err
    write_heartbeat(path, beat())
    assert main(["health"]) == 0
    assert capsys.readouterr().out.strip() == "healthy: bot connected to Discord"
    monkeypatch.delenv("HEALTH_FILE")
    assert main(["health"]) == 2  # nothing to check: says how to set it up
    assert "HEALTH_FILE is not set" in capsys.readouterr().err


def test_worker_that_does_not_answer_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    problem = check_worker(url, timeout_s=2)
    assert problem is not None and problem.startswith(f"no answer from {url}")
    assert main(["health", "--worker", url]) == 1
