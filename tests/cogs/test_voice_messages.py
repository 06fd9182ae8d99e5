"""Voice messages through the real bot: espeak-ng speech as Discord voice messages (OGG/Opus), the real
tiny.en Whisper, real ffmpeg and storage, and a real chat completions server on loopback (the fake LLM).

Messages arrive as gateway MESSAGE_CREATE events (``parse_message_create``), message commands through
the command tree; replies, the requests the model received and the queued utterances are asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jiwer
import pytest
import pytest_asyncio

from bot.assistant import DEFAULT_SYSTEM_PROMPT, AssistantClient
from bot.player import Utterance
from tests.cogs.conftest import ADA_ID, ADMIN_ID, BOB_ID, World, dump, open_world, wait_for
from tests.support.discord_harness import Recorded
from tests.support.fake_llm import FakeLLM, Reply, closed_port_url
from worker.analysis.verify import normalize_text
from worker.local import LocalSpeechService

pytestmark = pytest.mark.asyncio(loop_scope="session")

VOICE_FLAG = 1 << 13  # MessageFlags.voice
KEY = "sk-test-voice-0123456789abcdef"
SAID = "the quick brown fox jumps over the lazy dog"
QUESTION = "what is the capital of france"
ANSWER = ["Paris is the capital of France.", "It is known for the Eiffel Tower.", "Have a lovely day!"]


@pytest_asyncio.fixture(loop_scope="session")
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def vm(speech: LocalSpeechService, tmp_path: Path, llm: FakeLLM) -> AsyncIterator[World]:
    """Message Content intent on, the assistant pointed at the fake model with short timeouts."""
    env = {
        "MESSAGE_CONTENT_INTENT": "true",
        "LLM_BASE_URL": llm.base_url,
        "LLM_API_KEY": KEY,
        "LLM_MODEL": "fake-model",
    }
    async with open_world(speech, tmp_path, **env) as world:
        await set_llm(world, llm.base_url)
        yield world


@pytest_asyncio.fixture(loop_scope="session")
async def no_intent(speech: LocalSpeechService, tmp_path: Path, llm: FakeLLM) -> AsyncIterator[World]:
    """The default: no Message Content intent; the assistant configured."""
    async with open_world(speech, tmp_path, LLM_BASE_URL=llm.base_url, LLM_API_KEY=KEY) as world:
        yield world


def cog(world: World) -> Any:
    """The loaded VoiceMessages cog (load_extension imports its own copy of the module)."""
    found = world.bot.get_cog("VoiceMessages")
    assert found is not None and type(found).__name__ == "VoiceMessages"
    return found


async def set_llm(world: World, url: str, chunk_timeout_s: float = 10.0) -> None:
    service = cog(world).service
    assert service.llm is not None
    config = replace(service.llm.config, base_url=url, chunk_timeout_s=chunk_timeout_s, connect_timeout_s=2.0)
    old, service.llm = service.llm, AssistantClient(config)
    await old.aclose()


async def mode(world: World, mode: str, **settings: Any) -> None:
    """Cloning on without cooldown, and voice messages handled in the server's text channel."""
    await world.enable_cloning(cooldown=0, **settings)
    await world.bot.repos.settings.update(
        world.fx.guild.id,
        updated_by=ADMIN_ID,
        voice_message_mode=mode,
        voice_message_channel_ids=[world.fx.text_channel.id],
    )


def voice_message(world: World, author_id: int, text: str, *, name: str = "vm", **att: Any) -> dict[str, Any]:
    path = world.voice_message(f"{name}-{time.monotonic_ns()}", text)
    return message_with(world, author_id, path.read_bytes(), f"{name}.ogg", "audio/ogg", **att)


def message_with(
    world: World,
    author_id: int,
    data: bytes,
    filename: str,
    content_type: str,
    *,
    duration_s: float | None = 3.0,
    voice: bool = True,
    channel_id: int | None = None,
) -> dict[str, Any]:
    h, fx = world.harness, world.fx
    att = h.attachment(filename, data, content_type, duration_s=duration_s)
    return h.message_payload(
        channel_id or fx.text_channel.id,
        {},
        author_id=author_id,
        attachments=[att],
        flags=VOICE_FLAG if voice else 0,
        guild_id=fx.guild.id,
    )


async def deliver(world: World, payload: dict[str, Any], times: int = 1) -> None:
    """MESSAGE_CREATE from the gateway (``times`` copies, as a resumed session replays), handled fully."""
    for _ in range(times):
        world.bot._connection.parse_message_create(payload)  # type: ignore[arg-type]
    listeners = [t for t in asyncio.all_tasks() if t.get_name() == "discord.py: on_message"]
    await asyncio.gather(*listeners)


def replies(world: World) -> list[Recorded]:
    """Messages the bot posted as replies to a message."""
    return [
        c for c in world.harness.calls if c.method == "POST" and (c.payload or {}).get("message_reference")
    ]


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


def wer(expected: str, heard: str) -> float:
    return float(jiwer.wer(normalize_text(expected), normalize_text(heard)))


def transcribe_calls(world: World, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Count the speech service's transcriptions (the real ones still run)."""
    calls: list[float] = []
    speech = cog(world).service.speech
    original = speech.transcribe

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return await original(*args, **kwargs)

    monkeypatch.setattr(speech, "transcribe", counted)
    return calls


# ---- transcribe -------------------------------------------------------------------------------------


async def test_transcribe_mode_replies_once_per_message(vm: World, monkeypatch: pytest.MonkeyPatch) -> None:
    await mode(vm, "transcribe")
    calls = transcribe_calls(vm, monkeypatch)
    payload = voice_message(vm, BOB_ID, SAID)
    await deliver(vm, payload, times=3)  # the same event three times
    (reply,) = replies(vm)
    assert reply.payload and int(reply.payload["message_reference"]["message_id"]) == int(payload["id"])
    assert "Transcript" in reply.content and "(English," in reply.content
    heard = reply.content.split(">>> ", 1)[1]
    assert wer(SAID, heard) <= 0.35, heard
    assert len(calls) == 1

    # The message command reuses that transcript (still one transcription) and answers privately.
    await vm.harness.message_command(vm.fx, vm.ada, "Transcribe", payload)
    assert heard in vm.harness.last_text() and vm.harness.responses()[-1].ephemeral
    assert len(calls) == 1


async def test_only_listed_channels_and_only_audio(vm: World) -> None:
    await mode(vm, "transcribe")
    elsewhere = voice_message(vm, BOB_ID, SAID, channel_id=vm.fx.voice_channel.id)  # a voice channel's chat
    await deliver(vm, elsewhere)
    text_file = message_with(
        vm, BOB_ID, b"just some notes", "notes.txt", "text/plain", voice=False, duration_s=None
    )
    await deliver(vm, text_file)
    assert replies(vm) == [], dump(vm)
    # An audio file that is not a voice message is handled too, after ffprobe looks at it.
    mp3 = vm.tmp / "upload.mp3"
    ffmpeg("-i", vm.voice_message("up", SAID), mp3)
    await deliver(
        vm,
        message_with(vm, BOB_ID, mp3.read_bytes(), "upload.mp3", "audio/mpeg", voice=False, duration_s=None),
    )
    assert "Transcript" in replies(vm)[-1].content, dump(vm)
    # One that only claims to be audio is refused with what to send instead.
    await deliver(
        vm,
        message_with(
            vm, BOB_ID, b"<html>not audio</html>" * 20, "song.mp3", "audio/mpeg", voice=False, duration_s=None
        ),
    )
    assert "not audio I can read" in replies(vm)[-1].content


async def test_not_audio_and_too_long_are_refused(vm: World) -> None:
    await mode(vm, "transcribe")
    h = vm.harness
    plain = h.message_payload(
        vm.fx.text_channel.id, {"content": "hi"}, author_id=BOB_ID, guild_id=vm.fx.guild.id
    )
    await h.message_command(vm.fx, vm.ada, "Transcribe", plain)
    assert "has no voice message or audio file" in h.last_text()

    # A 20-minute voice message: refused from what Discord declares, before anything is downloaded.
    twenty = vm.tmp / "twenty.ogg"
    ffmpeg(
        "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "1200", "-c:a", "libopus", "-b:a", "6k", twenty
    )
    fetched = len(h.cdn_fetches)
    started = time.monotonic()
    await deliver(
        vm, message_with(vm, BOB_ID, twenty.read_bytes(), "voice-message.ogg", "audio/ogg", duration_s=1200.0)
    )
    assert time.monotonic() - started < 1.0
    assert "20 min 0 s long" in replies(vm)[-1].content and "up to 5 min 0 s" in replies(vm)[-1].content
    assert len(h.cdn_fetches) == fetched
    # The same file as a plain upload declares nothing: ffprobe reads its length before any decoding.
    started = time.monotonic()
    await deliver(
        vm,
        message_with(vm, BOB_ID, twenty.read_bytes(), "long.ogg", "audio/ogg", voice=False, duration_s=None),
    )
    assert "20 min 0 s long; the limit is 5 min 0 s" in replies(vm)[-1].content, dump(vm)
    assert time.monotonic() - started < 5.0

    # The limit is the server's: an admin lowers it to one minute and a 3-minute message is refused.
    await h.slash(vm.fx, vm.admin, "consent voice-messages", {"max_minutes": 1})
    assert "1 min" in h.last_text()
    await deliver(vm, message_with(vm, BOB_ID, b"OggS", "voice-message.ogg", "audio/ogg", duration_s=180.0))
    assert "up to 1 min 0 s" in replies(vm)[-1].content, dump(vm)


# ---- relay ------------------------------------------------------------------------------------------


async def test_relay_speaks_in_the_authors_own_voice(vm: World) -> None:
    await mode(vm, "relay")
    assert "Your voice is enrolled" in await vm.enroll(vm.ada), dump(vm)
    vm.harness.join_voice(vm.fx, ADA_ID)
    said = "I am on my way and I will see you soon"
    await deliver(vm, voice_message(vm, ADA_ID, said))
    reply = replies(vm)[-1].content
    assert "Saying this in your voice in" in reply and "Transcript" in reply, dump(vm)
    utterance = vm.last_utterance
    assert utterance is not None and utterance.voice_owner_id == ADA_ID and utterance.requester_id == ADA_ID
    assert wer(said, utterance.request.text) <= 0.35, utterance.request.text
    await asyncio.wait_for(utterance.finished.wait(), 120)
    assert utterance.error is None and utterance.frames_played > 0
    assert any("speaking in their own cloned voice" in c.text for c in vm.harness.calls), dump(vm)

    # Bob never enrolled: no consent, nothing spoken; the transcript is still posted.
    vm.harness.join_voice(vm.fx, BOB_ID)
    await deliver(vm, voice_message(vm, BOB_ID, SAID))
    reply = replies(vm)[-1].content
    assert "Transcript" in reply and "I didn't say it aloud" in reply and "haven't enrolled a voice" in reply
    assert vm.last_utterance is utterance


# ---- assistant --------------------------------------------------------------------------------------


class Playback:
    """Watches the server's player: each utterance, with the time it started playing (its first frame)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.started: list[tuple[Utterance, float]] = []
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            player = self.world.bot.players.existing(self.world.fx.guild.id)
            current = player.current if player is not None else None
            if (
                current is not None
                and current.started.is_set()
                and all(u is not current for u, _ in self.started)
            ):
                self.started.append((current, time.monotonic()))
            await asyncio.sleep(0.005)

    async def until_idle(self) -> list[str]:
        player = self.world.bot.players.existing(self.world.fx.guild.id)
        assert player is not None
        await wait_for(lambda: player.current is None and not player.queue, timeout=180)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return [u.request.text for u, _ in self.started]


async def test_assistant_speaks_each_sentence_as_it_streams(vm: World, llm: FakeLLM) -> None:
    await mode(vm, "assistant")
    assert "Your voice is enrolled" in await vm.enroll(vm.ada), dump(vm)
    vm.harness.join_voice(vm.fx, ADA_ID)
    # The model writes the first sentence, then thinks for 6 s before the rest.
    llm.answer(Reply(text=" ".join(ANSWER), delay_between_s=0.02, pauses={len(ANSWER[0].split()): 6.0}))
    playback = Playback(vm)
    arrived = time.monotonic()
    await deliver(vm, voice_message(vm, ADA_ID, QUESTION))
    assert replies(vm)[-1].content.startswith("🤖 " + " ".join(ANSWER)), dump(vm)
    spoken = await playback.until_idle()
    assert spoken == ANSWER  # every sentence, in order
    first_audio = playback.started[0][1]
    served = llm.served[-1]
    assert served.finished_at is not None and first_audio < served.finished_at  # before the model finished
    print(
        f"\nvoice message arrived → first audio frame: {first_audio - arrived:.2f} s "
        f"(model asked at +{llm.requests[-1].at - arrived:.2f} s; on the 2-core dev CPU)"
    )
    assert all(u.voice_owner_id == ADA_ID and u.frames_played > 0 for u, _ in playback.started)
    assert "The assistant is answering ada in their own cloned voice" in vm.harness.all_text()

    sent = llm.requests[-1]
    assert (
        sent.authorization == f"Bearer {KEY}" and sent.body["model"] == "fake-model" and sent.body["stream"]
    )
    assert sent.messages[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert sent.messages[-1]["role"] == "user" and wer(QUESTION, sent.messages[-1]["content"]) <= 0.35

    # The server's own instructions, and the channel's last exchange, go with the next question.
    await vm.harness.slash(vm.fx, vm.admin, "consent assistant", {"prompt": "Answer like a pirate."})
    assert (
        "Saved. The assistant answers in the asker's own voice, with your instructions"
        in vm.harness.last_text()
    )
    llm.answer(Reply(text="Arr, about two million souls."))
    playback = Playback(vm)
    await deliver(vm, voice_message(vm, ADA_ID, "how many people live there"))
    assert await playback.until_idle() == ["Arr, about two million souls."]
    roles = [m["role"] for m in llm.requests[-1].messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert llm.requests[-1].messages[0]["content"] == "Answer like a pirate."
    assert llm.requests[-1].messages[2]["content"] == " ".join(ANSWER)


async def test_assistant_voice_needs_its_owners_opt_in(vm: World, llm: FakeLLM) -> None:
    h, fx = vm.harness, vm.fx
    await mode(vm, "assistant")
    assert "Your voice is enrolled" in await vm.enroll(vm.ada), dump(vm)
    await h.slash(fx, vm.admin, "consent assistant", users={"voice": vm.ada})
    assert "ada hasn't allowed the assistant to use their voice" in h.last_text()
    assert (await vm.bot.repos.settings.get(fx.guild.id)).assistant_voice_user_id is None
    await h.slash(fx, vm.ada, "voice assistant-optin")
    await h.slash(fx, vm.admin, "consent assistant", users={"voice": vm.ada})
    assert f"The assistant answers in <@{ADA_ID}>'s voice" in h.last_text(), dump(vm)

    # Ada withdraws: Bob's question is refused before the model is asked.
    await h.slash(fx, vm.ada, "voice assistant-optout")
    h.join_voice(fx, BOB_ID)
    asked = len(llm.requests)
    await deliver(vm, voice_message(vm, BOB_ID, QUESTION))
    assert "ada hasn't allowed the assistant to use their voice" in replies(vm)[-1].content, dump(vm)
    assert len(llm.requests) == asked

    # Opted in again: Bob (no voice of his own) hears the answer in Ada's voice, cut at the speech limit.
    await h.slash(fx, vm.ada, "voice assistant-optin")
    await h.slash(fx, vm.admin, "consent set", {"max_text_length": 60})
    llm.answer(Reply(text=" ".join(ANSWER), delay_between_s=0.05))
    playback = Playback(vm)
    await deliver(vm, voice_message(vm, BOB_ID, QUESTION))
    reply = replies(vm)[-1].content
    assert reply.startswith(f"🤖 {ANSWER[0]}\n") and ANSWER[1] not in reply and "cut at a sentence" in reply
    assert await playback.until_idle() == [ANSWER[0]]
    ((utterance, _),) = playback.started
    assert utterance.voice_owner_id == ADA_ID and utterance.requester_id == BOB_ID
    assert "The assistant is answering bob in ada's cloned voice" in h.all_text()
    await wait_for(lambda: llm.served[-1].client_gone, timeout=5)  # the rest was not even generated


async def test_assistant_endpoint_down_slow_or_refusing(vm: World, llm: FakeLLM) -> None:
    await mode(vm, "assistant")  # Bob is in no voice channel: answers come as text only
    await set_llm(vm, closed_port_url())
    await deliver(vm, voice_message(vm, BOB_ID, QUESTION))
    assert "couldn't reach the assistant's server" in replies(vm)[-1].content, dump(vm)

    await set_llm(vm, llm.base_url, chunk_timeout_s=1.0)
    llm.answer(Reply(delay_before_s=30.0))
    payload = voice_message(vm, BOB_ID, QUESTION)
    started = time.monotonic()
    await deliver(vm, payload)
    assert "took too long to answer" in replies(vm)[-1].content, dump(vm)
    assert time.monotonic() - started < 6.0

    llm.answer(Reply(status=401))
    await deliver(vm, voice_message(vm, BOB_ID, QUESTION))
    assert "LLM_API_KEY" in replies(vm)[-1].content
    assert "Traceback" not in vm.harness.all_text() and KEY not in vm.harness.all_text()

    llm.answer(Reply(text="Paris is the capital of France."))
    await deliver(vm, voice_message(vm, BOB_ID, QUESTION))
    reply = replies(vm)[-1].content
    assert reply.startswith("🤖 Paris is the capital of France.") and "Join a voice channel to hear" in reply


# ---- message commands without the Message Content intent --------------------------------------------


async def test_message_commands_work_without_the_intent(
    no_intent: World, llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    w, h, fx = no_intent, no_intent.harness, no_intent.fx
    assert not w.bot.intents.message_content
    assert any("MESSAGE_CONTENT_INTENT is off" in r.getMessage() for r in caplog.get_records("setup"))
    await mode(w, "assistant")
    await h.slash(fx, w.admin, "consent show")
    assert "Automatic voice messages are not active" in h.last_text()

    payload = voice_message(w, BOB_ID, QUESTION)
    await deliver(w, payload)
    assert replies(w) == []  # no automatic handling without the intent

    await h.message_command(fx, w.bob, "Transcribe", payload)
    assert "Transcript" in h.last_text() and wer(QUESTION, h.last_text().split(">>> ", 1)[1]) <= 0.35

    assert "Your voice is enrolled" in await w.enroll(w.ada), dump(w)
    h.join_voice(fx, ADA_ID)
    llm.answer(Reply(text="Paris is the capital of France. Lovely city."))
    playback = Playback(w)
    await h.message_command(fx, w.ada, "Answer", payload)
    answered = h.responses()[-1]
    assert (
        answered.content.startswith("🤖 Paris is the capital of France. Lovely city.")
        and not answered.ephemeral
    )
    assert await playback.until_idle() == ["Paris is the capital of France.", "Lovely city."]
    assert all(u.voice_owner_id == ADA_ID for u, _ in playback.started)

    text_only = h.message_payload(
        fx.text_channel.id, {"content": "hi"}, author_id=BOB_ID, guild_id=fx.guild.id
    )
    await h.message_command(fx, w.ada, "Answer", text_only)
    assert "has no voice message or audio file" in h.last_text()
