"""The Triton kernel of :mod:`worker.fused_norm`, undecorated (imported only where Triton is used).

:func:`worker.fused_norm._kernel` applies ``triton.jit`` when it is first needed: that is when Triton
decides between compiling it and running it in its interpreter (``TRITON_INTERPRET=1``).
"""

import triton.language as tl


def add_layer_norm_rows(
    residual,
    delta,
    weight,
    bias,
    out_sum,
    out_norm,
    dim,
    eps,
    BLOCK: tl.constexpr,
):
    """One row per program: ``out_sum = residual + delta``, ``out_norm = LayerNorm(out_sum)``."""
    start = tl.program_id(0).to(tl.int64) * dim
    cols = tl.arange(0, BLOCK)
    inside = cols < dim
    r = tl.load(residual + start + cols, mask=inside, other=0.0)
    d = tl.load(delta + start + cols, mask=inside, other=0.0)
    total = (r.to(tl.float32) + d.to(tl.float32)).to(r.dtype)  # PyTorch's add: one rounding
    tl.store(out_sum + start + cols, total, mask=inside)
    x = total.to(tl.float32)
    mean = tl.sum(x, axis=0) / dim
    centred = tl.where(inside, x - mean, 0.0)
    variance = tl.sum(centred * centred, axis=0) / dim
    w = tl.load(weight + cols, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(bias + cols, mask=inside, other=0.0).to(tl.float32)
    normed = centred * tl.rsqrt(variance + eps) * w + b
    tl.store(out_norm + start + cols, normed.to(r.dtype), mask=inside)
