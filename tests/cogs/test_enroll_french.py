"""/enroll in the member's language: a member whose Discord is in French is given a French phrase, reads
it (espeak-ng's French voice, as a voice message) and is enrolled in French; the multilingual Whisper base
hears it. With an English-only Whisper the member is told what the operator has to change."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.enrollment import preview_text
from tests.cogs.conftest import World, dump, open_world
from tests.support.voices import spy_synthesis
from worker.analysis.verify import FRENCH_PHRASE_WORDS, PHRASE_WORDS, make_consent_phrase
from worker.local import LocalSpeechService
from worker.types import Transcription

pytestmark = pytest.mark.asyncio(loop_scope="session")

# This seed's first French phrase reads back word for word from espeak-ng through Whisper base here
# ("le bateau, la bouteille, la poupée, ..."): production draws from the operating system instead.
PHRASE_SEED = 20261205
FRENCH_VOICE = "fr"  # espeak-ng's French (France) voice


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def french_speech(short_xtts_dir: Path, whisper_base_dir: Path) -> AsyncIterator[LocalSpeechService]:
    """The engines of the other cog tests, with the multilingual Whisper base instead of tiny.en."""
    import torch

    torch.set_num_threads(2)
    service = await LocalSpeechService.load(
        short_xtts_dir,
        asr_backend="faster-whisper",
        asr_model=str(whisper_base_dir),
        device="cpu",
        max_queue=8,
    )
    yield service
    await service.aclose()


def draw_phrases(world: World) -> list[str]:
    """Phrases from the real generator (seeded): returns the languages it was asked for, in order."""
    asked: list[str] = []
    rng = random.Random(PHRASE_SEED)

    def make_phrase(language: str) -> str:
        asked.append(language)
        return make_consent_phrase(language, rng)

    world.bot.enrollment.make_phrase = make_phrase
    return asked


def spy_transcription(speech: LocalSpeechService, monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The language of every transcription the bot asks the (real) speech service for."""
    languages: list[str | None] = []
    original = speech.transcribe

    async def transcribe(pcm: Any, sample_rate: int, language: str | None = None) -> Transcription:
        languages.append(language)
        return await original(pcm, sample_rate, language)

    monkeypatch.setattr(speech, "transcribe", transcribe)
    return languages


def shown_phrase(statement: str) -> str:
    found = re.search(r"^> (.+)$", statement, re.MULTILINE)
    assert found, statement
    return found.group(1)


async def test_a_french_member_enrolls_in_french(
    french_speech: LocalSpeechService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    languages = spy_transcription(french_speech, monkeypatch)
    spoken = spy_synthesis(french_speech, monkeypatch)
    async with open_world(french_speech, tmp_path) as world:
        h, fx = world.harness, world.fx
        asked = draw_phrases(world)
        await world.enable_cloning(cooldown=0)

        await h.slash(fx, world.ada, "enroll", locale="fr")
        phrase = shown_phrase(h.last_text())
        assert asked == ["fr"]
        assert all(word in FRENCH_PHRASE_WORDS for word in phrase.split(", ")), phrase
        challenge = await world.bot.repos.challenges.active(fx.guild.id, world.ada.id)
        assert challenge is not None and (challenge.phrase, challenge.language) == (phrase, "fr")

        clip = world.voice_message("consent-fr", phrase, voice=FRENCH_VOICE)
        await h.slash(fx, world.ada, "enroll", attachments={"clip": world.attach(clip)}, locale="fr")
        assert "Votre voix est enregistrée" in h.last_text(), dump(world)  # every reply in French
        assert "Lisez cette phrase à voix haute" in h.all_text() and "Read this phrase" not in h.all_text()
        assert "Vérification de l'audio" in h.all_text() and "Checking the audio" not in h.all_text()
        assert languages == ["fr"]
        profile = await world.bot.repos.profiles.get(fx.guild.id, world.ada.id)
        assert profile is not None and profile.language == "fr"
        [record] = await world.bot.repos.profiles.consent_records(fx.guild.id, world.ada.id)
        assert record.phrase == phrase and record.match_score <= 0.35, record.transcript

        preview = await world.preview_sent()
        assert preview_text("fr") in preview.text, dump(world)
        assert [(r.text, r.language) for r in spoken] == [(preview_text("fr"), "fr")]


async def test_other_locales_get_english_phrases(world: World) -> None:
    asked = draw_phrases(world)
    await world.enable_cloning()
    for member, locale in ((world.ada, "en-US"), (world.bob, "pt-BR")):
        await world.harness.slash(world.fx, member, "enroll", locale=locale)
        phrase = shown_phrase(world.harness.last_text())
        assert phrase.split(", ")[0] in PHRASE_WORDS, phrase
        challenge = await world.bot.repos.challenges.active(world.fx.guild.id, member.id)
        assert challenge is not None and challenge.language == "en"
    assert asked == ["en", "en"]


async def test_an_english_only_whisper_tells_a_french_member_what_is_wrong(world: World) -> None:
    """The cog tests' Whisper is tiny.en: the French reading is refused with a reason, the phrase kept."""
    draw_phrases(world)
    await world.enable_cloning()
    await world.harness.slash(world.fx, world.ada, "enroll", locale="fr")
    phrase = shown_phrase(world.harness.last_text())
    clip = world.voice_message("consent-fr", phrase, voice=FRENCH_VOICE)
    await world.harness.slash(world.fx, world.ada, "enroll", attachments={"clip": world.attach(clip)})
    answer = world.harness.last_text()
    assert "English only" in answer and "multilingual" in answer, dump(world)
    assert await world.bot.repos.profiles.get(world.fx.guild.id, world.ada.id) is None
    assert await world.bot.repos.challenges.active(world.fx.guild.id, world.ada.id) is not None
