"""The end of a decode step in one kernel (worker.kernels.sampling): the Triton kernel, run in Triton's
interpreter (tests/conftest.py), against the same step in PyTorch's ops, its probe, and a decoder using it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from worker.batching.decoder import BatchDecoder
from worker.batching.synthesis import max_positions
from worker.kernels import loader
from worker.kernels import sampling as fused_sampling
from worker.kernels.sampling import (
    MUTABLE,
    StepRows,
    copy_rows,
    finish_step,
    finish_step_torch,
    random_rows,
    works_for,
)
from worker.serving.engine import XttsEngine
from worker.tts.gpt import SamplingParams

STOP = 1025  # XTTS-v2's stop token: the last of 1026 audio tokens
DIM, POSITIONS = 48, 12  # small tables: the bookkeeping's shapes, not the model's, matter here


def both(
    logits: torch.Tensor, latent: torch.Tensor, rows: StepRows, params: SamplingParams, stop: int
) -> tuple[StepRows, StepRows]:
    """The rows after the kernel's step end and after PyTorch's, each from its own copy."""
    fused, plain = copy_rows(rows), copy_rows(rows)
    with torch.inference_mode():
        finish_step(logits, latent, fused, params, stop_token=stop)
        finish_step_torch(logits, latent, plain, params, stop_token=stop)
    return fused, plain


def same(a: StepRows, b: StepRows) -> bool:
    return all(torch.equal(getattr(a, name), getattr(b, name)) for name in MUTABLE)


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
def test_the_kernel_ends_a_step_as_pytorchs_ops_do(params: SamplingParams, vocab: int, offset: float) -> None:
    logits, latent, rows = random_rows(
        24, vocab, DIM, POSITIONS, seed=vocab, dtype=torch.float32, device="cpu"
    )
    logits += offset
    before = copy_rows(rows)
    fused, plain = both(logits, latent, rows, params, stop=vocab - 1)
    assert same(fused, plain)  # tokens, seen marks, next inputs, steps, lengths, latents: all of it
    assert same(rows, before)  # (the copies were written, not the rows given)
    tokens = fused.out_tokens
    assert len(set(tokens.tolist())) > 12  # real, varied choices
    active = rows.active
    assert 0 < int(active.sum()) < 24
    assert torch.equal(fused.steps, rows.steps + active) and torch.equal(fused.pos, rows.pos + active)
    assert torch.equal(fused.x[~active], rows.x[~active]) and not torch.equal(fused.x[active], rows.x[active])
    assert fused.seen[active, tokens[active]].all()
    assert torch.equal(fused.out_latent, latent)


def test_half_precision_tables_and_logits() -> None:
    """A float16 decoder's step: the next inputs rounded once, as PyTorch's add does; the tokens PyTorch's
    but where float16's coarse logits tie at top-p's cut-off (see the module's docstring)."""
    logits, latent, rows = random_rows(64, 1026, DIM, POSITIONS, seed=5, dtype=torch.float16, device="cpu")
    fused, plain = both(logits, latent, rows, SamplingParams(), stop=STOP)
    agree = fused.out_tokens == plain.out_tokens
    assert float(agree.float().mean()) >= 0.95
    for name in ("steps", "pos", "out_latent"):
        assert torch.equal(getattr(fused, name), getattr(plain, name))
    assert torch.equal(fused.x[agree], plain.x[agree]) and torch.equal(fused.seen[agree], plain.seen[agree])


def repeated(rows: StepRows, logits: torch.Tensor, latent: torch.Tensor, n: int) -> tuple:
    """Row 0 of everything ``n`` times, so that only the draws differ."""

    def first(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[:1].expand(n, *tensor.shape[1:]).contiguous()

    per_row = {name: first(getattr(rows, name)) for name in (*MUTABLE, "min_tokens", "uniform", "active")}
    return first(logits), first(latent), dataclasses.replace(rows, **per_row)


def test_every_draw_gives_pytorchs_token() -> None:
    """One row's distribution swept with 150 draws from 0 to 1: the same token for each, so the top-k and
    top-p cut-offs and the inversion of the cumulative distribution are the same everywhere."""
    logits, latent, rows = random_rows(1, 1026, DIM, POSITIONS, seed=7, dtype=torch.float32, device="cpu")
    logits, latent, rows = repeated(rows, logits, latent, 150)
    rows.uniform.copy_(torch.linspace(0.0, 0.999, 150))
    fused, plain = both(logits, latent, rows, SamplingParams(temperature=1.5, top_k=40, top_p=0.7), stop=STOP)
    assert same(fused, plain)
    assert 4 < len(set(fused.out_tokens.tolist())) < 40  # the sweep crossed many tokens; top-p cut some


def test_ties_at_the_cut_offs_keep_every_tied_token() -> None:
    """Top-k keeps what ties with its k-th score, as PyTorch's does; top-p keeps all of a tie too."""
    vocab = 64
    logits, latent, rows = random_rows(1, vocab, DIM, POSITIONS, seed=9, dtype=torch.float32, device="cpu")
    logits.fill_(-5.0)
    logits[0, :6] = torch.tensor([4.0, 3.0, 2.0, 2.0, 2.0, 1.0])
    rows.min_tokens.zero_()
    logits, latent, rows = repeated(rows, logits, latent, 60)
    rows.uniform.copy_(torch.linspace(0.0, 0.999, 60))

    def plain(top_k: int, top_p: float) -> SamplingParams:
        return SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, repetition_penalty=1.0)

    top_k, reference = both(logits, latent, rows, plain(3, 1.0), stop=vocab - 1)
    assert set(top_k.out_tokens.tolist()) == {0, 1, 2, 3, 4} and same(top_k, reference)
    # 4 and 3 hold ~0.55 and 0.20, each 2 ~0.07, the rest ~0.03: top-p 0.85 drops the lowest 0.15, which
    # ends inside the tie at 2.
    top_p, _ = both(logits, latent, rows, plain(0, 0.85), stop=vocab - 1)
    assert set(top_p.out_tokens.tolist()) == {0, 1, 2, 3, 4}


def test_no_row_stops_before_its_minimum() -> None:
    logits, latent, rows = random_rows(16, 1026, DIM, POSITIONS, seed=3, dtype=torch.float32, device="cpu")
    logits[:, STOP] = 100.0  # the stop token is overwhelmingly likely
    rows.steps.copy_(torch.arange(16))
    rows.min_tokens.fill_(8)
    for params in (SamplingParams(), SamplingParams(greedy=True)):
        fused, plain = both(logits, latent, rows, params, stop=STOP)
        tokens = fused.out_tokens
        assert (tokens[:8] != STOP).all() and (tokens[8:] == STOP).all() and same(fused, plain)


def test_the_kernel_refuses_inputs_it_would_misread() -> None:
    logits, latent, rows = random_rows(2, 64, DIM, POSITIONS, seed=1, dtype=torch.float32, device="cpu")
    bad = {
        "seen": torch.zeros(2, 128, dtype=torch.bool)[:, :64],  # strided
        "steps": torch.zeros(2, dtype=torch.int32),
        "active": torch.ones(2, dtype=torch.long),
        "uniform": torch.zeros(3),
        "x": torch.zeros(2, DIM, dtype=torch.float16),  # not the tables' dtype
        "positions": torch.zeros(POSITIONS, DIM + 1),
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=f"^{name} must be a contiguous"):
            finish_step(
                logits, latent, dataclasses.replace(rows, **{name: value}), SamplingParams(), stop_token=63
            )
    with pytest.raises(ValueError, match="latent must be"):
        finish_step(logits, latent[:, :-1], rows, SamplingParams(), stop_token=63)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        finish_step(logits, latent, rows, SamplingParams(), stop_token=64)


def test_the_probe_says_yes_only_where_the_kernel_runs_and_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    params = SamplingParams()

    def probe(params: SamplingParams, dtype: torch.dtype = torch.float32) -> bool:
        return works_for(
            params, vocab=1026, dim=DIM, positions=POSITIONS, stop_token=STOP, device="cpu", dtype=dtype
        )

    assert probe(params)  # the interpreter stands in for a GPU here
    assert probe(SamplingParams(greedy=True), torch.float16)
    monkeypatch.setattr(loader, "interpreting", lambda: False)
    assert not probe(params)  # the CPU without the interpreter: not tried at all
    monkeypatch.undo()

    def missing(*_: object) -> object:
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(loader, "kernel", missing)
    assert not probe(params)  # Triton missing (or failing to compile): PyTorch's ops, and no exception
    monkeypatch.undo()

    original = fused_sampling.finish_step

    def without_penalty(*args: object, **kwargs: object) -> torch.Tensor:
        logits, latent, rows, params = args
        lenient = dataclasses.replace(params, repetition_penalty=1.0)  # type: ignore[type-var]
        return original(logits, latent, rows, lenient, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fused_sampling, "finish_step", without_penalty)
    assert not probe(params)  # another function is not used

    def not_advancing(*args: object, **kwargs: object) -> torch.Tensor:
        rows: StepRows = args[2]  # type: ignore[assignment]
        pos = rows.pos.clone()
        tokens = original(*args, **kwargs)  # type: ignore[arg-type]
        rows.pos.copy_(pos)
        return tokens

    monkeypatch.setattr(fused_sampling, "finish_step", not_advancing)
    assert not probe(params)  # nor one whose bookkeeping is off


def test_a_decoder_with_the_fused_end_decodes_as_one_without_it(
    tiny_prefixes: tuple[XttsEngine, list[torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three rows with their own prefixes and draws, one paused at times, one leaving halfway: the same
    tokens and latents, and the same state (seen, next inputs, steps, lengths) after every step."""
    engine, texts = tiny_prefixes[0], tiny_prefixes[1][:3]
    gpt = engine.model.gpt
    calls: list[int] = []
    counted = fused_sampling.finish_step

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return counted(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("worker.batching.decoder.finish_step", counting)

    def run(fused: bool | None) -> tuple[BatchDecoder, list[torch.Tensor], list[list[int]], list[tuple]]:
        decoder = BatchDecoder(
            gpt, SamplingParams(), capacity=4, max_positions=max_positions(gpt), device="cpu",
            fused_sampling=fused,
        )  # fmt: skip
        slots = [decoder.claim() for _ in texts]
        first = decoder.prefill(slots, texts, [3, 3, 3], [0.3, 0.7, 0.9])
        latents, tokens, states = [first.latents], [first.tokens], []
        for i in range(10):
            rows = 3 if i < 5 else 2
            if i == 5:
                decoder.release(slots[2])
            result = decoder.step([True, i % 3 != 1, True][:rows], [0.1 + 0.08 * i, 0.5, 0.95][:rows])
            latents.append(result.latents)
            tokens.append(result.tokens)
            states.append(
                tuple(t[:rows].clone() for t in (decoder.seen, decoder.x, decoder.steps, decoder.pos))
            )
        return decoder, latents, tokens, states

    plain, plain_latents, plain_tokens, plain_states = run(None)
    assert not plain.fused_sampling  # on the CPU only when asked for, even with the interpreter at hand
    assert not calls
    fused, fused_latents, fused_tokens, fused_states = run(True)
    assert fused.fused_sampling and len(calls) == 10  # every step, not the prefill
    assert fused_tokens == plain_tokens
    assert len({t for step in plain_tokens for t in step}) > 3  # real sampling, not one repeated token
    assert all(torch.equal(a, b) for a, b in zip(fused_latents, plain_latents, strict=True))
    for got, want in zip(fused_states, plain_states, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
