"""A residual add and the LayerNorm after it in one Triton kernel, for the decode step on CUDA.

:func:`add_layer_norm` gives PyTorch's sum bit for bit and its LayerNorm within a few ulp; :func:`works_for`
checks it on the device before use, and ``VOXCLONE_FUSED_NORM=off`` turns it off (the decoder then never
asks: ``EngineSettings.fused_norm``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from worker.kernels import loader

log = logging.getLogger(__name__)

_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}  # normalised, max abs diff


@torch.library.custom_op("voxclone::add_layer_norm", mutates_args=())
def _add_layer_norm(
    residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + delta, LayerNorm of that sum over the last dimension): one kernel launch.

    A registered op, so that PyTorch's dispatcher (and the benchmark's op count) sees it as one op.
    """
    kernel = loader.kernel("add_layer_norm_rows")
    residual, delta = residual.contiguous(), delta.contiguous()
    dim = residual.shape[-1]
    out_sum, out_norm = torch.empty_like(residual), torch.empty_like(residual)
    rows = residual.numel() // dim
    if rows:
        block = loader.next_power_of_2(dim)
        kernel[(rows,)](
            residual, delta, weight, bias, out_sum, out_norm, dim, eps,
            BLOCK=block, num_warps=min(max(block // 256, 1), 8),
        )  # fmt: skip
    return out_sum, out_norm


def add_layer_norm(
    residual: torch.Tensor, delta: torch.Tensor, norm: torch.nn.LayerNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = residual + delta`` and ``norm(h)`` in one kernel (see the module's docstring)."""
    if residual.shape != delta.shape or residual.dtype != delta.dtype:
        raise ValueError(
            f"cannot add {tuple(delta.shape)} {delta.dtype} to {tuple(residual.shape)} {residual.dtype}"
        )
    return _add_layer_norm(residual, delta, norm.weight, norm.bias, norm.eps)


def works_for(norm: Any) -> bool:
    """Whether :func:`add_layer_norm` can stand in for ``h + delta`` then ``norm(h)``, on ``norm``'s device.

    Only a LayerNorm with weight and bias over one dimension; only on CUDA (or under Triton's interpreter).
    Then a probe on the device: the sum must be bit for bit
    PyTorch's, the normalised output within a few ulp of ``norm``'s.
    """
    if not isinstance(norm, torch.nn.LayerNorm) or norm.weight is None or norm.bias is None:
        return False
    if len(norm.normalized_shape) != 1:
        return False
    device, dtype = norm.weight.device, norm.weight.dtype
    if dtype not in _TOLERANCE or (device.type != "cuda" and not loader.interpreting()):
        return False
    (dim,) = norm.normalized_shape
    generator = torch.Generator().manual_seed(0)
    residual, delta = (
        (scale * torch.randn(3, dim, generator=generator)).to(device, dtype) for scale in (4.0, 1.0)
    )
    try:
        with torch.inference_mode():
            got_sum, got_norm = add_layer_norm(residual, delta, norm)
            want_sum = residual + delta
            want_norm = norm(want_sum)
    except Exception:  # Triton missing, no driver, no C compiler, a failed compile: not used
        log.info("the fused residual add + LayerNorm is not available here; using two ops", exc_info=True)
        return False
    diff = float((got_norm.float() - want_norm.float()).abs().max())
    same = torch.equal(got_sum, want_sum) and diff <= _TOLERANCE[dtype]
    if not same:
        log.warning("the fused residual add + LayerNorm disagrees with PyTorch's (%.3g): using two ops", diff)
    return same
