"""The token choice in one kernel (worker.fused_sampling): the Triton kernel, run in Triton's interpreter
(tests/conftest.py), against worker.xtts_gpt.choose_tokens, its probe, and a decoder that uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worker import fused_sampling, triton_support
from worker.batch import max_positions
from worker.batch_gpt import BatchDecoder
from worker.fused_sampling import FUSED_SAMPLING_ENV, choose_tokens, works_for
from worker.types import SpeechRequest
from worker.xtts import XttsEngine
from worker.xtts_gpt import SamplingParams, text_prefix
from worker.xtts_gpt import choose_tokens as reference

STOP = 1025  # XTTS-v2's stop token: the last of 1026 audio tokens


def inputs(rows: int, vocab: int, seed: int, offset: float = 0.0) -> dict[str, torch.Tensor]:
    """A decode step's worth of logits and sampling state, random."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "logits": offset + 3 * torch.randn(rows, vocab, generator=generator),
        "seen": torch.rand(rows, vocab, generator=generator) < 0.05,
        "steps": torch.randint(0, 8, (rows,), generator=generator),
        "min_tokens": torch.randint(0, 8, (rows,), generator=generator),
        "uniform": torch.rand(rows, generator=generator),
    }


def fused(state: dict[str, torch.Tensor], active: torch.Tensor, params: SamplingParams, stop: int) -> tuple:
    marked = state["seen"].clone()
    tokens = choose_tokens(
        state["logits"], marked, state["steps"], state["min_tokens"], state["uniform"], active, params,
        stop_token=stop,
    )  # fmt: skip
    return tokens, marked


@pytest.mark.parametrize(
    ("params", "vocab", "offset"),
    [
        (SamplingParams(), 1026, 0.0),  # XTTS-v2's defaults: penalty, temperature, top-k 50, top-p 0.85
        (SamplingParams(greedy=True), 1026, 0.0),
        (SamplingParams(top_k=0), 1026, 0.0),  # top-p alone
        (SamplingParams(top_p=1.0), 1026, 0.0),  # top-k alone
        (SamplingParams(repetition_penalty=1.0, temperature=1.3), 1026, 0.0),
        (SamplingParams(top_k=5, top_p=0.3), 100, 0.0),  # a vocabulary that is not a power of two either
        # Every score negative: the penalty multiplies, and the cut-offs order negative floats.
        (SamplingParams(top_k=20, top_p=0.9, temperature=1.0), 1026, -20.0),
        (SamplingParams(top_k=0, top_p=1.0, temperature=1.5), 1026, -20.0),
        (SamplingParams(greedy=True), 1026, -20.0),
    ],
)
def test_the_kernel_chooses_the_references_tokens_and_marks_the_active_rows(
    params: SamplingParams, vocab: int, offset: float
) -> None:
    state = inputs(24, vocab, seed=vocab, offset=offset)
    before = {name: tensor.clone() for name, tensor in state.items()}
    active = torch.arange(24) % 4 != 3
    with torch.inference_mode():
        tokens, marked = fused(state, active, params, stop=vocab - 1)
        want = reference(**state, params=params, stop_token=vocab - 1)
    assert torch.equal(tokens, want)
    assert len(set(tokens.tolist())) > 12  # real, varied choices
    expected = state["seen"].clone()
    expected[active, tokens[active]] = True  # the active rows' tokens marked, nothing else
    assert torch.equal(marked, expected)
    assert not torch.equal(marked, state["seen"])
    assert all(torch.equal(state[name], before[name]) for name in state)  # the inputs are left alone


def test_every_draw_gives_the_references_token() -> None:
    """One row's distribution swept with 150 draws from 0 to 1: the same token for each, so the top-k and
    top-p cut-offs and the inversion of the cumulative distribution are the same everywhere."""
    state = inputs(1, 1026, seed=7)
    state = {name: tensor.expand(150, *tensor.shape[1:]).contiguous() for name, tensor in state.items()}
    state["uniform"] = torch.linspace(0.0, 0.999, 150)
    params = SamplingParams(temperature=1.5, top_k=40, top_p=0.7)
    with torch.inference_mode():
        tokens, _ = fused(state, torch.zeros(150, dtype=torch.bool), params, stop=STOP)
        want = reference(**state, params=params, stop_token=STOP)
    assert torch.equal(tokens, want)
    assert 4 < len(set(tokens.tolist())) < 40  # the sweep crossed many tokens, and top-p cut some of top-k


def test_ties_at_the_cut_offs_keep_every_tied_token() -> None:
    """Top-k keeps what ties with its k-th score, as PyTorch's does; top-p keeps all of a tie too."""
    vocab = 64
    logits = torch.full((1, vocab), -5.0)
    logits[0, :6] = torch.tensor([4.0, 3.0, 2.0, 2.0, 2.0, 1.0])
    rows = 60
    state = {
        "logits": logits.expand(rows, vocab).contiguous(),
        "seen": torch.zeros(rows, vocab, dtype=torch.bool),
        "steps": torch.zeros(rows, dtype=torch.long),
        "min_tokens": torch.zeros(rows, dtype=torch.long),
        "uniform": torch.linspace(0.0, 0.999, rows),
    }
    off = torch.zeros(rows, dtype=torch.bool)

    def plain(top_k: int, top_p: float) -> SamplingParams:
        return SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, repetition_penalty=1.0)

    with torch.inference_mode():
        top_k, _ = fused(state, off, plain(3, 1.0), stop=vocab - 1)
        # 4 and 3 hold ~0.55 and 0.20, each 2 ~0.07, the rest ~0.03: top-p 0.85 drops the lowest 0.15,
        # which ends inside the tie at 2.
        top_p, _ = fused(state, off, plain(0, 0.85), stop=vocab - 1)
        want_k = reference(**state, params=plain(3, 1.0), stop_token=vocab - 1)
    assert set(top_k.tolist()) == {0, 1, 2, 3, 4} and torch.equal(top_k, want_k)
    assert set(top_p.tolist()) == {0, 1, 2, 3, 4}


def test_no_row_stops_before_its_minimum() -> None:
    state = inputs(16, 1026, seed=3)
    state["logits"][:, STOP] = 100.0  # the stop token is overwhelmingly likely
    state["steps"] = torch.arange(16)
    state["min_tokens"] = torch.full((16,), 8)
    for params in (SamplingParams(), SamplingParams(greedy=True)):
        with torch.inference_mode():
            tokens, _ = fused(state, torch.ones(16, dtype=torch.bool), params, stop=STOP)
        assert (tokens[:8] != STOP).all() and (tokens[8:] == STOP).all()


def test_the_kernel_refuses_inputs_it_would_misread() -> None:
    state = inputs(2, 64, seed=1)
    active = torch.ones(2, dtype=torch.bool)
    bad = [
        ("seen", torch.zeros(2, 128, dtype=torch.bool)[:, :64], "seen must be a contiguous"),
        ("seen", torch.zeros(2, 64, dtype=torch.uint8), "seen must be"),
        ("steps", torch.zeros(2, dtype=torch.int32), "steps must be"),
        ("uniform", torch.zeros(3), "uniform must be"),
    ]
    for name, value, message in bad:
        with pytest.raises(ValueError, match=message):
            choose_tokens(**{**state, name: value}, active=active, params=SamplingParams(), stop_token=63)
    with pytest.raises(ValueError, match="active must be"):
        choose_tokens(**state, active=active.long(), params=SamplingParams(), stop_token=63)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        choose_tokens(**state, active=active, params=SamplingParams(), stop_token=64)


def test_the_probe_says_yes_only_where_the_kernel_runs_and_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    params = SamplingParams()

    def probe(params: SamplingParams, dtype: torch.dtype = torch.float32) -> bool:
        return works_for(params, vocab=1026, stop_token=STOP, device="cpu", dtype=dtype)

    assert probe(params)  # the interpreter stands in for a GPU here
    assert probe(SamplingParams(greedy=True), torch.float16)
    monkeypatch.setenv(FUSED_SAMPLING_ENV, "off")
    assert not probe(params)
    monkeypatch.setenv(FUSED_SAMPLING_ENV, "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not probe(params)  # the CPU without the interpreter: not tried
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def missing(*_: object) -> object:
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(triton_support, "kernel", missing)
    assert not probe(params)  # Triton missing: PyTorch's ops, no exception
    monkeypatch.undo()

    original = fused_sampling.choose_tokens

    def without_penalty(*args: object, params: SamplingParams, stop_token: int) -> torch.Tensor:
        lenient = SamplingParams(params.temperature, params.top_k, params.top_p, 1.0, params.greedy)
        return original(*args, params=lenient, stop_token=stop_token)  # type: ignore[arg-type, misc]

    monkeypatch.setattr(fused_sampling, "choose_tokens", without_penalty)
    assert not probe(params)  # another function is not used

    def marking_all(*args: object, params: SamplingParams, stop_token: int) -> torch.Tensor:
        tokens = original(*args, params=params, stop_token=stop_token)  # type: ignore[arg-type, misc]
        args[1][:, 0] = True  # type: ignore[index]
        return tokens

    monkeypatch.setattr(fused_sampling, "choose_tokens", marking_all)
    assert not probe(params)  # nor one that marks other tokens seen


@pytest.fixture(scope="module")
def prefixes(tiny_xtts_dir: Path) -> tuple[XttsEngine, list[torch.Tensor]]:
    torch.set_num_threads(2)
    engine = XttsEngine.load(tiny_xtts_dir, "cpu")
    rate = 22_050
    tone = 0.3 * np.sin(2 * np.pi * 140 * np.arange(2 * rate) / rate)
    voice = engine.embed(tone.astype(np.float32), rate)
    out = []
    for text in ("Hello world, this is a test.", "Short!", "A third one, of middling length."):
        speech = engine.prepare(SpeechRequest(text, "en", voice, seed=0))
        with torch.inference_mode():
            out.append(text_prefix(engine.model.gpt, speech.gpt_cond_latent, speech.sentences[0]))
    return engine, out


def test_a_decoder_with_the_fused_choice_decodes_as_one_without_it(
    prefixes: tuple[XttsEngine, list[torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three rows with their own prefixes and draws, one paused at times, one leaving halfway: the same
    tokens and latents, and the same repetition-penalty state after every step."""
    engine, texts = prefixes
    gpt = engine.model.gpt
    calls: list[int] = []
    counted = fused_sampling.choose_tokens

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return counted(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("worker.batch_gpt.fused_choose_tokens", counting)

    def run(
        fused: bool | None,
    ) -> tuple[BatchDecoder, list[torch.Tensor], list[list[int]], list[torch.Tensor]]:
        decoder = BatchDecoder(
            gpt, SamplingParams(), capacity=4, max_positions=max_positions(gpt), device="cpu",
            fused_sampling=fused,
        )  # fmt: skip
        slots = [decoder.claim() for _ in texts]
        first = decoder.prefill(slots, texts, [3, 3, 3], [0.3, 0.7, 0.9])
        latents, tokens, seen = [first.latents], [first.tokens], [decoder.seen[:3].clone()]
        for i in range(10):
            rows = 3 if i < 5 else 2
            if i == 5:
                decoder.release(slots[2])
            result = decoder.step([True, i % 3 != 1, True][:rows], [0.1 + 0.08 * i, 0.5, 0.95][:rows])
            latents.append(result.latents)
            tokens.append(result.tokens)
            seen.append(decoder.seen[:rows].clone())
        return decoder, latents, tokens, seen

    plain, plain_latents, plain_tokens, plain_seen = run(None)
    assert not plain.fused_sampling  # on the CPU only when asked for, even with the interpreter at hand
    assert not calls
    fused, fused_latents, fused_tokens, fused_seen = run(True)
    assert fused.fused_sampling and len(calls) == 10  # every step, not the prefill
    assert fused_tokens == plain_tokens
    assert len({t for step in plain_tokens for t in step}) > 3  # real sampling, not one repeated token
    assert all(torch.equal(a, b) for a, b in zip(fused_seen, plain_seen, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(fused_latents, plain_latents, strict=True))
