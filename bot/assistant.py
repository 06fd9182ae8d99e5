"""The voice assistant's language model: an OpenAI-compatible chat completions client, and its text helpers.

OpenAI, Ollama, vLLM and llama.cpp servers all serve ``POST {base}/chat/completions``; the answer
streams back as server-sent events (``data: {json}`` lines ending with ``data: [DONE]``).
:class:`AssistantClient` bounds every wait (connect, each chunk, the whole answer) and turns every
failure into a ``bot.errors.AssistantError`` with a sentence a member can act on. The API key is sent
only in the Authorization header: it is never logged nor put in an error. :class:`SentenceSplitter`
cuts the streamed text into sentences as soon as each one is complete, :func:`cut_at_sentence` keeps
an answer within the speech limit, and :class:`ChatHistory` keeps a short, bounded memory per channel.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from bot.errors import AssistantBadResponse, AssistantRefused, AssistantTimeout, AssistantUnavailable
from core.errors import ConfigError
from core.i18n import N_, tr
from core.settings import Settings

log = logging.getLogger("voxclone.assistant")

CONNECT_TIMEOUT_S = 5.0  # s to open the connection
CHUNK_TIMEOUT_S = 20.0  # s of silence allowed before the first chunk and between two chunks
TOTAL_TIMEOUT_S = 90.0  # s for a whole answer
MAX_ANSWER_TOKENS = 400  # a spoken answer is a few sentences; the speech limit cuts it anyway
MAX_SENTENCE_CHARS = 240  # XTTS-v2 speaks English sentences up to ~250 characters well
HISTORY_MESSAGES = 6  # per channel: the last three question/answer exchanges
HISTORY_CHARS = 4000  # per channel, oldest messages dropped first
HISTORY_CHANNELS = 1024  # channels remembered at once (least recently used forgotten)
DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant in a Discord server. Your answers are read aloud, so answer in a "
    "few short sentences of plain text: no markdown, lists, links or emoji. The question is a speech "
    "transcript and may contain recognition mistakes. Answer in the language of the question."
)
UNREACHABLE = N_(
    "I couldn't reach the assistant's server: it may be down. Try again in a minute; if it keeps "
    "happening, tell the bot's operator."
)
NOT_CHAT = N_(
    "The assistant's server answered something that isn't a chat completion. The bot's operator needs to "
    "check LLM_BASE_URL (it should end in /v1)."
)
BROKEN_OFF = N_("The connection to the assistant's server broke off in the middle of the answer. Try again.")

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation, as the chat completions protocol has it."""

    role: Role
    content: str

    def to_wire(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class LLMConfig:
    """Where the model is and how long to wait for it. ``repr`` shows the key as ``'**********'``."""

    base_url: str
    model: str
    api_key: SecretStr | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    chunk_timeout_s: float = CHUNK_TIMEOUT_S
    total_timeout_s: float = TOTAL_TIMEOUT_S
    max_tokens: int = MAX_ANSWER_TOKENS

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMConfig | None:
        """The configuration from ``LLM_BASE_URL``/``LLM_API_KEY``/``LLM_MODEL``; None without a base URL."""
        if not settings.llm_base_url:
            return None
        return cls(
            settings.llm_base_url,
            settings.llm_model,
            settings.llm_api_key,
            chunk_timeout_s=settings.llm_chunk_timeout_s,
            total_timeout_s=settings.llm_total_timeout_s,
        )

    @property
    def endpoint(self) -> str:
        """``{base}/chat/completions``; a bare host (``http://localhost:11434``) gets the usual ``/v1``."""
        base = self.base_url.rstrip("/")
        if urlsplit(base).path in ("", "/"):
            base += "/v1"
        return base + "/chat/completions"


class AssistantClient:
    """Chat completions over HTTP, streamed (:meth:`stream`) or not (:meth:`complete`)."""

    def __init__(self, config: LLMConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not config.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                "LLM_BASE_URL must start with http:// or https://, e.g. https://api.openai.com/v1"
            )
        self.config = config
        timeout = httpx.Timeout(
            connect=config.connect_timeout_s,
            read=config.chunk_timeout_s,
            write=config.chunk_timeout_s,
            pool=config.connect_timeout_s,
        )
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=False)
        self._host = urlsplit(config.endpoint).netloc  # what logs name: never the key, never a path

    async def aclose(self) -> None:
        await self._http.aclose()

    def _request(self, messages: Sequence[ChatMessage], *, stream: bool) -> httpx.Request:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if self.config.api_key is not None and self.config.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [m.to_wire() for m in messages],
            "stream": stream,
            "max_tokens": self.config.max_tokens,
        }
        return self._http.build_request("POST", self.config.endpoint, json=body, headers=headers)

    async def complete(self, messages: Sequence[ChatMessage]) -> str:
        """The whole answer at once (``stream: false``)."""
        started = time.monotonic()
        try:
            response = await self._http.send(self._request(messages, stream=False))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        self._check_status(response)
        text = _message_content(_json(response.content))
        log.info("assistant answered", extra={"host": self._host, "ms": _ms(started), "stream": False})
        return text

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        """The answer as it is generated: text pieces in order. Closing the iterator stops the request."""
        started = time.monotonic()
        deadline = started + self.config.total_timeout_s
        first = True
        try:
            response = await self._http.send(self._request(messages, stream=True), stream=True)
            try:
                self._check_status(response)
                if "json" in response.headers.get("content-type", ""):  # a server that ignored stream: true
                    await response.aread()
                    yield _message_content(_json(response.content))
                    return
                async for line in response.aiter_lines():
                    if time.monotonic() > deadline:
                        raise AssistantTimeout(
                            tr(
                                "The assistant was still talking after {seconds} s, so I stopped it. "
                                "Ask for a shorter answer.",
                                seconds=round(self.config.total_timeout_s),
                            )
                        )
                    if not line.startswith("data:"):
                        continue  # blank separators, comments (": keep-alive"), other SSE fields
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    piece = _delta_content(_json(data.encode()))
                    if piece:
                        if first:
                            log.info("assistant first words", extra={"host": self._host, "ms": _ms(started)})
                            first = False
                        yield piece
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        log.info("assistant answered", extra={"host": self._host, "ms": _ms(started), "stream": True})

    def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        log.warning("assistant request refused", extra={"host": self._host, "status": status})
        if status in (401, 403):
            message = tr(
                "The assistant's server refused the bot's credentials (HTTP {status}). "
                "The bot's operator needs to check LLM_API_KEY.",
                status=status,
            )
        elif status == 404:
            message = tr(
                "The assistant's server doesn't know the model `{model}` or the address is "
                "wrong (HTTP 404). The bot's operator needs to check LLM_MODEL and LLM_BASE_URL.",
                model=self.config.model,
            )
        elif status == 429:
            message = tr(
                "The assistant is getting too many requests right now (HTTP 429). Try again in a minute."
            )
        elif status >= 500:
            message = tr(
                "The assistant's server had a problem (HTTP {status}). Try again in a minute.", status=status
            )
        else:
            message = tr(
                "The assistant's server rejected the question (HTTP {status}). Try a shorter question; if "
                "it keeps happening, tell the bot's operator.",
                status=status,
            )
        raise AssistantRefused(message, status=status)

    def _transport_error(self, exc: httpx.HTTPError) -> Exception:
        log.warning("assistant request failed", extra={"host": self._host, "error": type(exc).__name__})
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return AssistantUnavailable(tr(UNREACHABLE))
        if isinstance(exc, httpx.TimeoutException):
            return AssistantTimeout(
                tr(
                    "The assistant took too long to answer (nothing for {seconds} s), "
                    "so I stopped waiting. Try again in a moment.",
                    seconds=round(self.config.chunk_timeout_s),
                )
            )
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return AssistantUnavailable(tr(BROKEN_OFF))
        return AssistantUnavailable(tr(UNREACHABLE))


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AssistantBadResponse(tr(NOT_CHAT)) from None
    if not isinstance(value, dict):
        raise AssistantBadResponse(tr(NOT_CHAT))
    error = value.get("error")
    if error:  # some servers report a failure inside a 200 stream
        log.warning("assistant reported an error in its answer")
        raise AssistantRefused(tr("The assistant's server stopped with an error. Try again in a minute."))
    return value


def _first_choice(payload: dict[str, Any]) -> dict[str, Any]:
    choices = payload.get("choices")
    if not isinstance(choices, list):
        raise AssistantBadResponse(tr(NOT_CHAT))
    if not choices:
        return {}  # e.g. a final usage-only chunk
    choice = choices[0]
    return choice if isinstance(choice, dict) else {}


def _delta_content(payload: dict[str, Any]) -> str:
    delta = _first_choice(payload).get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def _message_content(payload: dict[str, Any]) -> str:
    message = _first_choice(payload).get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise AssistantBadResponse(tr(NOT_CHAT))
    return content


# ---- text: sentences, the speech limit, history --------------------------------------------------------

# A sentence ends at . ! ? … (and closing quotes) before a space or the end of what has arrived so far,
# at a CJK full stop, or at a line break.
_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)|[。！？]+|\n+")
_LAST_WORD = re.compile(r"\S*$")
_NO_BREAK_AFTER = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "vs", "e.g", "i.e", "approx", "no"})


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    """False after an abbreviation, an initial or a list number ("Dr. Who", "J. Smith", "\n2. Step")."""
    if not match.group().startswith("."):
        return True  # ! ? … and line breaks always end a sentence
    before = text[: match.start()]
    if match.end() == len(text) and before[-1:].isdigit():
        return False  # "3." may be the start of "3.50": wait for the next piece
    last = _LAST_WORD.search(before)
    head, word = (before[: last.start()], last.group().lstrip("(\"'“‘").lower()) if last else ("", "")
    list_number = word.isdigit() and len(word) <= 2 and (not head.strip() or head.endswith("\n"))
    return not (word in _NO_BREAK_AFTER or (len(word) == 1 and word.isalpha()) or list_number)


def _has_words(text: str) -> bool:
    return any(char.isalnum() for char in text)  # a lone '"' or '!' left over from chunking is not spoken


def _clean(sentence: str) -> str:
    return " ".join(sentence.split())


class SentenceSplitter:
    """Feed streamed text; get each sentence back as soon as the next word shows it is complete."""

    def __init__(self, max_chars: int = MAX_SENTENCE_CHARS) -> None:
        self.max_chars = max_chars
        self._buffer = ""

    def feed(self, piece: str) -> list[str]:
        self._buffer += piece
        out: list[str] = []
        start = 0
        for match in _END.finditer(self._buffer):
            if match.end() > start and _ends_sentence(self._buffer, match):
                out += self._capped(self._buffer[start : match.end()])
                start = match.end()
        self._buffer = self._buffer[start:]
        while len(self._buffer) > self.max_chars:  # a run-on sentence: say what we have up to a pause
            cut = _pause(self._buffer, self.max_chars)
            out.append(_clean(self._buffer[:cut]))
            self._buffer = self._buffer[cut:]
        return [s for s in out if _has_words(s)]

    def _capped(self, text: str) -> list[str]:
        parts = []
        text = _clean(text)
        while len(text) > self.max_chars:
            cut = _pause(text, self.max_chars)
            parts.append(text[:cut].strip())
            text = text[cut:].strip()
        return [*parts, text]

    def flush(self) -> str | None:
        """What is left when the stream ends (the last sentence often has no space after it)."""
        rest, self._buffer = _clean(self._buffer), ""
        return rest if _has_words(rest) else None


def _pause(text: str, limit: int) -> int:
    """Where to break an over-long sentence: after the last comma, semicolon or colon, else a space."""
    window = text[:limit]
    for marks in ((",", ";", ":", "—"), (" ",)):
        at = max(window.rfind(m) for m in marks)
        if at > limit // 3:
            return at + 1
    return limit


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """All sentences of a complete text, as :class:`SentenceSplitter` would yield them."""
    splitter = SentenceSplitter(max_chars)
    sentences = splitter.feed(text + " ")
    tail = splitter.flush()
    return sentences + ([tail] if tail else [])


def cut_at_sentence(sentences: Sequence[str], limit: int) -> tuple[list[str], bool]:
    """The leading sentences that fit in ``limit`` characters (joined by spaces), and whether any were cut.

    A first sentence longer than the limit is cut at a word and ends with "…".
    """
    kept: list[str] = []
    used = 0
    for sentence in sentences:
        extra = len(sentence) + (1 if kept else 0)
        if used + extra > limit:
            if not kept:
                words = sentence[: max(limit - 1, 0)].rsplit(" ", 1)[0]
                kept.append(words.rstrip(",;:") + "…")
            return kept, True
        kept.append(sentence)
        used += extra
    return kept, False


class ChatHistory:
    """The last few exchanges per channel, in memory only, bounded in messages, characters and channels."""

    def __init__(
        self,
        max_messages: int = HISTORY_MESSAGES,
        max_chars: int = HISTORY_CHARS,
        max_channels: int = HISTORY_CHANNELS,
    ) -> None:
        self.max_messages, self.max_chars, self.max_channels = max_messages, max_chars, max_channels
        self._channels: OrderedDict[int, deque[ChatMessage]] = OrderedDict()

    def messages(self, channel_id: int) -> list[ChatMessage]:
        return list(self._channels.get(channel_id, ()))

    def add_exchange(self, channel_id: int, question: str, answer: str) -> None:
        kept = self._channels.pop(channel_id, None) or deque(maxlen=self.max_messages)
        kept.extend((ChatMessage("user", question), ChatMessage("assistant", answer)))
        while len(kept) > 2 and sum(len(m.content) for m in kept) > self.max_chars:
            kept.popleft()
            kept.popleft()
        self._channels[channel_id] = kept
        while len(self._channels) > self.max_channels:
            self._channels.popitem(last=False)


def build_messages(
    system_prompt: str | None, history: Sequence[ChatMessage], question: str
) -> list[ChatMessage]:
    """System prompt (the server's, or the default), the channel's recent exchange, then the question."""
    system = ChatMessage("system", system_prompt or DEFAULT_SYSTEM_PROMPT)
    return [system, *history, ChatMessage("user", question)]
