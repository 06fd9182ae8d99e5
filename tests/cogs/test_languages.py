"""``/speak`` in any of XTTS-v2's languages with the same voice: detected from the text, or chosen with
autocomplete. Through the harness, with the real engines; the language is read off the synthesis request."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cogs.conftest import World, dump, wait_for
from tests.support.voices import embed_espeak, spy_synthesis, store_voice
from worker.local import LocalSpeechService

pytestmark = pytest.mark.asyncio(loop_scope="session")

FRENCH = "Bonsoir à tous, je suis très contente de vous retrouver ce soir."


async def speak(world: World, text: str, **options: str) -> None:
    await world.harness.slash(world.fx, world.ada, "speak", {"text": text, **options})
    player = world.bot.players.existing(world.fx.guild.id)
    assert player is not None, dump(world)
    await wait_for(lambda: player.current is None and not player.queue, timeout=120)


async def test_speak_detects_the_language_or_takes_the_one_asked(
    world: World, speech: LocalSpeechService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.enable_cloning(cooldown=0)
    voice = await embed_espeak(speech, tmp_path)
    await store_voice(world.bot.repos, world.fx.guild.id, world.ada.id, voice, language="en")
    world.harness.join_voice(world.fx, world.ada.id)
    seen = spy_synthesis(world.bot.speech, monkeypatch)

    await speak(world, FRENCH)  # no language: French detected, in her English-enrolled voice
    await speak(world, FRENCH, language="de")  # the member's choice wins
    await speak(world, "ok!")  # too short to tell: the voice's own language
    assert [r.language for r in seen] == ["fr", "de", "en"], dump(world)
    stored = voice.embedding
    for request in seen:  # one voice, no re-enrolment
        assert (request.embedding.speaker_embedding == stored.speaker_embedding).all()

    await world.harness.slash(world.fx, world.ada, "speak", {"text": FRENCH, "language": "Klingon"})
    assert "I can't speak 'Klingon'" in world.harness.last_text(), dump(world)
    assert len(seen) == 3


async def test_language_autocomplete_lists_the_17(world: World) -> None:
    offered = await world.harness.autocomplete(world.fx, world.ada, "speak", "language", "", {"text": "hi"})
    assert len(offered) == 17 and {"fr", "zh-cn", "hi"} <= {c["value"] for c in offered}
    offered = await world.harness.autocomplete(world.fx, world.ada, "speak", "language", "fre")
    assert offered == [{"name": "French (fr)", "value": "fr"}]
