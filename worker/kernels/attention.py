"""A decode step's attention and its KV-cache write in one Triton kernel, on CUDA.

:func:`decode_attention` equals PyTorch's attention up to rounding (the cache bit for bit);
``VOXCLONE_FUSED_ATTENTION`` (``EngineSettings.fused_attention``, which the decoder is given) uses it per
captured step shape where timing favours it (``auto``), everywhere (``on``) or nowhere (``off``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from worker.kernels import loader

log = logging.getLogger(__name__)

BLOCK_POSITIONS = 64  # cache positions per loop iteration of a program (with ``on``)
# The block sizes timed against PyTorch's attention with ``auto``. At sm_90 in float16 (cuobjdump) blocks of
# 64 take 251 registers per thread (two programs of 128 threads per multiprocessor), of 32 take 156 (three).
BLOCKS = (64, 32)
_TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}  # of the output, max abs


@torch.library.custom_op("voxclone::decode_attention", mutates_args=("cache",))
def _decode_attention(
    qkv: torch.Tensor,
    cache: torch.Tensor,
    pos: torch.Tensor,
    layer: int,
    length: int,
    scale: float,
    block: int,
) -> torch.Tensor:
    """One kernel launch (see :func:`decode_attention`); returns ``[B, heads, head_dim]``."""
    rows, _, heads, head_dim = qkv.shape
    _, layers, _, _, max_positions, _ = cache.shape
    out = torch.empty(rows, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if rows:
        loader.kernel("decode_attention_rows")[(rows, heads)](
            qkv, cache, pos, out, layer, length, max_positions, layers, heads, scale,
            HEAD_DIM=head_dim, BLOCK_N=block, num_warps=4,
        )  # fmt: skip
    return out


def decode_attention(
    qkv: torch.Tensor,
    cache: torch.Tensor,
    pos: torch.Tensor,
    *,
    layer: int,
    length: int,
    scale: float,
    block: int = BLOCK_POSITIONS,
) -> torch.Tensor:
    """Write each row's new key and value at ``min(pos, length - 1)`` in ``cache[row, layer]``, then attend.

    ``qkv`` is ``[B, 3, heads, head_dim]`` (contiguous), ``cache`` ``[capacity, layers, 2, heads,
    max_positions, head_dim]`` (contiguous, written in place), ``pos`` ``[B]`` long. Returns the attention
    output as ``[B, heads, 1, head_dim]`` (a view of ``[B, 1, heads × head_dim]``), as
    :func:`decode_attention_torch` does. ``block``: cache positions per loop iteration (a power of two).
    """
    rows, three, heads, head_dim = qkv.shape
    if three != 3 or not qkv.is_contiguous():
        raise ValueError(f"qkv must be a contiguous [rows, 3, heads, head_dim] tensor, got {list(qkv.shape)}")
    if cache.dim() != 6 or cache.shape[3] != heads or cache.shape[5] != head_dim or not cache.is_contiguous():
        raise ValueError(
            f"cache must be a contiguous [capacity, layers, 2, {heads}, positions, {head_dim}] tensor, got "
            f"{list(cache.shape)}"
        )
    if cache.dtype != qkv.dtype or cache.shape[0] < rows:
        raise ValueError(
            f"cache ({cache.dtype}, {cache.shape[0]} rows) does not hold {rows} {qkv.dtype} rows"
        )
    if pos.shape != (rows,) or pos.dtype != torch.long or not pos.is_contiguous():
        raise ValueError(f"pos must be a contiguous [{rows}] long tensor")
    if not 0 <= layer < cache.shape[1] or not 0 < length <= cache.shape[4]:
        raise ValueError(f"layer {layer} or length {length} is outside the cache {list(cache.shape)}")
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two, got {head_dim}")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two of at least 16, got {block}")
    out = _decode_attention(qkv, cache, pos, layer, length, scale, block)
    return out.view(rows, 1, heads, head_dim).transpose(1, 2)


def decode_attention_torch(
    qkv: torch.Tensor, cache: torch.Tensor, pos: torch.Tensor, *, layer: int, length: int, scale: float
) -> torch.Tensor:
    """:func:`decode_attention` in PyTorch's ops, written plainly (the reference for the probe and tests)."""
    rows = qkv.shape[0]
    write = pos.clamp(max=length - 1)
    index = torch.arange(rows, device=qkv.device)
    cache[index, layer, 0, :, write] = qkv[:, 1]
    cache[index, layer, 1, :, write] = qkv[:, 2]
    keys, values = cache[:rows, layer, 0, :, :length], cache[:rows, layer, 1, :, :length]
    visible = torch.arange(length, device=qkv.device) <= write[:, None]
    bias = torch.zeros(visible.shape, dtype=qkv.dtype, device=qkv.device).masked_fill(~visible, -torch.inf)
    q = qkv[:, 0].unsqueeze(2)  # [B, H, 1, d]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias[:, None, None], scale=scale)


def works_for(*, heads: int, head_dim: int, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether :func:`decode_attention` may stand in for the step's cache write and attention.

    Only on CUDA (or under Triton's interpreter), only for the dtypes it was checked in (the decoder asks
    only where ``VOXCLONE_FUSED_ATTENTION`` is not ``off``). Then a probe on the device: the cache written
    bit for bit as :func:`decode_attention_torch` writes it, the output within a few float16 ulp of it.
    (Whether it is also faster is measured per captured step shape,
    :func:`worker.batching.graphs.capture_steps`.)
    """
    device = torch.device(device)
    if dtype not in _TOLERANCE or (device.type != "cuda" and not loader.interpreting()):
        return False
    if head_dim & (head_dim - 1):
        return False
    generator = torch.Generator().manual_seed(0)
    rows, layers, positions, length = 5, 2, 200, 160
    cache = torch.randn(rows + 1, layers, 2, heads, positions, head_dim, generator=generator).to(
        device, dtype
    )
    qkv = torch.randn(rows, 3, heads, head_dim, generator=generator).to(device, dtype)
    pos = torch.tensor([0, 1, 70, 159, 190], device=device)  # the first, a block edge, the last, beyond
    scale = head_dim**-0.5
    with torch.inference_mode():
        plain_cache = cache.clone()
        want = decode_attention_torch(qkv, plain_cache, pos, layer=1, length=length, scale=scale)
    for block in {BLOCK_POSITIONS, *BLOCKS}:  # each block size the decoder may use
        try:
            with torch.inference_mode():
                fused_cache = cache.clone()
                got = decode_attention(
                    qkv, fused_cache, pos, layer=1, length=length, scale=scale, block=block
                )
        except Exception:  # Triton missing, no driver, no C compiler, a failed compile: not used
            log.info("the fused decode attention is not available here; using PyTorch's", exc_info=True)
            return False
        diff = float((got.float() - want.float()).abs().max())
        if not torch.equal(fused_cache, plain_cache) or diff > _TOLERANCE[dtype]:
            log.warning(
                "the fused decode attention (blocks of %d) disagrees with PyTorch's (%.3g): using PyTorch's",
                block, diff,
            )  # fmt: skip
            return False
    return True
