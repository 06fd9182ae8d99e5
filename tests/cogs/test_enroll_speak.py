"""The whole path through the real bot: admin enables cloning → a member enrolls with the phrase →
/speak plays Opus frames that add up to the synthesized audio → and every refusal on the way."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import AsyncIterator

import pytest

from bot.enrollment import PREVIEW_MAX_SECONDS, PREVIEW_TEXT
from tests.cogs.conftest import TEST_PHRASE, World, dump, wait_for
from tests.support.discord_harness import HarnessVoiceClient
from worker.types import SpeechRequest

pytestmark = pytest.mark.asyncio(loop_scope="session")

WRONG_TEXT = "the weather will change tomorrow so remember your umbrella and a warm coat"
OTHER_VOICE = "en-us+f3"  # a clearly different espeak voice


async def test_enable_enroll_speak(world: World) -> None:
    h, fx = world.harness, world.fx
    await world.enable_cloning(cooldown=0)
    assert "Saved." in h.all_text()

    await h.slash(fx, world.ada, "enroll")
    shown = h.last_text()
    assert TEST_PHRASE in shown and "/voice delete" in shown and "What is stored" in shown, shown

    clip = world.voice_message("consent", TEST_PHRASE)
    await h.slash(fx, world.ada, "enroll", attachments={"clip": world.attach(clip)})
    assert "Your voice is enrolled" in h.last_text(), dump(world)
    progress = "\n".join(c.text for c in h.calls if c.method == "PATCH")
    for stage in ("Checking the audio", "Transcribing", "Comparing", "Cloning"):
        assert stage in progress
    files = world.files()
    assert files["spectrogram.png"].startswith(b"\x89PNG")
    await world.preview_sent()
    assert world.files()["preview.wav"].startswith(b"RIFF")
    voice = await world.bot.repos.profiles.get_voice(fx.guild.id, world.ada.id)
    assert voice is not None
    records = await world.bot.repos.profiles.consent_records(fx.guild.id, world.ada.id)
    assert records[0].phrase == TEST_PHRASE and records[0].match_score <= 0.35
    assert await world.bot.repos.challenges.active(fx.guild.id, world.ada.id) is None  # phrase used up

    h.join_voice(fx, world.ada.id)
    await h.slash(fx, world.ada, "speak", {"text": "Hello there, friends."})
    assert "Speaking in" in h.last_text(), dump(world)
    player = world.bot.players.existing(fx.guild.id)
    assert player is not None
    await wait_for(lambda: player.current is None and not player.queue, timeout=120)
    assert any("speaking in their own cloned voice" in c.text for c in h.calls), dump(world)
    vc = HarnessVoiceClient.instances[-1]
    # Every frame was Opus-encoded by libopus; the frames add up to the synthesized audio.
    assert vc.packets and all(0 < len(p) < 1276 for p in vc.packets)
    last = world.last_utterance
    assert last is not None
    synthesized_s = last.samples_synthesized / 24_000
    played_s = last.frames_played * 0.020
    assert synthesized_s > 0.2
    assert abs(played_s - synthesized_s) <= 0.021, (played_s, synthesized_s)


async def test_a_french_member_reads_french_and_the_channel_the_servers_language(world: World) -> None:
    """What answers a member follows their client's language; what is posted in the channel, the server's."""
    h, fx = world.harness, world.fx
    await world.enable_cloning(cooldown=0)
    h.locale = "fr"
    await h.slash(fx, world.ada, "enroll")
    shown = h.last_text()
    assert "**Enregistrer votre voix sur" in shown and TEST_PHRASE in shown, shown
    h.locale = "en-US"
    assert "Your voice is enrolled" in await world.enroll(world.ada), dump(world)
    h.locale = "fr"
    await h.slash(fx, world.ada, "speak", {"text": "Bonjour à tous."})
    assert "Rejoignez d'abord un salon vocal" in h.last_text(), dump(world)
    h.join_voice(fx, world.ada.id)
    await h.slash(fx, world.ada, "speak", {"text": "Bonjour à tous, je parle français ce soir."})
    player = world.bot.players.existing(fx.guild.id)
    assert player is not None
    await wait_for(lambda: player.current is None and not player.queue, timeout=120)
    announced = [c.text for c in h.calls if "🔊" in (c.text or "") and "cloned voice" in c.text]
    assert announced == ["🔊 ada is speaking in their own cloned voice (AI-generated)."], dump(world)


async def test_cloning_off_by_default(world: World) -> None:
    await world.harness.slash(world.fx, world.ada, "enroll")
    assert "Voice cloning is off in this server" in world.harness.last_text()


async def test_member_cannot_change_settings(world: World) -> None:
    await world.harness.slash(world.fx, world.ada, "consent set", {"cloning": True})
    assert "Manage Server" in world.harness.last_text()
    settings = await world.bot.repos.settings.get(world.fx.guild.id)
    assert settings.cloning_enabled is False


async def test_wrong_role_cannot_enroll(world: World) -> None:
    await world.enable_cloning()
    role = world.fx.guild.get_role(world.fx.everyone_role_id)
    assert role is not None
    await world.harness.slash(
        world.fx,
        world.admin,
        "consent roles",
        {"kind": "enroll", "action": "add"},
        roles={"role": next(r.id for r in world.admin.roles[1:])},
    )
    await world.harness.slash(world.fx, world.ada, "enroll")
    assert "only members with one of these roles can enroll" in world.harness.last_text()


async def test_wrong_phrase_is_refused_and_phrase_stays_usable(world: World) -> None:
    await world.enable_cloning()
    text = await world.enroll(world.ada, phrase_text=WRONG_TEXT)
    assert "doesn't match the phrase" in text and "I heard" in text
    assert await world.bot.repos.profiles.get(world.fx.guild.id, world.ada.id) is None
    assert await world.bot.repos.challenges.active(world.fx.guild.id, world.ada.id) is not None


async def test_clip_without_a_phrase_is_refused(world: World) -> None:
    await world.enable_cloning()
    clip = world.voice_message("nophrase", TEST_PHRASE)
    await world.harness.slash(world.fx, world.ada, "enroll", attachments={"clip": world.attach(clip)})
    assert "Run `/enroll` to get one" in world.harness.last_text()


async def test_someone_elses_voice_message_is_refused(world: World) -> None:
    await world.enable_cloning()
    h, fx = world.harness, world.fx
    await h.slash(fx, world.ada, "enroll")
    clip = world.voice_message("bobs", TEST_PHRASE)
    att = world.attach(clip)
    message = h.message_payload(
        fx.text_channel.id, {}, author_id=world.bob.id, attachments=[att], flags=1 << 13, guild_id=fx.guild.id
    )
    await h.message_command(fx, world.ada, "Enroll this voice message", message)
    assert "only enroll your own voice" in h.last_text()
    # Her own voice message works through the same command.
    own = h.message_payload(
        fx.text_channel.id, {}, author_id=world.ada.id, attachments=[att], flags=1 << 13, guild_id=fx.guild.id
    )
    await h.message_command(fx, world.ada, "Enroll this voice message", own)
    assert "Your voice is enrolled" in h.last_text(), dump(world)


async def test_reference_clip_of_another_speaker_is_refused(world: World) -> None:
    await world.enable_cloning()
    h, fx = world.harness, world.fx
    await h.slash(fx, world.ada, "enroll")
    clip = world.voice_message("consent", TEST_PHRASE)
    other = world.voice_message(
        "other", "Our neighbours planted a row of apple trees along the fence.", voice=OTHER_VOICE
    )
    await h.slash(
        fx, world.ada, "enroll", attachments={"clip": world.attach(clip), "reference": world.attach(other)}
    )
    assert "doesn't sound like the same person" in h.last_text(), dump(world)
    assert await world.bot.repos.profiles.get(fx.guild.id, world.ada.id) is None


async def test_speak_refusals(world: World) -> None:
    h, fx = world.harness, world.fx
    await world.enable_cloning(cooldown=60, max_text_length=40)
    assert "Your voice is enrolled" in await world.enroll(world.ada), dump(world)

    await h.slash(fx, world.ada, "speak", {"text": "hello"})
    assert "Join a voice channel first" in h.last_text()

    h.join_voice(fx, world.ada.id)
    await h.slash(fx, world.ada, "speak", {"text": "x" * 41})
    assert "this server's limit is 40" in h.last_text()

    h.join_voice(fx, world.bob.id)
    await h.slash(fx, world.bob, "speak", {"text": "hi"}, users={"voice": world.ada})
    assert "doesn't allow speaking in other members' voices" in h.last_text()
    await h.slash(fx, world.admin, "consent set", {"sharing": True})
    await h.slash(fx, world.bob, "speak", {"text": "hi"}, users={"voice": world.ada})
    assert "hasn't shared their voice with you" in h.last_text()

    await h.slash(fx, world.ada, "speak", {"text": "first"})
    assert "Speaking in" in h.last_text(), dump(world)
    await h.slash(fx, world.ada, "speak", {"text": "second"})
    assert "Slow down a little" in h.last_text()
    player = world.bot.players.existing(fx.guild.id)
    assert player is not None
    await wait_for(lambda: player.current is None and not player.queue, timeout=120)


async def test_dead_worker_is_explained(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that is down: the member is told what happened, no traceback."""
    from worker.client import HttpSpeechService

    await world.enable_cloning()
    dead = HttpSpeechService(["http://127.0.0.1:9"], token="t", timeout_s=2.0)
    monkeypatch.setattr(world.bot.enrollment, "speech", dead)
    text = await world.enroll(world.ada)
    await dead.aclose()
    assert "speech worker is not reachable" in text, dump(world)
    assert "Traceback" not in world.harness.all_text()


async def test_leaves_when_alone_in_the_channel(world: World) -> None:
    h, fx = world.harness, world.fx
    await world.enable_cloning(cooldown=0)
    assert "Your voice is enrolled" in await world.enroll(world.ada), dump(world)
    h.join_voice(fx, world.ada.id)
    await h.slash(fx, world.ada, "speak", {"text": "Goodbye."})
    player = world.bot.players.existing(fx.guild.id)
    assert player is not None
    await wait_for(lambda: player.current is None and not player.queue, timeout=120)
    vc = HarnessVoiceClient.instances[-1]
    assert vc.is_connected()
    before, after = h.leave_voice(fx, world.ada.id)
    cog = world.bot.get_cog("Speak")
    await cog.on_voice_state_update(world.ada, before, after)  # type: ignore[union-attr]
    assert not vc.is_connected() and vc.disconnects == 1


async def test_expired_attachment_url_is_fetched_again_from_the_message(world: World) -> None:
    h, fx = world.harness, world.fx
    await world.enable_cloning()
    await h.slash(fx, world.ada, "enroll")
    fresh = world.attach(world.voice_message("consent", TEST_PHRASE))
    message = h.message_payload(
        fx.text_channel.id,
        {},
        author_id=world.ada.id,
        attachments=[fresh],
        flags=1 << 13,
        guild_id=fx.guild.id,
    )
    stale_url = fresh["url"].replace("/attachments/", "/expired/")
    stale = {**message, "attachments": [{**fresh, "url": stale_url, "proxy_url": stale_url}]}
    await h.message_command(fx, world.ada, "Enroll this voice message", stale)
    assert "Your voice is enrolled" in h.last_text(), dump(world)
    assert h.cdn_fetches[-2:] == [stale_url, fresh["url"]]
    assert any(c.method == "GET" and c.path.endswith(f"/messages/{message['id']}") for c in h.calls)


async def test_enrolment_answers_before_the_preview_is_ready(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The voice is stored and the member told so while the preview is still being made; it follows."""
    h, fx = world.harness, world.fx
    await world.enable_cloning()
    speech = world.bot.speech
    real = speech.synthesize
    release = asyncio.Event()
    asked: list[SpeechRequest] = []

    async def slow(request: SpeechRequest) -> AsyncIterator[bytes]:  # an engine busy with other work
        asked.append(request)
        await release.wait()
        async for chunk in real(request):
            yield chunk

    monkeypatch.setattr(speech, "synthesize", slow)
    await h.slash(fx, world.ada, "enroll")
    clip = world.attach(world.voice_message("consent", TEST_PHRASE))
    await asyncio.wait_for(h.slash(fx, world.ada, "enroll", attachments={"clip": clip}), timeout=90)

    answer = h.last_text()
    assert "Your voice is enrolled" in answer and "preview in your new voice follows" in answer, dump(world)
    assert await world.bot.repos.profiles.get_voice(fx.guild.id, world.ada.id) is not None
    await wait_for(lambda: bool(asked), timeout=10)  # the preview is being made, after the answer
    assert "preview.wav" not in world.files()
    assert "Making a short preview" not in "\n".join(c.text for c in h.calls if c.method == "PATCH")

    release.set()
    preview = await world.preview_sent()
    assert preview.kind == "webhook" and preview.ephemeral and PREVIEW_TEXT in preview.text
    with wave.open(io.BytesIO(preview.files["preview.wav"]), "rb") as w:
        seconds = w.getnframes() / w.getframerate()
    assert 1.0 <= seconds <= PREVIEW_MAX_SECONDS
    [request] = asked
    assert request.text == PREVIEW_TEXT
