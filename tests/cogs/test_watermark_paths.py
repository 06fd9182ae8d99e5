"""Every synthesized output the bot hands out carries the watermark: found by perth in exactly what a member
gets. The enrolment preview and ``/voice preview`` files, the PCM frames ``/speak`` plays and the Opus
packets they become; ``/voice export`` holds no synthesized audio, only the member's own recording as sent.
(The command line and the HTTP worker: tests/worker/test_cli.py.)"""

from __future__ import annotations

import io
import wave

import discord
import numpy as np
import pytest

from bot.pcm import SILENCE_FRAME
from cogs.voice import EXPORT_FILENAME
from tests.cogs.conftest import TEST_PHRASE, World, dump, wait_for
from tests.support.discord_harness import HarnessVoiceClient
from worker.local import LocalSpeechService

pytestmark = pytest.mark.asyncio(loop_scope="session")

OUTPUT_RATE = 24_000  # Hz: the worker's PCM and the preview files
DISCORD_RATE = 48_000  # Hz: what the player sends, stereo


def wav_pcm(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, OUTPUT_RATE)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def stereo_to_mono(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").reshape(-1, 2).astype(np.float32).mean(axis=1) / 32768


def assert_marked(speech: LocalSpeechService, pcm: np.ndarray, rate: int, what: str) -> None:
    assert pcm.size > rate // 2 and np.abs(pcm).max() > 0.001, f"{what}: no audio to check"
    result = speech.watermarker.detect(pcm, rate)
    assert result.detected and result.confidence > 0.9, (what, result)


async def test_every_output_a_member_gets_is_marked(world: World, speech: LocalSpeechService) -> None:
    h, fx = world.harness, world.fx
    await world.enable_cloning(cooldown=0)
    clip = world.voice_message("consent", TEST_PHRASE)
    await h.slash(fx, world.ada, "enroll")
    await h.slash(fx, world.ada, "enroll", attachments={"clip": world.attach(clip)})
    assert "Your voice is enrolled" in h.last_text(), dump(world)
    preview = await world.preview_sent()  # the preview follows the answer once it is made
    assert "preview.wav" in preview.files, dump(world)
    assert_marked(speech, wav_pcm(preview.files["preview.wav"]), OUTPUT_RATE, "enrolment preview")

    await h.slash(fx, world.ada, "voice preview")
    assert_marked(
        speech, wav_pcm(h.responses()[-1].files["voice-preview.wav"]), OUTPUT_RATE, "/voice preview"
    )

    h.join_voice(fx, world.ada.id)
    await h.slash(fx, world.ada, "speak", {"text": "Hello there, friends. This is my voice."})
    player = world.bot.players.existing(fx.guild.id)
    assert player is not None, dump(world)
    await wait_for(lambda: player.current is None and not player.queue, timeout=120)
    vc = HarnessVoiceClient.instances[-1]
    played = b"".join(vc.pcm_frames)
    assert_marked(speech, stereo_to_mono(played), DISCORD_RATE, "/speak playback PCM")
    # What a listener's client decodes. This CPU makes speech slower than it plays, so the player fills
    # the gaps with silent frames (over half of them here): perth averages over every frame of a clip,
    # and Opus's near-silence (about -112 dBFS) dilutes it below its threshold; the audio itself is checked.
    decoder = discord.opus.Decoder()
    audible = [p for p, f in zip(vc.packets, vc.pcm_frames, strict=False) if f != SILENCE_FRAME]
    heard = b"".join(decoder.decode(packet) for packet in audible)
    assert_marked(speech, stereo_to_mono(heard), DISCORD_RATE, "/speak Opus packets")

    await h.slash(fx, world.ada, "voice export")
    files = h.responses()[-1].files
    assert set(files) == {EXPORT_FILENAME, "consent-recording.ogg"}  # nothing synthesized in an export
    assert files["consent-recording.ogg"] == clip.read_bytes()  # the member's own voice, unaltered
