"""The member's language crosses the HTTP worker: the client sends ``Accept-Language``, the app answers in it.

A real uvicorn server on 127.0.0.1 and the real ``HttpSpeechService``; the quality judgement is the real
gate's (``worker.analysis.quality``), made off the event loop as ``LocalSpeechService`` does, so the
locale has to reach the thread too. Synthesis refusals are checked before the stream starts (a JSON
error) and in the middle of it (an error frame written by the response's generator).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import pytest

from core.i18n import tr, using_locale
from tests.worker.api.test_app import AUTH, RATE, TOKEN, ToneService, audio_json, speech_pcm, tone_chunk
from tests.worker.test_client import request, serving
from worker.analysis import quality
from worker.api.app import accept_language
from worker.client import HttpSpeechService
from worker.errors import InvalidRequest, QualityRejected, SynthesisCancelled
from worker.types import FloatArray, QualityReport, SpeechRequest

SHORT_EN = "The clip is only 1.0 s long: I need at least 3 s of speech (6 s or more works best)."
SHORT_FR = "L'extrait ne dure que 1,0 s : il me faut au moins 3 s de parole (6 s ou plus, c'est mieux)."


class GateService(ToneService):
    """ToneService judged by the real quality gate's rules; its speech refuses when asked to."""

    def __init__(self, refuse: str | None = None) -> None:
        super().__init__(chunks=3)
        self.refuse = refuse

    async def check_quality(self, pcm: FloatArray, sample_rate: int) -> QualityReport:
        seconds = len(pcm) / sample_rate
        measures = quality._Measures(
            duration_s=seconds, speech_s=seconds, level_dbfs=-20.0, peak_dbfs=-10.0, clipped_fraction=0.0,
            noise_dbfs=-70.0,
        )  # fmt: skip
        reasons, warnings = await asyncio.to_thread(quality._judge, measures)
        return QualityReport(
            accepted=not reasons, duration_s=seconds, speech_s=seconds, level_dbfs=-20.0, peak_dbfs=-10.0,
            clipped_fraction=0.0, noise_dbfs=-70.0, snr_db=50.0, kept=[(0.0, seconds)], reasons=reasons,
            warnings=warnings,
        )  # fmt: skip

    async def _speak(self, request: SpeechRequest) -> AsyncGenerator[bytes, None]:
        if self.refuse == "early":
            raise InvalidRequest(tr("There is nothing to say: the text has no letters or digits."))
        yield tone_chunk(0)
        await asyncio.sleep(0)
        if self.refuse == "late":
            raise SynthesisCancelled(tr("The speech engine is shutting down: try again in a moment."))
        yield tone_chunk(1)


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_accept_language_picks_the_best_language_with_a_catalog() -> None:
    assert accept_language("fr-FR,fr;q=0.9,en;q=0.8") == "fr"
    assert accept_language("de-DE,de;q=0.9,fr;q=0.5") == "fr"  # no German catalog: the next choice
    assert accept_language("en-US,fr;q=0.5") == "en"
    assert accept_language("fr;q=0,en") == "en"  # q=0 means "not this one"
    assert accept_language("de") is None and accept_language("") is None and accept_language(None) is None


async def test_a_french_member_gets_the_quality_gate_in_french_over_http() -> None:
    async with serving(GateService()) as url, HttpSpeechService([url], TOKEN) as client:
        with using_locale("fr"):
            report = await client.check_quality(speech_pcm(1.0), RATE)
            with pytest.raises(QualityRejected) as refused:
                await client.embed(speech_pcm(1.0), RATE)
        assert report.reasons == [SHORT_FR]
        assert refused.value.message == SHORT_FR
        assert refused.value.details["report"].reasons == [SHORT_FR]

        # The same client in an English context: English, as before.
        report = await client.check_quality(speech_pcm(1.0), RATE)
        assert report.reasons == [SHORT_EN]
        with pytest.raises(QualityRejected) as refused:
            await client.embed(speech_pcm(1.0), RATE)
        assert refused.value.message == SHORT_EN

        # Warnings too (a clip long enough to clone, short enough to advise).
        with using_locale("fr"):
            report = await client.check_quality(speech_pcm(4.0), RATE)
        assert report.accepted and report.warnings == [
            "Seulement 4,0 s de parole : 6 s ou plus donnent une voix plus fidèle."
        ]


async def test_the_header_alone_decides_and_english_is_the_default() -> None:
    body = {"audio": audio_json(speech_pcm(1.0))}
    async with serving(GateService()) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        with using_locale("fr"):  # the test's own context does not leak into the server's
            plain = (await http.post("/v1/quality", json=body)).json()
        french = (await http.post("/v1/quality", json=body, headers={"Accept-Language": "fr-CA"})).json()
        unknown = (await http.post("/v1/quality", json=body, headers={"Accept-Language": "de"})).json()
    assert plain["reasons"] == [SHORT_EN]
    assert french["reasons"] == [SHORT_FR]
    assert unknown["reasons"] == [SHORT_EN]


@pytest.mark.parametrize(
    ("refuse", "french", "english"),
    [
        (
            "early",  # before the first chunk: a JSON error with its status
            "Il n'y a rien à dire : le texte ne contient ni lettres ni chiffres.",
            "There is nothing to say: the text has no letters or digits.",
        ),
        (
            "late",  # after it: an error frame, written by the streaming response's generator
            "Le moteur vocal s'arrête : réessayez dans un instant.",
            "The speech engine is shutting down: try again in a moment.",
        ),
    ],
)
async def test_speech_refusals_travel_in_the_members_language(refuse: str, french: str, english: str) -> None:
    async with serving(GateService(refuse)) as url, HttpSpeechService([url], TOKEN) as client:
        with using_locale("fr"), pytest.raises((InvalidRequest, SynthesisCancelled)) as refused:
            await collect(client.synthesize(request()))
        assert refused.value.message == french
        with pytest.raises((InvalidRequest, SynthesisCancelled)) as refused:
            await collect(client.synthesize(request()))
        assert refused.value.message == english


def test_the_gate_reasons_follow_the_locale_in_process() -> None:
    """The in-process worker (no HTTP): the gate runs in the caller's context."""
    m = quality._Measures(
        duration_s=10.0, speech_s=8.0, level_dbfs=-50.0, peak_dbfs=-30.0, clipped_fraction=0.0,
        noise_dbfs=-55.0,
    )  # fmt: skip
    reasons, _ = quality._judge(m)
    with using_locale("fr"):
        french, _ = quality._judge(m)
    assert reasons[0] == "Your voice is too quiet (-50 dBFS): speak closer to the microphone."
    assert french[0] == "Votre voix est trop faible (-50 dBFS) : parlez plus près du micro."
