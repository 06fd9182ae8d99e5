"""The assistant's chat completions client against a real loopback server, its text helpers, and the
policy rule for the assistant's voice."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bot.assistant import (
    DEFAULT_SYSTEM_PROMPT,
    AssistantClient,
    ChatHistory,
    ChatMessage,
    LLMConfig,
    SentenceSplitter,
    build_messages,
    cut_at_sentence,
    split_sentences,
)
from bot.errors import (
    AssistantBadResponse,
    AssistantRefused,
    AssistantTimeout,
    AssistantUnavailable,
    AssistantVoiceNotOptedIn,
    CloningDisabled,
    NoVoiceProfile,
    RoleNotAllowed,
)
from bot.policy import Actor, Policy, VoiceFacts
from core.errors import ConfigError
from storage import GuildSettings
from tests.support.fake_llm import CHAT_PATH, FakeLLM, Reply, closed_port_url

KEY = "sk-test-abcdef0123456789-SECRET"
QUESTION = [ChatMessage("system", "Be brief."), ChatMessage("user", "What is the capital of France?")]


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM() as server:
        yield server


def client_for(
    url: str, *, connect_timeout_s: float = 5.0, chunk_timeout_s: float = 5.0, total_timeout_s: float = 30.0
) -> AssistantClient:
    config = LLMConfig(url, "fake-model", SecretStr(KEY), connect_timeout_s, chunk_timeout_s, total_timeout_s)
    return AssistantClient(config)


async def collect(client: AssistantClient) -> list[str]:
    return [piece async for piece in client.stream(QUESTION)]


async def test_stream_yields_pieces_in_order_and_sends_the_protocol(llm: FakeLLM) -> None:
    llm.answer(Reply(pieces=["Paris", " is the", " capital.", " Bonne", " journée!"]))
    client = client_for(llm.base_url)
    pieces = await collect(client)
    await client.aclose()
    assert pieces == ["Paris", " is the", " capital.", " Bonne", " journée!"]
    (sent,) = llm.requests
    assert sent.path == CHAT_PATH
    assert sent.authorization == f"Bearer {KEY}"
    assert sent.body["model"] == "fake-model" and sent.body["stream"] is True
    assert sent.body["messages"] == [m.to_wire() for m in QUESTION]
    assert 0 < sent.body["max_tokens"] <= 1000


async def test_complete_without_streaming(llm: FakeLLM) -> None:
    llm.answer(Reply(text="Paris."))
    client = client_for(llm.base_url)
    assert await client.complete(QUESTION) == "Paris."
    await client.aclose()
    assert llm.requests[0].body["stream"] is False


async def test_a_server_that_ignores_stream_true_still_works(llm: FakeLLM) -> None:
    llm.answer(Reply(text="Whole answer at once.", json_even_if_streaming=True))
    client = client_for(llm.base_url)
    assert await collect(client) == ["Whole answer at once."]
    await client.aclose()


async def test_no_key_sends_no_authorization(llm: FakeLLM) -> None:
    client = AssistantClient(LLMConfig(llm.base_url, "llama3.2"))
    await client.complete(QUESTION)
    await client.aclose()
    assert llm.requests[0].authorization is None


def test_endpoint_from_base_urls() -> None:
    assert (
        LLMConfig("https://api.openai.com/v1", "m").endpoint == "https://api.openai.com/v1/chat/completions"
    )
    assert LLMConfig("http://localhost:11434", "m").endpoint == "http://localhost:11434/v1/chat/completions"
    assert LLMConfig("http://vllm:8000/v1/", "m").endpoint == "http://vllm:8000/v1/chat/completions"
    with pytest.raises(ConfigError, match="LLM_BASE_URL"):
        AssistantClient(LLMConfig("localhost:8080", "m"))


def test_timeouts_come_from_the_settings() -> None:
    from core.settings import load_settings

    settings = load_settings(
        {"LLM_BASE_URL": "http://localhost:11434", "LLM_CHUNK_TIMEOUT_S": "120", "LLM_TOTAL_TIMEOUT_S": "600"}
    )
    config = LLMConfig.from_settings(settings)
    assert config is not None
    assert (config.chunk_timeout_s, config.total_timeout_s) == (120.0, 600.0)
    default = LLMConfig.from_settings(load_settings({"LLM_BASE_URL": "http://localhost:11434"}))
    assert default is not None and (default.chunk_timeout_s, default.total_timeout_s) == (20.0, 90.0)


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "LLM_API_KEY"),
        (403, "LLM_API_KEY"),
        (404, "LLM_MODEL"),
        (429, "too many requests"),
        (500, r"had a problem \(HTTP 500\)"),
        (400, "rejected the question"),
    ],
)
async def test_refusals_are_explained(llm: FakeLLM, status: int, says: str) -> None:
    llm.answer(Reply(status=status), Reply(status=status))
    client = client_for(llm.base_url)
    with pytest.raises(AssistantRefused, match=says) as streamed:
        await collect(client)
    assert streamed.value.status == status
    with pytest.raises(AssistantRefused, match=says):
        await client.complete(QUESTION)
    await client.aclose()


async def test_endpoint_down() -> None:
    client = client_for(closed_port_url(), connect_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(AssistantUnavailable, match="couldn't reach the assistant's server"):
        await collect(client)
    with pytest.raises(AssistantUnavailable):
        await client.complete(QUESTION)
    await client.aclose()
    assert time.monotonic() - started < 3.0


async def test_slow_first_answer_times_out(llm: FakeLLM) -> None:
    llm.answer(Reply(delay_before_s=10.0))
    client = client_for(llm.base_url, chunk_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(AssistantTimeout, match="took too long"):
        await collect(client)
    await client.aclose()
    assert time.monotonic() - started < 2.0


async def test_stall_in_the_middle_times_out(llm: FakeLLM) -> None:
    llm.answer(Reply(text="One two three four five.", stall_after=2))
    client = client_for(llm.base_url, chunk_timeout_s=0.5)
    got: list[str] = []
    with pytest.raises(AssistantTimeout):
        async for piece in client.stream(QUESTION):
            got.append(piece)
    await client.aclose()
    assert got == ["One", " two"]


async def test_an_answer_that_never_ends_hits_the_total_limit(llm: FakeLLM) -> None:
    llm.answer(Reply(text=" ".join(["word"] * 200), delay_between_s=0.05))
    client = client_for(llm.base_url, total_timeout_s=0.6)
    with pytest.raises(AssistantTimeout, match="still talking"):
        await collect(client)
    await client.aclose()


async def test_not_a_chat_completion(llm: FakeLLM) -> None:
    llm.answer(
        Reply(body=b"<html>Welcome to nginx</html>"),
        Reply(body=b"data: {not json}\n\n", content_type="text/event-stream"),
    )
    client = client_for(llm.base_url)
    with pytest.raises(AssistantBadResponse, match="should end in /v1"):
        await client.complete(QUESTION)
    with pytest.raises(AssistantBadResponse):
        await collect(client)
    await client.aclose()


async def test_error_inside_a_stream(llm: FakeLLM) -> None:
    llm.answer(Reply(error_in_stream=True))
    client = client_for(llm.base_url)
    with pytest.raises(AssistantRefused, match="stopped with an error"):
        await collect(client)
    await client.aclose()


async def test_closing_the_stream_hangs_up(llm: FakeLLM) -> None:
    llm.answer(Reply(text=" ".join(["word"] * 40), delay_between_s=0.02))
    client = client_for(llm.base_url)
    stream = client.stream(QUESTION)
    first = await anext(stream)
    await stream.aclose()
    await client.aclose()
    assert first == "word"
    for _ in range(100):
        if llm.served[0].client_gone:
            break
        await asyncio.sleep(0.02)
    assert llm.served[0].client_gone and llm.served[0].finished_at is None


async def test_the_key_is_never_logged(llm: FakeLLM, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    llm.answer(Reply(text="Fine."), Reply(status=401))
    client = client_for(llm.base_url)
    await collect(client)
    errors: list[Exception] = []
    for url in (llm.base_url, closed_port_url()):
        other = client_for(url) if url != llm.base_url else client
        try:
            await collect(other)
        except Exception as exc:
            errors.append(exc)
        await other.aclose()
    assert len(errors) == 2 and "assistant request refused" in caplog.text
    assert KEY not in caplog.text
    assert all(KEY not in f"{e!r} {e}" for e in errors)
    assert KEY not in repr(client.config)


# ---- sentences, the speech limit, history --------------------------------------------------------


def test_sentences_come_out_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Hello there") == []
    assert splitter.feed("! How are") == ["Hello there!"]
    assert splitter.feed(" you?") == ["How are you?"]  # no need to wait for the next word
    assert splitter.feed(" Dr.") == []
    assert splitter.feed(" Smith paid 3.") == []  # maybe 3.50
    assert splitter.feed("50 dollars") == []
    assert splitter.feed(" on May 2. Then") == ["Dr. Smith paid 3.50 dollars on May 2."]
    assert splitter.flush() == "Then"
    assert splitter.flush() is None


def test_sentence_edge_cases() -> None:
    assert split_sentences("First line\nSecond line") == ["First line", "Second line"]
    assert split_sentences("Steps:\n1. Open it.\n2. Close it.") == ["Steps:", "1. Open it.", "2. Close it."]
    assert split_sentences("你好。今天天气很好！") == ["你好。", "今天天气很好！"]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]
    assert split_sentences("J. R. R. Tolkien wrote it. Yes.") == ["J. R. R. Tolkien wrote it.", "Yes."]
    long = "word, " * 80 + "end."
    parts = split_sentences(long, max_chars=100)
    assert all(len(p) <= 100 for p in parts) and "".join(parts).replace(" ", "") == long.replace(" ", "")


def test_cut_at_sentence() -> None:
    sentences = ["One two three.", "Four five six.", "Seven."]
    assert cut_at_sentence(sentences, 100) == (sentences, False)
    assert cut_at_sentence(sentences, 29) == (sentences[:2], True)
    assert cut_at_sentence(sentences, 20) == (sentences[:1], True)
    kept, cut = cut_at_sentence(["A very long first sentence that does not fit."], 20)
    assert cut and kept == ["A very long first…"] and len(kept[0]) <= 20


def test_history_is_bounded() -> None:
    history = ChatHistory(max_messages=4, max_chars=60, max_channels=2)
    history.add_exchange(1, "q1", "a1")
    history.add_exchange(1, "q2", "a2")
    history.add_exchange(1, "q3", "a3")
    assert [m.content for m in history.messages(1)] == ["q2", "a2", "q3", "a3"]
    history.add_exchange(1, "x" * 40, "y" * 30)  # over the character budget: only this exchange stays
    assert [m.role for m in history.messages(1)] == ["user", "assistant"]
    history.add_exchange(2, "q", "a")
    history.add_exchange(3, "q", "a")  # three channels: the least recently used is forgotten
    assert history.messages(1) == [] and len(history.messages(3)) == 2
    built = build_messages(None, history.messages(3), "new")
    assert built[0] == ChatMessage("system", DEFAULT_SYSTEM_PROMPT) and built[-1] == ChatMessage(
        "user", "new"
    )
    assert build_messages("Talk like a pirate.", [], "hi")[0].content == "Talk like a pirate."


# ---- the policy rule for the assistant's voice ----------------------------------------------------

ASKER, OWNER, ROLE = 11, 22, 33
ON = GuildSettings(guild_id=1, cloning_enabled=True)


@pytest.mark.parametrize(
    ("rules", "owner", "has_profile", "opted_in", "roles", "error"),
    [
        (ON, ASKER, True, False, (), None),  # own voice: no opt-in needed
        (ON, OWNER, True, True, (), None),  # an opted-in member's voice
        (ON, OWNER, True, False, (), AssistantVoiceNotOptedIn),
        (ON, OWNER, False, True, (), NoVoiceProfile),
        (ON, ASKER, False, False, (), NoVoiceProfile),
        (GuildSettings(guild_id=1), ASKER, True, False, (), CloningDisabled),
        (
            GuildSettings(guild_id=1, cloning_enabled=True, speak_role_ids=(ROLE,)),
            OWNER,
            True,
            True,
            (),
            RoleNotAllowed,
        ),
        (
            GuildSettings(guild_id=1, cloning_enabled=True, speak_role_ids=(ROLE,)),
            OWNER,
            True,
            True,
            (ROLE,),
            None,
        ),
    ],
)
def test_assistant_voice_policy(
    rules: GuildSettings,
    owner: int,
    has_profile: bool,
    opted_in: bool,
    roles: tuple[int, ...],
    error: type[Exception] | None,
) -> None:
    actor = Actor(ASKER, frozenset(roles), is_admin=False)
    facts = VoiceFacts(owner, "Ada", has_profile, shared_with_actor=False)
    if error is None:
        Policy().check_assistant_voice(actor, rules, facts, owner_opted_in=opted_in)
    else:
        with pytest.raises(error):
            Policy().check_assistant_voice(actor, rules, facts, owner_opted_in=opted_in)
