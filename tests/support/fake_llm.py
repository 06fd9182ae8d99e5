"""A real HTTP server on loopback that speaks the OpenAI chat completions protocol, for tests.

``POST /v1/chat/completions`` answers with a JSON completion, or, for ``"stream": true``, with
server-sent events (``data: {chunk}`` ... ``data: [DONE]``) exactly as OpenAI, Ollama, vLLM and
llama.cpp do. The test decides each answer (:class:`Reply`: text, chunking, status, delays, stalls,
garbage) and reads back every request received (:class:`Received`), Authorization header included.
It runs on aiohttp in the test's own event loop, so delays are real time and nothing blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Reply:
    """How the server answers one request."""

    text: str = "Hello from the fake model."
    pieces: list[str] | None = None  # streamed chunks; default: word by word
    status: int = 200
    delay_before_s: float = 0.0  # before the response headers
    delay_between_s: float = 0.0  # between two streamed chunks
    pauses: dict[int, float] = field(default_factory=dict)  # extra delay before chunk i
    stall_after: int | None = None  # send this many chunks, then nothing (connection left open)
    body: bytes | None = None  # send these bytes instead (with ``content_type``)
    content_type: str = "text/html"
    json_even_if_streaming: bool = False  # a server that ignores "stream": true
    error_in_stream: bool = False  # a 200 stream whose first event is an error object

    def chunks(self) -> list[str]:
        if self.pieces is not None:
            return self.pieces
        words = self.text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic()

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.body.get("messages") or [])


@dataclass
class Served:
    """How one answer went: when it started, ended, and whether the client hung up early."""

    started_at: float
    finished_at: float | None = None
    chunks_sent: int = 0
    client_gone: bool = False


class FakeLLM:
    """``async with FakeLLM() as llm:`` serves on ``llm.base_url`` (``http://127.0.0.1:<port>/v1``)."""

    def __init__(self, model: str = "fake-model") -> None:
        self.model = model
        self.requests: list[Received] = []
        self.served: list[Served] = []
        self.replies: deque[Reply] = deque()
        self.default = Reply()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, *replies: Reply) -> None:
        """Queue how the next requests are answered (then ``default``)."""
        self.replies.extend(replies)

    async def __aenter__(self) -> FakeLLM:
        app = web.Application()
        app.router.add_post(CHAT_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        self._release.set()  # wake every handler that is waiting or stalled
        if self._runner is not None:
            await self._runner.cleanup()

    async def _wait(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), seconds)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw or b"{}")
        self.requests.append(Received(request.path, dict(request.headers), body, time.monotonic()))
        reply = self.replies.popleft() if self.replies else self.default
        served = Served(started_at=time.monotonic())
        self.served.append(served)
        await self._wait(reply.delay_before_s)
        if reply.body is not None:
            return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
        if reply.status >= 400:
            error = {"error": {"message": "refused by the fake", "type": "fake_error", "code": reply.status}}
            return web.json_response(error, status=reply.status)
        if not body.get("stream") or reply.json_even_if_streaming:
            served.finished_at = time.monotonic()
            return web.json_response(self._completion(reply.text))
        return await self._stream(request, reply, served)

    async def _stream(self, request: web.Request, reply: Reply, served: Served) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            if reply.error_in_stream:
                await _event(response, {"error": {"message": "model crashed", "type": "server_error"}})
                return response
            for i, piece in enumerate(reply.chunks()):
                if reply.stall_after is not None and i >= reply.stall_after:
                    await self._wait(3600)
                    return response
                await self._wait(reply.delay_between_s + reply.pauses.get(i, 0.0))
                await _event(
                    response,
                    self._chunk({"content": piece} if i else {"role": "assistant", "content": piece}),
                )
                served.chunks_sent += 1
            await _event(response, self._chunk({}, finish="stop"))
            await response.write(b"data: [DONE]\n\n")
            served.finished_at = time.monotonic()
            await response.write_eof()
        except ConnectionResetError:  # the client hung up: that is what the test may be checking
            served.client_gone = True
        except asyncio.CancelledError:
            served.client_gone = True
            raise
        return response

    def _chunk(self, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _completion(self, text: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


async def _event(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


def closed_port_url() -> str:
    """A loopback base URL where nothing listens (an endpoint that is down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
