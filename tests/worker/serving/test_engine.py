"""The XTTS-v2 engine on a generated tiny checkpoint: loading, cloning, streaming, cancellation, text prep."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.audio import espeak_wav, read_wav
from worker.errors import (
    IncompatibleVoice,
    InvalidAudio,
    InvalidRequest,
    ModelUnavailable,
    UnsupportedLanguage,
)
from worker.serving.engine import XttsEngine
from worker.tts.gpt import SamplingParams, UniformDraws, draw_uniform, undraw_uniform
from worker.tts.load import checkpoint_id
from worker.tts.speech import ChunkPlan, StreamStats
from worker.tts.text import normalize_text, split_sentences
from worker.tts.vocoder import VOCODER_RECEPTIVE_FRAMES, FrameGrid
from worker.types import SpeechRequest, VoiceEmbedding


def expected_samples(tokens: int) -> int:
    """What coqui's HifiDecoder makes of ``tokens`` latents: ×4 frames, ×24000/22050, 256 samples each."""
    return math.floor(math.floor(tokens * 4.0) * (24_000 / 22_050)) * 256


@pytest.fixture(scope="module")
def engine(tiny_xtts_dir: Path) -> XttsEngine:
    torch.set_num_threads(2)
    return XttsEngine.load(tiny_xtts_dir, "cpu")


@pytest.fixture(scope="module")
def voice(engine: XttsEngine, tmp_path_factory: pytest.TempPathFactory) -> VoiceEmbedding:
    wav = espeak_wav(
        tmp_path_factory.mktemp("voice") / "ref.wav", "Hello there, this is my voice for the test."
    )
    pcm, rate = read_wav(wav)
    return engine.embed(pcm, rate)


def speak(engine: XttsEngine, voice: VoiceEmbedding, tokens: int = 40, **kw: object) -> SpeechRequest:
    fields: dict[str, object] = {"text": "Hello world.", "language": "en", "seed": 7}
    fields.update(kw)
    return SpeechRequest(embedding=voice, max_new_tokens=tokens, min_new_tokens=tokens, **fields)  # type: ignore[arg-type]


def run(engine: XttsEngine, request: SpeechRequest) -> tuple[list[np.ndarray], StreamStats]:
    stats = StreamStats()
    return list(engine.stream(request, threading.Event(), stats)), stats


# ----- loading ---------------------------------------------------------------------------------------


def test_loads_through_production_path(engine: XttsEngine, tiny_xtts_dir: Path) -> None:
    assert engine.model_id == checkpoint_id(tiny_xtts_dir)
    assert engine.model_id.startswith("xtts-v2-")
    assert len(engine.languages) == 17 and {"en", "fr", "zh-cn"} <= set(engine.languages)
    assert engine.model.gpt.model_dim == 64 and engine.max_tokens == 602


@pytest.mark.parametrize("missing", ["model.pth", "vocab.json", "config.json"])
def test_missing_file_names_it(tiny_xtts_dir: Path, tmp_path: Path, missing: str) -> None:
    for name in ("config.json", "model.pth", "vocab.json"):
        if name != missing:
            (tmp_path / name).symlink_to(tiny_xtts_dir / name)
    with pytest.raises(ModelUnavailable, match=missing):
        XttsEngine.load(tmp_path, "cpu")


def test_corrupt_checkpoint_is_model_unavailable(tiny_xtts_dir: Path, tmp_path: Path) -> None:
    for name in ("config.json", "vocab.json"):
        (tmp_path / name).symlink_to(tiny_xtts_dir / name)
    (tmp_path / "model.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        XttsEngine.load(tmp_path, "cpu")


# ----- cloning ---------------------------------------------------------------------------------------


def test_embed_from_speech(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    assert voice.model_id == engine.model_id
    assert voice.gpt_cond_latent.shape == (1, 32, 64)
    assert voice.speaker_embedding.shape == (1, 512, 1)
    assert voice.gpt_cond_latent.dtype == np.float32 and np.isfinite(voice.gpt_cond_latent).all()
    # The speaker embedding is L2-normalised by coqui's speaker encoder.
    assert np.linalg.norm(voice.speaker_embedding) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("pcm", "match"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.full(24_000, np.nan, np.float32), "invalid samples"),
        (np.zeros(1000, np.float32), "too short"),
        (np.zeros((2, 24_000), np.float32), "mono"),
    ],
)
def test_embed_rejects_bad_pcm(engine: XttsEngine, pcm: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidAudio, match=match):
        engine.embed(pcm, 24_000)


# ----- streaming -------------------------------------------------------------------------------------


def test_chunks_add_up_to_the_pinned_length(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    chunks, stats = run(engine, speak(engine, voice, tokens=60))
    assert all(c.dtype == np.int16 for c in chunks)
    assert sum(c.size for c in chunks) == expected_samples(60) == engine.output_samples([60])
    assert stats.tokens == 60 and stats.samples == expected_samples(60)
    # Two sentences: min/max apply to each.
    chunks, stats = run(engine, speak(engine, voice, tokens=20, text="Hello world. How are you?"))
    assert stats.sentences == 2
    assert sum(c.size for c in chunks) == 2 * expected_samples(20)


def test_first_chunk_arrives_early_and_small(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    stats = StreamStats()
    stream = engine.stream(speak(engine, voice, tokens=80), threading.Event(), stats)
    first = next(stream)
    tokens_at_first = stats.tokens
    rest = list(stream)
    assert tokens_at_first == engine.chunks.first_tokens < stats.tokens == 80
    assert len(rest) >= 2
    assert 0 < first.size < rest[0].size


def test_vocoder_work_is_linear(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    context = engine.chunks.context_frames
    for tokens in (40, 160):
        _, stats = run(engine, speak(engine, voice, tokens=tokens))
        out_frames = stats.samples // 256
        # Every output frame is decoded once, plus bounded context per chunk (stock: all frames per chunk).
        assert out_frames <= stats.vocoder_frames <= out_frames + 2 * context * stats.chunks
        assert stats.vocoder_frames < 1.5 * out_frames


def test_stream_equals_stock_one_shot_decode(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    """Greedy: our token loop and chunked vocoder reproduce coqui's Xtts.inference sample for sample."""
    penalty = float(engine.model.config.repetition_penalty)
    greedy = XttsEngine(
        engine.model, engine.model_id, "cpu", sampling=SamplingParams(greedy=True, repetition_penalty=penalty)
    )
    chunks, stats = run(greedy, speak(greedy, voice, tokens=70, text="hello world."))
    assert stats.chunks >= 3
    ours = np.concatenate(chunks).astype(np.int32)
    with torch.inference_mode():
        ref = engine.model.inference(
            "hello world.",
            "en",
            torch.from_numpy(voice.gpt_cond_latent),
            torch.from_numpy(voice.speaker_embedding),
            do_sample=False,
            repetition_penalty=penalty,
            max_new_tokens=70,
            min_new_tokens=70,
        )["wav"]
    stock = (np.clip(ref, -1, 1) * 32767).astype(np.int16).astype(np.int32)
    assert ours.shape == stock.shape
    assert np.abs(ours - stock).max() <= 2
    assert np.abs(stock).max() > 100  # not silence on both sides


def test_cancel_stops_generation_within_a_chunk(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    cancel = threading.Event()
    stats = StreamStats()
    stream = engine.stream(speak(engine, voice, tokens=200), cancel, stats)
    next(stream)
    tokens_at_cancel = stats.tokens
    cancel.set()
    assert list(stream) == []
    assert stats.cancelled and stats.tokens == tokens_at_cancel < 200


def test_fixed_seed_is_deterministic(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    a = np.concatenate(run(engine, speak(engine, voice, seed=3))[0])
    b = np.concatenate(run(engine, speak(engine, voice, seed=3))[0])
    c = np.concatenate(run(engine, speak(engine, voice, seed=4))[0])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_draws_come_in_blocks_yet_are_the_one_by_one_draws(seed: int) -> None:
    """A request's draws are taken 64 at a time; they must be what drawing them one by one gives."""
    draws = UniformDraws(seed)
    got = [draws.next() for _ in range(3 * UniformDraws.BLOCK + 5)]
    generator = torch.Generator().manual_seed(seed)
    expected = [float(torch.rand((), generator=generator)) for _ in range(len(got))]
    assert got == expected
    assert draw_uniform(UniformDraws(seed), SamplingParams(greedy=True)) == 0.0  # greedy draws nothing


def test_a_number_given_back_is_drawn_again_also_across_blocks() -> None:
    """A pipelined step whose token is dropped gives its draw back (worker.batching.synthesis): the
    stream's numbers stay the one-by-one sequence, also where the given-back one was the first of a
    new block."""
    expected, draws = UniformDraws(5), UniformDraws(5)
    reference = [expected.next() for _ in range(2 * UniformDraws.BLOCK + 3)]
    got = []
    for i in range(len(reference)):
        got.append(draws.next())
        if i in (3, UniformDraws.BLOCK - 1, UniformDraws.BLOCK, 2 * UniformDraws.BLOCK):  # 64: a block's 1st
            draws.unread()
            assert draws.next() == got[-1]
    assert got == reference
    sampled, greedy = SamplingParams(), SamplingParams(greedy=True)
    undraw_uniform(draws, greedy)  # greedy drew nothing: nothing to give back
    last = draws.next()
    assert last == expected.next()
    undraw_uniform(draws, sampled)
    assert draws.next() == last


def test_french_and_english_both_speak(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    for language, text in (("fr", "Bonjour à tous, ça va très bien."), ("en", "Good morning, everyone.")):
        chunks, _ = run(engine, speak(engine, voice, tokens=30, text=text, language=language))
        audio = np.concatenate(chunks)
        assert audio.size == expected_samples(30)
        assert np.abs(audio).max() > 100


class ZeroMarker:
    """Stands in for worker.analysis.watermark.Watermarker: records what it is asked to mark, returns
    silence."""

    def __init__(self) -> None:
        self.marked = 0

    def apply(self, pcm: np.ndarray, sample_rate: int) -> np.ndarray:
        assert sample_rate == 24_000 and pcm.dtype == np.float32
        self.marked += pcm.size
        return np.zeros_like(pcm)


def test_every_sample_goes_through_the_watermark(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    marker = ZeroMarker()
    marked = XttsEngine(engine.model, engine.model_id, "cpu", watermark=marker, chunks=ChunkPlan(4, 8))  # type: ignore[arg-type]
    chunks, stats = run(marked, speak(marked, voice, tokens=30))
    assert sum(c.size for c in chunks) == expected_samples(30) == stats.samples
    assert stats.chunks == len(chunks) > 2
    assert marker.marked >= stats.samples
    assert all(not c.any() for c in chunks)


# ----- validation ------------------------------------------------------------------------------------


def test_unknown_language_lists_supported(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    with pytest.raises(UnsupportedLanguage) as info:
        engine.prepare(speak(engine, voice, language="tlh"))
    assert "en, es, fr" in info.value.message
    assert info.value.details["supported"] == list(engine.languages)
    assert engine.resolve_language("en-US") == "en"
    assert engine.resolve_language("zh") == "zh-cn"


def test_voice_from_another_checkpoint_must_re_enroll(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    other = replace(voice, model_id="xtts-v2-0000000000000000")
    with pytest.raises(IncompatibleVoice, match="re-enroll"):
        engine.prepare(speak(engine, other))
    wrong_shape = replace(voice, gpt_cond_latent=np.zeros((1, 32, 1024), np.float32))
    with pytest.raises(IncompatibleVoice, match="re-enroll"):
        engine.prepare(speak(engine, wrong_shape))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"text": " 🙂 ... "}, "nothing to say"),
        ({"text": "a" * 5000}, "too long"),
        ({"max_new_tokens": 700, "min_new_tokens": None}, "max_new_tokens"),
        ({"max_new_tokens": 10, "min_new_tokens": 20}, "min_new_tokens"),
    ],
)
def test_bad_requests(engine: XttsEngine, voice: VoiceEmbedding, kw: dict[str, object], match: str) -> None:
    request = replace(speak(engine, voice), **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=match):
        engine.prepare(request)


def test_long_text_is_split_into_sentences(engine: XttsEngine, voice: VoiceEmbedding) -> None:
    text = "This is the first sentence. " + "word " * 120 + "and the end."
    speech = engine.prepare(speak(engine, voice, text=text))
    assert len(speech.sentences) >= 3
    assert all(t.shape[-1] < engine.model.args.gpt_max_text_tokens for t in speech.sentences)


# ----- text preparation and the vocoder's arithmetic -------------------------------------------------


def test_prepare_leaves_tensors_on_the_host_and_the_engine_moves_them(
    engine: XttsEngine, voice: VoiceEmbedding
) -> None:
    """prepare() runs on the event loop: a copy to a GPU there would wait for the GPU's queued work."""
    elsewhere = XttsEngine(engine.model, engine.model_id, "meta")  # a device nothing can be read from
    speech = elsewhere.prepare(speak(engine, voice, text="One. Two."))
    tensors = [*speech.sentences, speech.gpt_cond_latent, speech.speaker_embedding]
    assert len(speech.sentences) == 2 and {t.device.type for t in tensors} == {"cpu"}
    moved = speech.to("meta")
    assert {t.device.type for t in [*moved.sentences, moved.gpt_cond_latent, moved.speaker_embedding]} == {
        "meta"
    }
    assert (moved.seed, moved.language, moved.max_tokens) == (speech.seed, speech.language, speech.max_tokens)
    assert speech.to("cpu") is speech


def test_sentence_splitting() -> None:
    assert split_sentences("Hello Mr. Smith. How are you?  I am fine!") == [
        "Hello Mr. Smith.",
        "How are you?",
        "I am fine!",
    ]
    assert split_sentences("Il fait 3.5 degrés. Voilà !") == ["Il fait 3.5 degrés.", "Voilà !"]
    pieces = split_sentences("one, two, three, " + "long " * 80, max_chars=100)
    assert all(len(p) <= 100 for p in pieces) and len(pieces) >= 4
    assert split_sentences("  🙂 \n ... ") == []
    assert normalize_text("a\u200bb\tc\n\nd 🙂 50%") == "a b c d 50%"


def test_frame_grid_matches_torch_interpolate(engine: XttsEngine) -> None:
    grid = FrameGrid(engine.model.hifigan_decoder)
    for tokens in (1, 7, 8, 31, 147, 300):
        latents = torch.randn(tokens, 64)
        x = torch.nn.functional.interpolate(latents.T[None], scale_factor=[4.0], mode="linear")
        ref = torch.nn.functional.interpolate(x, scale_factor=[24_000 / 22_050], mode="linear")[0]
        assert grid.frames(tokens) == ref.shape[-1]
        ours = grid.resample(latents, 0, tokens, 0, grid.frames(tokens))[0]
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        # Frames reported exact for a prefix are the whole-sequence frames.
        cut = tokens // 2
        exact = grid.exact_frames(cut)
        if cut >= 2:
            assert 0 < exact < grid.frames(cut)
            prefix = grid.resample(latents[:cut], 0, cut, 0, exact)[0]
            torch.testing.assert_close(prefix, ref[:, :exact], atol=1e-5, rtol=1e-5)


def test_vocoder_receptive_field(engine: XttsEngine) -> None:
    """The constant the chunked vocoder relies on: one input frame reaches 13 frames either way."""
    decoder = engine.model.hifigan_decoder.waveform_decoder
    z = torch.randn(1, 64, 80)
    g = torch.randn(1, 512, 1)
    with torch.inference_mode():
        a = decoder(z, g=g)[0, 0]
        z[:, :, 40] += 1.0
        b = decoder(z, g=g)[0, 0]
    changed = torch.nonzero(a != b).squeeze(-1)
    reach_left = 40 - int(changed.min()) // 256
    reach_right = int(changed.max()) // 256 - 40
    assert max(reach_left, reach_right) == VOCODER_RECEPTIVE_FRAMES


def test_every_sentence_shares_one_frame_grid_and_its_cached_answers(engine: XttsEngine) -> None:
    from worker.tts.vocoder import FrameGrid, StreamingVocoder

    decoder = engine.model.hifigan_decoder
    shared = StreamingVocoder(decoder, torch.zeros(1, 512, 1)).grid
    assert StreamingVocoder(decoder, torch.zeros(1, 512, 1)).grid is shared is FrameGrid.of(decoder)
    fresh = FrameGrid(decoder)
    answers = [shared.exact_frames(t) for t in range(700)]
    assert answers == [shared.exact_frames(t) for t in range(700)]  # now from the cache
    assert answers == [fresh._exact_frames(t) for t in range(700)]
    assert answers[100] > answers[99] > 0 and answers[0] == 0
