"""A decode step's attention and cache write in one kernel (worker.kernels.attention): the Triton kernel,
run in Triton's interpreter (tests/conftest.py), against PyTorch's ops, its probe, and a decoder using it."""

from __future__ import annotations

import pytest
import torch

from core.engine_settings import AutoOnOff
from tests.support.decoding import decode_two_rows
from worker.batching.decoder import BatchDecoder, attention_choice
from worker.batching.synthesis import max_positions
from worker.kernels import attention as fused_attention
from worker.kernels import loader
from worker.kernels.attention import decode_attention, decode_attention_torch, works_for
from worker.serving.engine import XttsEngine
from worker.tts.gpt import SamplingParams


def inputs(
    rows: int, heads: int, head_dim: int, positions: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    cache = torch.randn(rows + 2, 3, 2, heads, positions, head_dim, generator=generator).to(dtype)
    qkv = torch.randn(rows, 3, heads, head_dim, generator=generator).to(dtype)
    return qkv, cache


@pytest.mark.parametrize(
    ("dtype", "heads", "head_dim", "length", "block", "tolerance"),
    [
        (torch.float32, 4, 16, 100, 64, 1e-5),  # the bucket not a multiple of the kernel's 64 positions
        (torch.float32, 2, 64, 128, 64, 1e-5),  # XTTS-v2's head width, two whole blocks
        (torch.float32, 2, 64, 100, 32, 1e-5),  # blocks of 32: a block edge at 31, four blocks
        (torch.float16, 4, 16, 40, 64, 2e-3),
    ],
)
def test_the_kernel_writes_the_cache_and_attends_as_pytorch_does(
    dtype: torch.dtype, heads: int, head_dim: int, length: int, block: int, tolerance: float
) -> None:
    qkv, cache = inputs(6, heads, head_dim, 140, dtype)
    # the first position, a block edge of each block size, the last, beyond
    pos = torch.tensor([0, 1, 31, 63, length - 1, 130])
    fused, plain = cache.clone(), cache.clone()
    with torch.inference_mode():
        got = decode_attention(qkv, fused, pos, layer=2, length=length, scale=0.3, block=block)
        want = decode_attention_torch(qkv, plain, pos, layer=2, length=length, scale=0.3)
    assert got.shape == want.shape == (6, heads, 1, head_dim)
    assert torch.equal(fused, plain)
    changed = [
        tuple(i) for i in (fused != cache).any(dim=-1).nonzero().tolist()
    ]  # (row, layer, K/V, head, position)
    write = pos.clamp(max=length - 1).tolist()
    assert sorted(changed) == sorted(
        (r, 2, kv, h, write[r]) for r in range(6) for kv in (0, 1) for h in range(heads)
    )
    assert float((got.float() - want.float()).abs().max()) <= tolerance
    assert float(got.float().std()) > 0.1  # a real average of values, not zeros


def test_a_row_sees_only_its_own_positions() -> None:
    """Values beyond a row's position or in another row must not reach its output."""
    qkv, cache = inputs(2, 2, 16, 80, torch.float32, seed=3)
    pos = torch.tensor([10, 70])
    poisoned = cache.clone()
    poisoned[0, 0, :, :, 11:] = 1e4  # row 0's own positions past its write
    poisoned[2:] = 1e4  # rows that are not in the step
    with torch.inference_mode():
        clean = decode_attention(qkv, cache.clone(), pos, layer=0, length=80, scale=0.25)
        dirty = decode_attention(qkv, poisoned, pos, layer=0, length=80, scale=0.25)
    assert torch.equal(clean, dirty)


def test_the_kernel_refuses_inputs_it_would_misread() -> None:
    qkv, cache = inputs(2, 4, 16, 40, torch.float32)
    pos = torch.tensor([1, 2])
    cases: list[tuple[dict[str, object], str]] = [
        ({"qkv": qkv.transpose(0, 1).contiguous().transpose(0, 1)}, "qkv must be a contiguous"),
        ({"cache": cache[:, :, :, :2]}, "cache must be a contiguous"),
        ({"cache": cache.half()}, "does not hold"),
        ({"pos": pos.int()}, "pos must be"),
        ({"layer": 3}, "outside the cache"),
        ({"length": 41}, "outside the cache"),
    ]
    for change, message in cases:
        args: dict[str, object] = {
            "qkv": qkv,
            "cache": cache,
            "pos": pos,
            "layer": 0,
            "length": 40,
            "scale": 0.25,
        }
        args.update(change)
        with pytest.raises(ValueError, match=message):
            decode_attention(**args)  # type: ignore[arg-type]
    odd_qkv, odd_cache = inputs(2, 4, 12, 40, torch.float32)
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(odd_qkv, odd_cache, pos, layer=0, length=40, scale=0.25)
    for block in (24, 8):
        with pytest.raises(ValueError, match=f"block must be a power of two of at least 16, got {block}"):
            decode_attention(qkv, cache, pos, layer=0, length=40, scale=0.25, block=block)


def test_the_probe_says_yes_only_where_the_kernel_runs_and_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether it is asked at all is the decoder's switch (see the attention_choice test below)."""

    def probe(dtype: torch.dtype = torch.float32, head_dim: int = 16) -> bool:
        return works_for(heads=4, head_dim=head_dim, device="cpu", dtype=dtype)

    assert probe() and probe(torch.float16)  # the interpreter stands in for a GPU here
    assert not probe(head_dim=24)  # the kernel needs a power of two
    interpreting = loader.interpreting
    monkeypatch.setattr(loader, "interpreting", lambda: False)
    assert not probe()  # the CPU without the interpreter: not tried at all
    monkeypatch.setattr(loader, "interpreting", interpreting)

    def missing(*_: object) -> object:
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(loader, "kernel", missing)
    assert not probe()  # Triton missing (or failing to compile): PyTorch's, and no exception
    monkeypatch.setattr(loader, "kernel", _real_kernel)
    assert probe()
    original = fused_attention.decode_attention

    def unscaled(*args: object, **kwargs: object) -> torch.Tensor:
        return original(*args, **{**kwargs, "scale": 1.0})  # type: ignore[arg-type]

    monkeypatch.setattr(fused_attention, "decode_attention", unscaled)
    assert not probe()  # another function is not used

    def writing_nothing(
        qkv: torch.Tensor, cache: torch.Tensor, *args: object, **kwargs: object
    ) -> torch.Tensor:
        return original(qkv, cache.clone(), *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fused_attention, "decode_attention", writing_nothing)
    assert not probe()  # nor one that leaves the cache unwritten

    def wrong_at_32(*args: object, **kwargs: object) -> torch.Tensor:
        out = original(*args, **kwargs)  # type: ignore[arg-type]
        return out * 1.01 if kwargs["block"] == 32 else out

    monkeypatch.setattr(fused_attention, "decode_attention", wrong_at_32)
    assert not probe()  # every block size the decoder may time is checked


_real_kernel = loader.kernel


def test_a_decoder_with_the_fused_attention_decodes_as_one_without_it(
    tiny_prefixes: tuple[XttsEngine, list[torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rows with their own prefixes and draws, one paused at times: the same tokens, latents within
    float32 rounding, and the kernel called once per layer and step."""
    engine, texts = tiny_prefixes[0], tiny_prefixes[1][:2]
    gpt = engine.model.gpt
    calls: list[int] = []

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return decode_attention(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("worker.batching.decoder.decode_attention", counting)

    def run(fused: bool | None) -> tuple[BatchDecoder, torch.Tensor, list[list[int]]]:
        decoder = BatchDecoder(
            gpt, SamplingParams(), capacity=4, max_positions=max_positions(gpt), device="cpu",
            fused_attention=fused,
        )  # fmt: skip
        return decoder, *decode_two_rows(decoder, texts, min_tokens=3)

    plain, plain_latents, plain_tokens = run(None)
    assert not plain.fused_attention and not plain.timed_attention and not calls  # never on the CPU
    fused, fused_latents, fused_tokens = run(True)
    assert fused.fused_attention and len(calls) == 12 * len(fused.blocks)
    assert fused_tokens == plain_tokens
    assert len({t for step in plain_tokens for t in step}) > 3  # real sampling, not one repeated token
    assert torch.allclose(fused_latents, plain_latents, rtol=0, atol=1e-5)
    assert float(plain_latents.abs().max()) > 0.1


def test_a_cuda_decoder_times_the_fused_attention_by_default() -> None:
    """(in every step, timed per captured shape): by default timed where the probe agrees, in every step
    only when switched on; the probe is not run where it could not be used."""
    asked: list[int] = []

    def choice(device: str, agrees: bool = True, mode: AutoOnOff = "auto") -> tuple[bool, bool]:
        return attention_choice(torch.device(device), lambda: asked.append(1) or agrees, mode)

    assert choice("cuda") == (False, True) and len(asked) == 1
    assert choice("cuda", agrees=False) == (False, False)
    assert choice("cpu") == (False, False) and len(asked) == 2  # the CPU decodes eagerly: no probe
    assert choice("cuda", mode="on") == (True, False)
    assert choice("cuda", agrees=False, mode="on") == (False, False)
    assert choice("cuda", mode="off") == (False, False) and len(asked) == 4
