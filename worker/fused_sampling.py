"""Choosing the next audio token of every row in one kernel (Triton), for the decode step on CUDA.

:func:`worker.xtts_gpt.choose_tokens` is about thirty PyTorch ops (the repetition penalty, the stop-token
rule, temperature, a top-k, a sort and scatter for top-p, a softmax, a cumulative sum and a search), and
marking the chosen token seen is three more; in a captured decode step each costs about a fixed gap,
like a layer's matrix products. :func:`choose_tokens` here does all of it in one launch, one program per
row, and leaves the sort out: top-k's and top-p's cut-offs are found by bisection over the scores'
order-preserving integer keys.

It is the same function up to float rounding and ties. The scores are PyTorch's bit for bit up to the
cut-offs; top-k keeps the tokens tied with its cut-off, as PyTorch's does; top-p keeps every token tied
with its cut-off where PyTorch's sort keeps an arbitrary part of the tie; the masses summed to place the
cut-offs and invert the distribution are added in another order. So a row can, rarely, get another
token where its draw falls within rounding of a boundary. :func:`works_for` compares it with
:func:`worker.xtts_gpt.choose_tokens` on the device before a decoder uses it; ``VOXCLONE_FUSED_SAMPLING=off``
turns it off. On the CPU it runs only under Triton's interpreter (``TRITON_INTERPRET=1``), which the
tests use.
"""

from __future__ import annotations

import logging
import os

import torch

from worker import triton_support
from worker.xtts_gpt import SamplingParams
from worker.xtts_gpt import choose_tokens as reference_choose_tokens

log = logging.getLogger(__name__)

FUSED_SAMPLING_ENV = "VOXCLONE_FUSED_SAMPLING"  # "auto" (default: where the probe agrees) or "off"
PROBE_ROWS = 64
PROBE_AGREEMENT = 0.95  # of the probe's rows must get the reference's token (all of them when greedy)


@torch.library.custom_op("voxclone::choose_tokens", mutates_args=("seen",))
def _choose_tokens(
    logits: torch.Tensor,
    seen: torch.Tensor,
    steps: torch.Tensor,
    min_tokens: torch.Tensor,
    uniform: torch.Tensor,
    active: torch.Tensor,
    stop_token: int,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    greedy: bool,
) -> torch.Tensor:
    """Each row's next token (``[B]`` long); marks it in ``seen`` where ``active``. One kernel launch.

    A registered op, so that PyTorch's dispatcher (and the benchmark's op count) sees it as one op.
    """
    rows, vocab = logits.shape
    tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
    if rows:
        triton_support.kernel("choose_tokens_rows")[(rows,)](
            logits.contiguous(), seen, steps, min_tokens, uniform, active, tokens,
            vocab, stop_token, repetition_penalty, temperature, top_k, 1.0 - top_p,
            PENALTY=repetition_penalty != 1.0, GREEDY=greedy, TOP_K=0 < top_k < vocab, TOP_P=top_p < 1.0,
            BLOCK=triton_support.next_power_of_2(vocab), num_warps=4,
        )  # fmt: skip
    return tokens


def choose_tokens(
    logits: torch.Tensor,
    seen: torch.Tensor,
    steps: torch.Tensor,
    min_tokens: torch.Tensor,
    uniform: torch.Tensor,
    active: torch.Tensor,
    params: SamplingParams,
    *,
    stop_token: int,
) -> torch.Tensor:
    """:func:`worker.xtts_gpt.choose_tokens`, then each ``active`` row's token marked in ``seen`` (in place).

    ``logits`` is ``[B, V]``, ``seen`` ``[B, V]`` bool (rows contiguous: it is written in place), ``steps``
    and ``min_tokens`` ``[B]`` long, ``uniform`` ``[B]`` float32, ``active`` ``[B]`` bool.
    """
    rows, vocab = logits.shape
    if seen.shape != (rows, vocab) or seen.dtype != torch.bool or not seen.is_contiguous():
        raise ValueError(f"seen must be a contiguous [{rows}, {vocab}] bool tensor, got {seen.dtype} "
                         f"{tuple(seen.shape)}")  # fmt: skip
    for name, tensor, dtype in (
        ("steps", steps, torch.long),
        ("min_tokens", min_tokens, torch.long),
        ("uniform", uniform, torch.float32),
        ("active", active, torch.bool),
    ):
        if tensor.shape != (rows,) or tensor.dtype != dtype or not tensor.is_contiguous():
            raise ValueError(f"{name} must be a contiguous [{rows}] {dtype} tensor, got {tensor.dtype} "
                             f"{tuple(tensor.shape)}")  # fmt: skip
    if not 0 <= stop_token < vocab:
        raise ValueError(f"stop token {stop_token} is outside the vocabulary of {vocab}")
    return _choose_tokens(
        logits, seen, steps, min_tokens, uniform, active, stop_token, params.temperature, params.top_k,
        params.top_p, params.repetition_penalty, params.greedy,
    )  # fmt: skip


def works_for(
    params: SamplingParams, *, vocab: int, stop_token: int, device: torch.device | str, dtype: torch.dtype
) -> bool:
    """Whether :func:`choose_tokens` can stand in for the reference with ``params``, for ``dtype`` logits.

    Only on CUDA (or under Triton's interpreter), not with ``VOXCLONE_FUSED_SAMPLING=off``. Then a probe
    on the device with logits shaped like a decode step's: the seen marks must be exactly the chosen
    tokens, and the tokens the reference's for at least 95 % of the rows (every row when greedy).
    """
    device = torch.device(device)
    if os.environ.get(FUSED_SAMPLING_ENV, "auto").strip().lower() == "off":
        return False
    if device.type != "cuda" and not triton_support.interpreting():
        return False
    generator = torch.Generator().manual_seed(0)
    rows = PROBE_ROWS
    logits = (3 * torch.randn(rows, vocab, generator=generator)).to(device, dtype)
    seen = (torch.rand(rows, vocab, generator=generator) < 0.05).to(device)
    steps = torch.randint(0, 8, (rows,), generator=generator).to(device)
    min_tokens = torch.randint(0, 8, (rows,), generator=generator).to(device)
    uniform = torch.rand(rows, generator=generator).to(device)
    active = (torch.rand(rows, generator=generator) < 0.8).to(device)
    try:
        with torch.inference_mode():
            marked = seen.clone()
            got = choose_tokens(
                logits, marked, steps, min_tokens, uniform, active, params, stop_token=stop_token
            )
            want = reference_choose_tokens(
                logits, seen, steps, min_tokens, uniform, params, stop_token=stop_token
            )
    except Exception:  # Triton missing, no driver, no C compiler, a failed compile: not used
        log.info("the fused token choice is not available here; using PyTorch's ops", exc_info=True)
        return False
    expected_marks = seen.clone()
    expected_marks[active, got[active]] = True
    agreement = float((got == want).float().mean())
    needed = 1.0 if params.greedy else PROBE_AGREEMENT
    same = torch.equal(marked, expected_marks) and agreement >= needed
    if not same:
        log.warning("the fused token choice disagrees with PyTorch's (%.0f %% of rows agree): using its ops",
                    100 * agreement)  # fmt: skip
    return same
