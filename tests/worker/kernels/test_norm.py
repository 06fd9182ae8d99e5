"""The fused residual add + LayerNorm (worker.kernels.norm): the Triton kernel, run in Triton's interpreter
(tests/conftest.py), against PyTorch's two ops, its probe, and a decoder that uses it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from tests.support.decoding import decode_two_rows
from worker.batching.decoder import BatchDecoder
from worker.batching.synthesis import max_positions
from worker.kernels import loader
from worker.kernels import norm as fused_norm
from worker.kernels.norm import add_layer_norm, works_for
from worker.serving.engine import XttsEngine
from worker.tts.gpt import SamplingParams, UniformDraws, decode_step, new_sequence, text_prefix
from worker.types import SpeechRequest

if TYPE_CHECKING:
    from TTS.tts.layers.xtts.gpt import GPT


def random_norm(dim: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.LayerNorm:
    """A LayerNorm whose weight and bias are not the identity's, so that using them is visible."""
    norm = torch.nn.LayerNorm(dim, eps=1e-5)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(dim, generator=generator))
        norm.bias.copy_(0.5 * torch.randn(dim, generator=generator))
    return norm.to(dtype)


@pytest.mark.parametrize(
    ("shape", "dtype", "scale", "tolerance"),
    [
        ((1, 96), torch.float32, 3.0, 1e-5),  # a lone row; 96 is not a power of two (masked lanes)
        ((5, 1, 128), torch.float32, 3.0, 1e-5),  # a decode step's [batch, 1, dim]
        ((2, 7, 96), torch.float16, 3.0, 4e-3),  # a prefill's [rows, positions, dim], half precision
        ((3, 64), torch.float32, 1e-3, 1e-5),  # variance below eps: eps must be where LayerNorm puts it
    ],
)
def test_the_kernel_adds_exactly_and_normalises_as_layer_norm_does(
    shape: tuple[int, ...], dtype: torch.dtype, scale: float, tolerance: float
) -> None:
    generator = torch.Generator().manual_seed(1)
    residual = (scale * torch.randn(shape, generator=generator)).to(dtype)
    delta = (scale * torch.randn(shape, generator=generator)).to(dtype)
    before = residual.clone(), delta.clone()
    norm = random_norm(shape[-1], dtype)
    with torch.inference_mode():
        total, normed = add_layer_norm(residual, delta, norm)
        want = residual + delta
        assert torch.equal(total, want)  # the residual stream is bit for bit PyTorch's
        assert normed.dtype == dtype and normed.shape == residual.shape
        diff = (normed.float() - norm(want).float()).abs().max()
        assert diff <= tolerance
    assert torch.equal(residual, before[0]) and torch.equal(delta, before[1])  # inputs left as they were


def test_the_kernel_reads_a_strided_residual_correctly() -> None:
    """A prefill's first residual is a slice of the wider staging buffer (rows of unequal stride)."""
    generator = torch.Generator().manual_seed(2)
    staging = torch.randn(2, 12, 64, generator=generator)
    residual = staging[:, :5]
    delta = torch.randn(2, 5, 64, generator=generator)
    norm = random_norm(64)
    with torch.inference_mode():
        total, normed = add_layer_norm(residual, delta, norm)
        assert torch.equal(total, residual + delta)
        assert torch.allclose(normed, norm(residual + delta), atol=1e-5)


def test_the_kernel_refuses_mismatched_inputs() -> None:
    norm = random_norm(32)
    with pytest.raises(ValueError, match="cannot add"):
        add_layer_norm(torch.zeros(2, 32), torch.zeros(3, 32), norm)
    with pytest.raises(ValueError, match="cannot add"):
        add_layer_norm(torch.zeros(2, 32), torch.zeros(2, 32, dtype=torch.float16), norm)


def test_the_probe_says_yes_only_where_the_kernel_runs_and_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    norm = random_norm(96)
    assert works_for(norm)  # the interpreter stands in for a GPU here
    assert works_for(random_norm(96, torch.float16))
    assert not works_for(torch.nn.LayerNorm(96, elementwise_affine=False))  # no weight to read
    assert not works_for(torch.nn.LayerNorm([4, 24]))  # normalises over two dimensions
    assert not works_for(torch.nn.RMSNorm(96))  # not a LayerNorm
    monkeypatch.setattr(loader, "interpreting", lambda: False)
    assert not works_for(norm)  # the CPU without the interpreter: not tried at all
    monkeypatch.undo()

    def missing(*_: object) -> object:
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(loader, "kernel", missing)
    assert not works_for(norm)  # Triton missing (or failing to compile): the two ops, and no exception
    monkeypatch.undo()
    assert works_for(norm)

    def without_bias(
        residual: torch.Tensor, delta: torch.Tensor, norm: torch.nn.LayerNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total = residual + delta
        return total, torch.nn.functional.layer_norm(
            total, norm.normalized_shape, norm.weight, None, norm.eps
        )

    monkeypatch.setattr(fused_norm, "add_layer_norm", without_bias)
    assert not works_for(norm)  # a kernel that computes something else is not used


@pytest.fixture(scope="module")
def engine(tiny_xtts_dir: Path) -> XttsEngine:
    torch.set_num_threads(2)
    return XttsEngine.load(tiny_xtts_dir, "cpu")


@pytest.fixture(scope="module")
def distinct_norms(engine: XttsEngine) -> tuple[GPT, list[Any], list[torch.Tensor]]:
    """A copy of the GPT whose LayerNorms each have their own weights (a fresh model's are all the
    identity, so using the wrong one would not show), with two sentences' conditioning and text."""
    gpt = copy.deepcopy(engine.model.gpt)
    for seed, module in enumerate(m for m in gpt.gpt.modules() if isinstance(m, torch.nn.LayerNorm)):
        module.load_state_dict(random_norm(module.normalized_shape[0], seed=seed).state_dict())
    rate = 22_050
    tone = 0.3 * np.sin(2 * np.pi * 140 * np.arange(2 * rate) / rate)
    voice = engine.embed(tone.astype(np.float32), rate)
    speeches = [
        engine.prepare(SpeechRequest(text, "en", voice, seed=0))
        for text in ("Hello world, this is a test.", "Short!")
    ]
    with torch.inference_mode():
        prefixes = [text_prefix(gpt, s.gpt_cond_latent, s.sentences[0]) for s in speeches]
    return gpt, speeches, prefixes


@pytest.mark.parametrize("fused", [False, True])
def test_the_decoder_normalises_with_each_layers_own_norm(
    distinct_norms: tuple[GPT, list[Any], list[torch.Tensor]], fused: bool
) -> None:
    """Greedy, against the one-request reference (Hugging Face's GPT-2 forward): the same latents."""
    gpt, speeches, prefixes = distinct_norms
    params = SamplingParams(greedy=True)
    decoder = BatchDecoder(
        gpt, params, capacity=2, max_positions=max_positions(gpt), device="cpu", fused_norm=fused
    )
    got = [decoder.prefill([decoder.claim()], prefixes[:1], [9], [0.0]).latents[0]]
    got += [decoder.step([True], [0.0]).latents[0] for _ in range(8)]
    state = new_sequence(
        gpt,
        speeches[0].gpt_cond_latent,
        speeches[0].sentences[0],
        min_tokens=9,
        max_tokens=9,
        draws=UniformDraws(0),
    )
    want = [decode_step(gpt, state, params) for _ in range(9)]
    assert torch.allclose(torch.stack(got), torch.stack(want), rtol=0, atol=1e-4)


def test_a_decoder_with_the_fused_norm_decodes_as_one_without_it(
    distinct_norms: tuple[GPT, list[Any], list[torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefill and steps, two rows with different prefixes and draws, one of them paused at times: the
    same tokens, latents within float32 rounding."""
    gpt, _, prefixes = distinct_norms
    sampling = SamplingParams()  # sampled, so that the draws and the distribution both matter
    calls: list[int] = []
    counted = fused_norm.add_layer_norm

    def counting(*args: object) -> object:
        calls.append(1)
        return counted(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("worker.batching.decoder.add_layer_norm", counting)

    def run(fused: bool | None) -> tuple[BatchDecoder, torch.Tensor, list[list[int]]]:
        decoder = BatchDecoder(
            gpt, sampling, capacity=4, max_positions=max_positions(gpt), device="cpu", fused_norm=fused
        )
        return decoder, *decode_two_rows(decoder, prefixes, min_tokens=4)

    plain, plain_latents, plain_tokens = run(None)
    assert not plain.fused_norm  # on the CPU only when asked for, even with the interpreter at hand
    assert not calls
    fused, fused_latents, fused_tokens = run(True)
    layers = len(fused.blocks)
    assert len(calls) == 13 * 2 * layers  # every residual add, in the prefill and each step
    assert fused_tokens == plain_tokens
    assert len({t for step in plain_tokens for t in step}) > 3  # real sampling, not one repeated token
    assert torch.allclose(fused_latents, plain_latents, rtol=0, atol=2e-5)
    assert float(plain_latents.abs().max()) > 0.1
