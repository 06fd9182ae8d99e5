"""The end of a decode step (the token choice and the rows' bookkeeping) in one Triton kernel, on CUDA.

:func:`finish_step` equals :func:`finish_step_torch` up to float rounding and ties; :func:`works_for` checks
the two against each other on the device before use, and ``VOXCLONE_FUSED_SAMPLING=off`` turns it off (the
decoder then never asks: ``EngineSettings.fused_sampling``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
import torch.nn.functional as F

from worker.kernels import loader
from worker.tts.gpt import SamplingParams, choose_tokens

log = logging.getLogger(__name__)

PROBE_ROWS = 64
PROBE_AGREEMENT = 0.95  # of the probe's rows must get PyTorch's token (all of them when greedy)
MUTABLE = ("seen", "steps", "pos", "x", "out_latent", "out_tokens")  # what the end of a step writes


@dataclasses.dataclass(frozen=True)
class StepRows:
    """The per-row state the end of a step reads and writes: a decoder's buffers over the step's rows.

    ``seen`` ``[B, V]`` bool, ``steps`` and ``pos`` (audio tokens so far, cache length) ``[B]`` long,
    ``min_tokens`` ``[B]`` long, ``uniform`` ``[B]`` float32, ``active`` ``[B]`` bool, ``x`` (the next
    input) ``[B, D]``, ``out_latent`` ``[B, D]`` float32, ``out_tokens`` ``[B]`` long; ``embedding``
    ``[V, D]`` and ``positions`` ``[P, D]`` are the audio token and position tables. All contiguous.
    """

    seen: torch.Tensor
    steps: torch.Tensor
    pos: torch.Tensor
    min_tokens: torch.Tensor
    uniform: torch.Tensor
    active: torch.Tensor
    x: torch.Tensor
    out_latent: torch.Tensor
    out_tokens: torch.Tensor
    embedding: torch.Tensor
    positions: torch.Tensor

    def check(self, logits: torch.Tensor, latent: torch.Tensor) -> None:
        """Refuse shapes, dtypes and layouts the kernel would misread (it has no bounds of its own)."""
        rows, vocab = logits.shape
        dim = self.embedding.shape[1]
        expected = {
            "seen": ((rows, vocab), torch.bool),
            "steps": ((rows,), torch.long),
            "pos": ((rows,), torch.long),
            "min_tokens": ((rows,), torch.long),
            "uniform": ((rows,), torch.float32),
            "active": ((rows,), torch.bool),
            "x": ((rows, dim), self.embedding.dtype),
            "out_latent": ((rows, dim), torch.float32),
            "out_tokens": ((rows,), torch.long),
            "embedding": ((vocab, dim), self.embedding.dtype),
            "positions": ((self.positions.shape[0], dim), self.embedding.dtype),
        }
        for name, (shape, dtype) in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape or tensor.dtype != dtype or not tensor.is_contiguous():
                raise ValueError(
                    f"{name} must be a contiguous {list(shape)} {dtype} tensor, got {tensor.dtype} "
                    f"{list(tensor.shape)}{'' if tensor.is_contiguous() else ' (strided)'}"
                )
        if tuple(latent.shape) != (rows, dim):
            raise ValueError(f"latent must be [{rows}, {dim}], got {list(latent.shape)}")


def finish_step_torch(
    logits: torch.Tensor, latent: torch.Tensor, rows: StepRows, params: SamplingParams, *, stop_token: int
) -> torch.Tensor:
    """Each row's next token (``[B]`` long), chosen by :func:`worker.tts.gpt.choose_tokens`, then
    :func:`advance` with it."""
    tokens = choose_tokens(
        logits, rows.seen, rows.steps, rows.min_tokens, rows.uniform, params, stop_token=stop_token
    )
    advance(rows, tokens, latent)
    return tokens


def next_input(
    embedding: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor, steps: torch.Tensor
) -> torch.Tensor:
    """What the next step feeds each row: its token's embedding plus that of audio position ``steps``
    (the position table's last row beyond its end)."""
    return F.embedding(tokens, embedding) + positions[steps.clamp(max=positions.shape[0] - 1)]


def advance(rows: StepRows, tokens: torch.Tensor, latent: torch.Tensor) -> None:
    """For each active row: ``tokens`` marked seen, the next input written (the token's embedding plus
    its audio position's), the step and cache length advanced; for every row, the token and the latent
    (as float32) copied out."""
    active = rows.active
    hit = torch.zeros_like(rows.seen).scatter_(1, tokens[:, None], active[:, None])
    rows.seen.bitwise_or_(hit)  # in place: `|=` on a slice adds a copy onto itself
    following = next_input(rows.embedding, rows.positions, tokens, rows.steps + 1)
    rows.x.copy_(torch.where(active[:, None], following, rows.x))
    rows.pos.add_(active)  # in place, a bool adds as 0 or 1
    rows.steps.add_(active)
    rows.out_latent.copy_(latent)  # to float32 in the copy
    rows.out_tokens.copy_(tokens)


@torch.library.custom_op(
    "voxclone::finish_step", mutates_args=("seen", "steps", "pos", "x", "out_latent", "out_tokens")
)
def _finish_step(
    logits: torch.Tensor,
    latent: torch.Tensor,
    seen: torch.Tensor,
    steps: torch.Tensor,
    pos: torch.Tensor,
    min_tokens: torch.Tensor,
    uniform: torch.Tensor,
    active: torch.Tensor,
    x: torch.Tensor,
    embedding: torch.Tensor,
    positions: torch.Tensor,
    out_latent: torch.Tensor,
    out_tokens: torch.Tensor,
    stop_token: int,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    greedy: bool,
) -> None:
    """:func:`finish_step_torch` in one kernel launch; the tokens land in ``out_tokens``.

    A registered op, so that PyTorch's dispatcher (and the benchmark's op count) sees it as one op.
    """
    rows, vocab = logits.shape
    dim = embedding.shape[1]
    if rows:
        loader.kernel("finish_step_rows")[(rows,)](
            logits, latent, seen, steps, pos, min_tokens, uniform, active, x, embedding, positions,
            out_latent, out_tokens, vocab, dim, positions.shape[0] - 1, stop_token, repetition_penalty,
            _reciprocal(repetition_penalty), _reciprocal(temperature), top_k, 1.0 - top_p,
            PENALTY=repetition_penalty != 1.0, GREEDY=greedy, TOP_K=0 < top_k < vocab, TOP_P=top_p < 1.0,
            BLOCK=loader.next_power_of_2(vocab), BLOCK_DIM=loader.next_power_of_2(dim),
            num_warps=4,
        )  # fmt: skip


def _reciprocal(value: float) -> float:
    """``1 / value`` in float32, as PyTorch's CUDA division by a number computes it (then multiplies)."""
    return float(np.float32(1.0) / np.float32(value)) if value else 0.0


def finish_step(
    logits: torch.Tensor, latent: torch.Tensor, rows: StepRows, params: SamplingParams, *, stop_token: int
) -> torch.Tensor:
    """:func:`finish_step_torch` as one Triton kernel (see the module's docstring); returns ``out_tokens``."""
    logits, latent = logits.contiguous(), latent.contiguous()
    rows.check(logits, latent)
    if not 0 <= stop_token < logits.shape[1]:
        raise ValueError(f"stop token {stop_token} is outside the vocabulary of {logits.shape[1]}")
    _finish_step(
        logits, latent, rows.seen, rows.steps, rows.pos, rows.min_tokens, rows.uniform, rows.active, rows.x,
        rows.embedding, rows.positions, rows.out_latent, rows.out_tokens, stop_token, params.temperature,
        params.top_k, params.top_p, params.repetition_penalty, params.greedy,
    )  # fmt: skip
    return rows.out_tokens


def random_rows(
    rows: int,
    vocab: int,
    dim: int,
    positions: int,
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor, StepRows]:
    """Logits, latents and row state shaped like a decode step's, random (for the probe and the tests)."""
    g = torch.Generator().manual_seed(seed)

    def on(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device)

    logits = on((3 * torch.randn(rows, vocab, generator=g)).to(dtype))
    latent = on(torch.randn(rows, dim, generator=g).to(dtype))
    state = StepRows(
        seen=on(torch.rand(rows, vocab, generator=g) < 0.05),
        steps=on(torch.randint(0, positions + 2, (rows,), generator=g)),  # some beyond the position table
        pos=on(torch.randint(0, 500, (rows,), generator=g)),
        min_tokens=on(torch.randint(0, positions, (rows,), generator=g)),
        uniform=on(torch.rand(rows, generator=g)),
        active=on(torch.rand(rows, generator=g) < 0.8),
        x=on(torch.randn(rows, dim, generator=g).to(dtype)),
        out_latent=on(torch.randn(rows, dim, generator=g)),
        out_tokens=on(torch.randint(0, vocab, (rows,), generator=g)),
        embedding=on(torch.randn(vocab, dim, generator=g).to(dtype)),
        positions=on(torch.randn(positions, dim, generator=g).to(dtype)),
    )
    return logits, latent, state


def copy_rows(rows: StepRows) -> StepRows:
    """Separate copies of ``rows``' mutable buffers (the tables are shared)."""
    return dataclasses.replace(rows, **{name: getattr(rows, name).clone() for name in MUTABLE})


def compare(
    logits: torch.Tensor, latent: torch.Tensor, rows: StepRows, params: SamplingParams, *, stop_token: int
) -> tuple[float, list[str]]:
    """Run :func:`finish_step` on a copy of ``rows``: the share of rows whose token is PyTorch's, and the
    buffers whose bookkeeping differs from :func:`advance` with the kernel's own tokens (``rows`` is left
    as it was)."""
    want = choose_tokens(
        logits, rows.seen, rows.steps, rows.min_tokens, rows.uniform, params, stop_token=stop_token
    )
    fused = copy_rows(rows)
    got = finish_step(logits, latent, fused, params, stop_token=stop_token).clone()
    expected = copy_rows(rows)
    advance(expected, got, latent)
    wrong = [name for name in MUTABLE if not torch.equal(getattr(fused, name), getattr(expected, name))]
    return float((got == want).float().mean()), wrong


def works_for(
    params: SamplingParams,
    *,
    vocab: int,
    dim: int,
    positions: int,
    stop_token: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> bool:
    """Whether :func:`finish_step` can stand in for :func:`finish_step_torch` with ``params``.

    Only on CUDA (or under Triton's interpreter). Then a probe
    on the device with random rows shaped like a decode step's (``dtype`` logits and tables): the tokens
    PyTorch's for at least 95 % of the rows (every row when greedy), and the bookkeeping exactly
    :func:`advance`'s for the kernel's tokens.
    """
    device = torch.device(device)
    if device.type != "cuda" and not loader.interpreting():
        return False
    logits, latent, rows = random_rows(PROBE_ROWS, vocab, dim, positions, seed=0, dtype=dtype, device=device)
    try:
        with torch.inference_mode():
            agreement, wrong = compare(logits, latent, rows, params, stop_token=stop_token)
    except Exception:  # Triton missing, no driver, no C compiler, a failed compile: not used
        log.info("the fused end of the decode step is not available here; using PyTorch's ops", exc_info=True)
        return False
    needed = 1.0 if params.greedy else PROBE_AGREEMENT
    if wrong or agreement < needed:
        log.warning(
            "the fused end of the decode step disagrees with PyTorch's ops (tokens of %.0f %% of rows "
            "agree; %s): using PyTorch's",
            100 * agreement,
            ", ".join(f"{name} differs" for name in wrong) or "bookkeeping the same",
        )
        return False
    return True
