"""The per-server player through discord.py's real AudioPlayer thread and libopus encoder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import numpy as np
import pytest
from discord.ext import commands

from bot.errors import BusyElsewhere, MissingVoicePermissions, NothingPlaying, QueueFull
from bot.player import GuildPlayer, Utterance
from tests.support.discord_harness import CONNECT, Harness, HarnessVoiceClient, snowflake
from worker.errors import WorkerUnavailable
from worker.types import SpeechRequest, VoiceEmbedding

CHUNK = 2_400  # samples: 100 ms at 24 kHz


class ToneService:
    """A speech service that streams a tone of a fixed length, chunk by chunk, at a set pace."""

    def __init__(self, seconds: float, delay_s: float = 0.0, fail_after: int | None = None) -> None:
        self.samples = int(seconds * 24_000)
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.chunks_made = 0
        self.closed = 0

    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        t = np.arange(self.samples) / 24_000
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
        try:
            for i in range(0, self.samples, CHUNK):
                if self.fail_after is not None and self.chunks_made >= self.fail_after:
                    raise WorkerUnavailable("The speech worker is not reachable right now.")
                await asyncio.sleep(self.delay_s)
                self.chunks_made += 1
                yield pcm[i : i + CHUNK].tobytes()
        finally:
            self.closed += 1


def _request(text: str = "hello") -> SpeechRequest:
    emb = VoiceEmbedding("m", np.zeros((1, 2, 4), np.float32), np.zeros((1, 4, 1), np.float32))
    return SpeechRequest(text=text, language="en", embedding=emb)


@pytest.fixture
def setup():
    bot = commands.Bot(
        command_prefix="!", intents=discord.Intents(guilds=True, members=True, voice_states=True)
    )
    harness = Harness(bot)
    fx = harness.add_guild()
    posted: list[tuple[int, str]] = []

    async def notify(channel_id: int, text: str) -> None:
        posted.append((channel_id, text))

    yield harness, fx, notify, posted
    harness.close()


def _utterance(fx, text: str = "hello") -> Utterance:
    return Utterance(
        _request(text),
        requester_id=1,
        voice_owner_id=1,
        text_channel_id=fx.text_channel.id,
        announcement="Speaking in Ada's cloned voice",
    )


async def test_plays_every_synthesized_sample_as_opus_frames(setup) -> None:
    _, fx, notify, posted = setup
    service = ToneService(seconds=0.9)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient, idle_timeout_s=30)
    item = _utterance(fx)
    assert await player.enqueue(fx.voice_channel, item) == 0
    await asyncio.wait_for(item.finished.wait(), 10)
    assert item.error is None
    assert item.samples_synthesized == service.samples
    # 0.9 s of audio = 45 frames of 20 ms (the last one may be padded)
    assert item.frames_played == 45
    voice = HarnessVoiceClient.instances[-1]
    assert len(voice.packets) >= 45  # plus any underrun silence, never fewer
    assert posted == [(fx.text_channel.id, "Speaking in Ada's cloned voice")]
    await player.close()
    assert voice.disconnects == 1


async def test_playback_starts_before_synthesis_ends(setup) -> None:
    _, fx, notify, _ = setup
    service = ToneService(seconds=2.0, delay_s=0.05)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient)
    item = _utterance(fx)
    await player.enqueue(fx.voice_channel, item)
    await asyncio.wait_for(item.started.wait(), 5)
    assert service.chunks_made < 20 / 2  # started with most of the stream still to come
    await asyncio.wait_for(item.finished.wait(), 10)
    await player.close()


async def test_skip_cancels_synthesis_upstream(setup) -> None:
    _, fx, notify, _ = setup
    service = ToneService(seconds=30.0, delay_s=0.02)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient)
    item = _utterance(fx)
    await player.enqueue(fx.voice_channel, item)
    await asyncio.wait_for(item.started.wait(), 5)
    player.skip()
    await asyncio.wait_for(item.finished.wait(), 5)
    made = service.chunks_made
    await asyncio.sleep(0.2)
    assert service.chunks_made == made < 100  # no more chunks after the skip
    assert service.closed == 1
    with pytest.raises(NothingPlaying):
        player.skip()
    await player.close()


async def test_worker_failure_mid_stream_is_reported_and_next_item_plays(setup) -> None:
    _, fx, notify, posted = setup
    service = ToneService(seconds=1.0, fail_after=3)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient)
    first, second = _utterance(fx, "one"), _utterance(fx, "two")
    await player.enqueue(fx.voice_channel, first)
    await player.enqueue(fx.voice_channel, second)
    await asyncio.wait_for(second.finished.wait(), 10)
    assert first.error and "not reachable" in first.error
    assert any("couldn't finish speaking" in text for _, text in posted)
    await player.close()


async def test_refusals(setup) -> None:
    harness, fx, notify, _ = setup
    service = ToneService(seconds=5.0, delay_s=0.05)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient, max_queue=1)
    playing = _utterance(fx)
    await player.enqueue(fx.voice_channel, playing)
    await asyncio.wait_for(playing.started.wait(), 5)
    await player.enqueue(fx.voice_channel, _utterance(fx))  # waits: the queue holds one
    with pytest.raises(QueueFull):
        await player.enqueue(fx.voice_channel, _utterance(fx))
    # A second voice channel in the same server while busy
    data = {
        "id": str(snowflake()),
        "type": 2,
        "name": "Lounge",
        "position": 2,
        "permission_overwrites": [],
        "bitrate": 64000,
        "user_limit": 0,
    }
    lounge = discord.VoiceChannel(state=harness.bot._connection, guild=fx.guild, data=data)
    fx.guild._add_channel(lounge)
    with pytest.raises(BusyElsewhere):
        player.check_can_join(lounge)
    await player.close()


async def test_missing_voice_permission_is_named(setup) -> None:
    harness, _, notify, _ = setup
    fx = harness.add_guild(bot_voice_permissions=CONNECT)  # Connect but no Speak
    player = GuildPlayer(fx.guild, ToneService(1.0), notify, voice_cls=HarnessVoiceClient)
    with pytest.raises(MissingVoicePermissions, match="Speak"):
        await player.enqueue(fx.voice_channel, _utterance(fx))


async def test_voice_disconnect_mid_playback_ends_cleanly(setup) -> None:
    """Discord drops the voice connection: synthesis stops, the member is told, nothing is left running."""
    import threading

    _, fx, notify, posted = setup
    service = ToneService(seconds=30.0, delay_s=0.01)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient)
    threads_before = {t.ident for t in threading.enumerate()}
    item = _utterance(fx)
    await player.enqueue(fx.voice_channel, item)
    await asyncio.wait_for(item.started.wait(), 5)
    voice = HarnessVoiceClient.instances[-1]
    await voice.disconnect(force=True)  # what a dropped connection does to the player
    await asyncio.wait_for(item.finished.wait(), 5)
    made = service.chunks_made
    await asyncio.sleep(0.2)
    assert service.chunks_made == made < 300 and service.closed == 1
    assert item.error is not None
    assert any("lost the voice connection" in text for _, text in posted)
    await player.close()
    await asyncio.sleep(0.1)
    leftover = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
    assert not leftover, leftover
    assert all(not t.done() or t.cancelled() or t.exception() is None for t in asyncio.all_tasks())


async def test_leaves_after_idle_timeout(setup) -> None:
    _, fx, notify, _ = setup
    player = GuildPlayer(fx.guild, ToneService(0.2), notify, voice_cls=HarnessVoiceClient, idle_timeout_s=0.3)
    item = _utterance(fx)
    await player.enqueue(fx.voice_channel, item)
    await asyncio.wait_for(item.finished.wait(), 5)
    voice = HarnessVoiceClient.instances[-1]
    assert voice.disconnects == 0
    await asyncio.sleep(0.6)
    assert voice.disconnects == 1 and player.channel_id is None
    await player.close()


async def test_joined_with_join_it_stays_through_quiet_spells_until_it_leaves(setup) -> None:
    _, fx, notify, _ = setup
    player = GuildPlayer(fx.guild, ToneService(0.2), notify, voice_cls=HarnessVoiceClient, idle_timeout_s=0.3)
    await player.join(fx.voice_channel)
    voice = HarnessVoiceClient.instances[-1]
    assert voice.is_connected() and player.channel_id == fx.voice_channel.id
    item = _utterance(fx)
    await player.enqueue(fx.voice_channel, item)
    await asyncio.wait_for(item.finished.wait(), 5)
    await asyncio.sleep(0.7)  # two idle timeouts
    assert voice.disconnects == 0 and player.channel_id == fx.voice_channel.id
    await player.leave()
    assert voice.disconnects == 1 and player.channel_id is None and not player.stay
    await player.close()


async def test_discard_takes_out_one_waiting_utterance(setup) -> None:
    _, fx, notify, _ = setup
    player = GuildPlayer(fx.guild, ToneService(1.0), notify, voice_cls=HarnessVoiceClient, idle_timeout_s=30)
    first, second, third = _utterance(fx, "same"), _utterance(fx, "same"), _utterance(fx, "other")
    for item in (first, second, third):
        await player.enqueue(fx.voice_channel, item)
    await asyncio.wait_for(first.started.wait(), 5)
    assert not player.discard(first)  # playing, not waiting
    assert player.discard(second) and second.finished.is_set() and second.error == "withdrawn"
    assert list(player.queue) == [third] and not player.discard(second)
    await player.close()


# ---- the controls against the real AudioPlayer thread, whose `after` callback arrives late ---------
# discord.py's player thread notices a stop on its next 20 ms tick, sends its trailing silence and only
# then calls `after`, on its own thread; by then the player has moved on to the next utterance.
# ``HarnessVoiceClient.after_delay_s`` makes that lateness larger and certain (a slow UDP socket).


@pytest.fixture(params=[0.0, 0.3], ids=["player-thread", "after-0.3s-late"])
def late_after(request: pytest.FixtureRequest):
    HarnessVoiceClient.after_delay_s = request.param
    yield request.param
    HarnessVoiceClient.after_delay_s = 0.0


def _frames(seconds: float) -> int:
    return round(seconds / 0.020)


async def test_skip_drops_only_the_message_playing(setup, late_after: float) -> None:
    """Three queued, /skip during the first: the second and the third both play in full, announced."""
    _, fx, notify, posted = setup
    service = ToneService(seconds=0.6, delay_s=0.01)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient)
    items = [_utterance(fx, text) for text in ("one", "two", "three")]
    for item in items:
        await player.enqueue(fx.voice_channel, item)
    await asyncio.wait_for(items[0].started.wait(), 5)
    assert player.skip() is items[0]
    await asyncio.wait_for(items[0].finished.wait(), 5)
    assert player.current is not items[0]
    assert [item.preview for item in player.queue] == ["three"]  # /queue: the third still waits
    for item in items[1:]:
        await asyncio.wait_for(item.finished.wait(), 10)
        assert item.error is None
        assert item.frames_played == _frames(0.6), item.preview
    assert len(posted) == 3  # one announcement per message that played
    await player.close()


async def test_speak_after_stop_plays(setup, late_after: float) -> None:
    """/stop, then a new /speak: it plays in full and is announced."""
    _, fx, notify, posted = setup
    service = ToneService(seconds=0.6, delay_s=0.01)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient)
    first, queued = _utterance(fx, "first"), _utterance(fx, "queued")
    await player.enqueue(fx.voice_channel, first)
    await player.enqueue(fx.voice_channel, queued)
    await asyncio.wait_for(first.started.wait(), 5)
    assert player.stop() == 2
    await asyncio.wait_for(first.finished.wait(), 5)
    assert queued.error == "stopped" and not queued.started.is_set()
    await asyncio.sleep(late_after + 0.1)  # the member types the next /speak; the late callback lands
    after = _utterance(fx, "after the stop")
    assert await player.enqueue(fx.voice_channel, after) == 0
    await asyncio.wait_for(after.finished.wait(), 10)
    assert after.started.is_set() and after.error is None
    assert after.frames_played == _frames(0.6)
    assert len(posted) == 2  # "first" and "after the stop"
    await player.close()


async def test_skip_after_skip_and_stop_twice_keep_the_queue_going(setup, late_after: float) -> None:
    """Each control acts on the message playing when it is pressed, never on a later one."""
    _, fx, notify, _ = setup
    service = ToneService(seconds=0.6, delay_s=0.01)
    player = GuildPlayer(fx.guild, service, notify, voice_cls=HarnessVoiceClient)
    items = [_utterance(fx, str(i)) for i in range(4)]
    for item in items:
        await player.enqueue(fx.voice_channel, item)
    for skipped in items[:2]:
        await asyncio.wait_for(skipped.started.wait(), 5)
        assert player.skip() is skipped
        await asyncio.wait_for(skipped.finished.wait(), 5)
    for item in items[2:]:
        await asyncio.wait_for(item.finished.wait(), 10)
        assert item.error is None and item.frames_played == _frames(0.6)
    assert player.stop() == 0 and player.stop() == 0  # nothing playing: nothing to stop, twice
    again = _utterance(fx, "again")
    await player.enqueue(fx.voice_channel, again)
    await asyncio.wait_for(again.finished.wait(), 10)
    assert again.error is None and again.frames_played == _frames(0.6)
    await player.close()
