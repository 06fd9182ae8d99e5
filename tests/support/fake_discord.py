"""A fake Discord on loopback for tests that run ``voxclone bot`` as a child process.

:class:`FakeDiscord` answers the REST calls a bot makes while logging in (``GET /users/@me``,
``GET /oauth2/applications/@me``) and speaks enough of the gateway (HELLO, IDENTIFY, READY, heartbeats)
for discord.py to connect. ``mode`` picks what it does: ``"accept"``, ``"refuse"`` (401 to the token, as
Discord answers a wrong one) or ``"no-intents"`` (the gateway closes with 4014: privileged intents not
enabled in the developer portal). Every request is kept in ``requests`` (method, path, Authorization).

The child reaches it through :func:`bot_command`, which points discord.py's REST base and default gateway
at this server before calling ``voxclone``'s own ``main``: no test hook in the product. :func:`stop_child`
signals the child and waits for it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

Mode = Literal["accept", "refuse", "no-intents"]

APPLICATION_ID = "900000000000000001"
_USER = {
    "id": APPLICATION_ID,
    "username": "voxclone",
    "discriminator": "0",
    "global_name": None,
    "avatar": None,
    "bot": True,
}
CLOSE_DISALLOWED_INTENTS = 4014  # Discord's gateway close code
_HELLO, _IDENTIFY, _HEARTBEAT, _HEARTBEAT_ACK, _DISPATCH = 10, 2, 1, 11, 0


@dataclass
class FakeDiscord:
    """Run with ``with FakeDiscord("accept") as discord: ...``; ``discord.api`` and ``discord.gateway``."""

    mode: Mode = "accept"
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    identified: threading.Event = field(default_factory=threading.Event)
    gateway_closed: threading.Event = field(default_factory=threading.Event)
    close_code: int | None = None

    def __post_init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def __enter__(self) -> FakeDiscord:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        self.requests.append((request.method, path, request.headers.get("Authorization", "")))
        if self.mode == "refuse":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        if path == "/users/@me":
            return _json(_USER)
        if path == "/oauth2/applications/@me":
            return _json(
                {
                    "id": APPLICATION_ID,
                    "name": "voxclone",
                    "description": "",
                    "icon": None,
                    "bot_public": False,
                    "bot_require_code_grant": False,
                    "owner": {**_USER, "id": "900000000000000002", "bot": False},
                    "verify_key": "0" * 64,
                    "flags": 0,
                }
            )
        if path.startswith("/applications/") and path.endswith("/commands"):
            return _json([])
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": _HELLO, "d": {"heartbeat_interval": 41250}}))
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame["op"] == _HEARTBEAT:
                await ws.send_str(json.dumps({"op": _HEARTBEAT_ACK, "d": None}))
            elif frame["op"] == _IDENTIFY:
                self.identified.set()
                if self.mode == "no-intents":
                    await ws.close(code=CLOSE_DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
                    break
                await ws.send_str(json.dumps(_ready(self.gateway)))
        self.close_code = ws.close_code
        self.gateway_closed.set()
        return ws


def _json(payload: object, status: int = 200) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly application/json (no charset).
    body = json.dumps(payload).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})


def _ready(gateway: str) -> dict[str, Any]:
    return {
        "op": _DISPATCH,
        "t": "READY",
        "s": 1,
        "d": {
            "v": 10,
            "user": _USER,
            "guilds": [],
            "session_id": "fake-session",
            "resume_gateway_url": gateway,
            "application": {"id": APPLICATION_ID, "flags": 0},
            "shard": [0, 1],
        },
    }


def stop_child(proc: subprocess.Popen[str], sig: signal.Signals, timeout_s: float) -> tuple[str, float]:
    """Send ``sig`` to a running child and wait for it: (its stderr, seconds it took to exit).

    The child is killed if it is still there afterwards (a failed test leaves no process behind).
    """
    sent = time.monotonic()
    try:
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except ValueError:  # the caller already read its output (it had exited)
            stderr = ""
        return stderr or "", time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def free_port() -> int:
    """A loopback port nothing listens on (closed again at once: connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bot_command(api: str, gateway: str, *args: str) -> list[str]:
    """``python -c ...`` that runs ``voxclone ARGS`` with discord.py pointed at ``api`` and ``gateway``."""
    code = (
        "import sys, yarl, discord.http, discord.gateway\n"
        f"discord.http.Route.BASE = {api!r}\n"
        f"discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL({gateway!r})\n"
        "from bot.cli import main\n"
        f"sys.exit(main({list(args)!r}))\n"
    )
    return [sys.executable, "-c", code]
