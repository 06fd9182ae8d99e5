"""The decode step's Triton kernels, undecorated (imported only where Triton is used).

:func:`worker.kernels.loader.kernel` applies ``triton.jit`` when one is first needed: that is when Triton
decides between compiling it and running it in its interpreter (``TRITON_INTERPRET=1``). Users:
:mod:`worker.kernels.norm` and :mod:`worker.kernels.sampling`.
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


def finish_step_rows(
    logits,
    latent,
    seen,
    steps,
    pos,
    min_tokens,
    uniform,
    active,
    x,
    embedding,
    positions,
    out_latent,
    out_tokens,
    vocab,
    dim,
    last_position,
    stop_token,
    penalty,
    inverse_penalty,
    inverse_temperature,
    top_k,
    cut,
    PENALTY: tl.constexpr,
    GREEDY: tl.constexpr,
    TOP_K: tl.constexpr,
    TOP_P: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    """One row per program: :func:`worker.kernels.sampling.finish_step_torch`, the end of a decode step.

    The token choice of :func:`worker.tts.gpt.choose_tokens`; then, for an active row, the token marked
    seen, the next input embedding written and the row's step and cache length advanced; the token and
    the latent (as float32) copied out for every row.

    Top-k and top-p need no sort: each finds its cut-off by bisection over the scores' order-preserving
    integer keys (33 steps of a masked count or sum), which keeps every token tied with the cut-off, as
    top-k's ``scores < kth`` does (top-p's sort-then-scatter keeps an arbitrary part of a tie instead).
    ``cut`` is ``1 - top_p``. Dividing by the penalty and the temperature is multiplying by their float32
    reciprocals, as PyTorch does on CUDA for a tensor divided by a number.
    """
    row = tl.program_id(0).to(tl.int64)
    start = row * vocab
    lanes = tl.arange(0, BLOCK)
    inside = lanes < vocab
    scores = tl.load(logits + start + lanes, mask=inside, other=float("-inf")).to(tl.float32)
    if PENALTY:
        hit = tl.load(seen + start + lanes, mask=inside, other=0) != 0
        penalised = tl.where(scores < 0, scores * penalty, scores * inverse_penalty)
        scores = tl.where(hit, penalised, scores)
    step = tl.load(steps + row)
    early = step < tl.load(min_tokens + row)
    scores = tl.where((lanes == stop_token) & early, float("-inf"), scores)  # no stopping before min_tokens
    best = tl.argmax(scores, axis=0, tie_break_left=True)
    token = best.to(tl.int64)
    if not GREEDY:
        scores = scores * inverse_temperature
        if TOP_K or TOP_P:
            bits = scores.to(tl.int32, bitcast=True)
            key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)  # ordered as the floats are
        if TOP_K:
            # The k-th largest score's key: the largest K with at least top_k keys >= K.
            low = tl.min(key, axis=0)
            high = tl.max(key, axis=0)
            for _ in range(33):
                middle = (low + high + 1) // 2
                enough = tl.sum((key >= middle).to(tl.int32), axis=0) >= top_k
                low = tl.where(enough, middle, low)
                high = tl.where(enough, high, middle - 1)
            scores = tl.where(key < low, float("-inf"), scores)
        if TOP_P:
            weights = tl.exp(scores - tl.max(scores, axis=0))
            weights = weights / tl.sum(weights, axis=0)
            # The smallest K whose keys <= K hold more than `cut` of the mass (at most the top key: the
            # likeliest token is always kept); every key below it is dropped.
            low = tl.min(key, axis=0) - 1
            high = tl.max(key, axis=0)
            for _ in range(33):
                middle = (low + high) // 2
                over = tl.sum(tl.where(key <= middle, weights, 0.0), axis=0) > cut
                high = tl.where(over, middle, high)
                low = tl.where(over, low, middle)
            scores = tl.where(key < high, float("-inf"), scores)
        weights = tl.exp(scores - tl.max(scores, axis=0))
        cdf = tl.cumsum(weights / tl.sum(weights, axis=0), axis=0)
        target = tl.load(uniform + row) * tl.sum(tl.where(lanes == vocab - 1, cdf, 0.0), axis=0)
        index = tl.sum(((cdf <= target) & inside).to(tl.int64), axis=0)
        # Rounding can put the target at the very top of the distribution: take the likeliest token then.
        token = tl.where(index < vocab, index, token)
    tl.store(out_tokens + row, token)
    cols = tl.arange(0, BLOCK_DIM)
    within = cols < dim
    out = row * dim + cols
    tl.store(out_latent + out, tl.load(latent + out, mask=within).to(tl.float32), mask=within)
    on = tl.load(active + row) != 0
    tl.store(seen + start + token, 1, mask=on)
    # The next input: the token's embedding plus that of its audio position (the table's last row beyond).
    where = tl.minimum(step + 1, last_position)
    found = tl.load(embedding + token * dim + cols, mask=within)
    placed = tl.load(positions + where * dim + cols, mask=within)
    tl.store(x + out, (found.to(tl.float32) + placed.to(tl.float32)).to(found.dtype), mask=within & on)
    tl.store(steps + row, step + on.to(tl.int64))
    tl.store(pos + row, tl.load(pos + row) + on.to(tl.int64))


def decode_attention_rows(
    qkv,
    cache,
    pos,
    out,
    layer,
    length,
    max_positions,
    layers,
    heads,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One (row, head) per program: the step's new key and value written to the cache, then attention.

    ``qkv`` is ``[B, 3, heads, HEAD_DIM]`` (the layer's query, key and value projection), ``cache`` the
    decoder's ``[capacity, layers, 2, heads, max_positions, HEAD_DIM]`` KV cache, ``pos`` each row's cache
    length (where it writes, kept below ``length``), ``out`` ``[B, heads, HEAD_DIM]``. The query attends
    to positions ``0 .. write``, the new key included, with an online softmax in float32.
    """
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    dims = tl.arange(0, HEAD_DIM)
    width = heads * HEAD_DIM
    source = qkv + row * 3 * width + head * HEAD_DIM + dims
    q = tl.load(source).to(tl.float32)
    new_key = tl.load(source + width)
    new_value = tl.load(source + 2 * width)
    write = tl.minimum(tl.load(pos + row), length - 1)
    keys = cache + ((row * layers + layer) * 2 * heads + head) * max_positions * HEAD_DIM
    values = keys + heads * max_positions * HEAD_DIM
    tl.store(keys + write * HEAD_DIM + dims, new_key)
    tl.store(values + write * HEAD_DIM + dims, new_value)
    top = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)  # running maximum of the scores
    total = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)  # running sum of exp(score - top)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    start = 0
    while start <= write:  # up to the row's own position: blocks beyond it would add nothing
        places = start + tl.arange(0, BLOCK_N)
        visible = places <= write
        here = (places == write)[:, None]  # the new key and value come from registers, not the cache
        offsets = places[:, None] * HEAD_DIM + dims[None, :]
        k = tl.where(here, new_key[None, :], tl.load(keys + offsets, mask=visible[:, None], other=0.0))
        scores = tl.where(visible, tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale, float("-inf"))
        higher = tl.maximum(top, tl.max(scores, axis=0))
        weights = tl.exp(scores - higher)
        fade = tl.exp(top - higher)
        v = tl.where(here, new_value[None, :], tl.load(values + offsets, mask=visible[:, None], other=0.0))
        acc = acc * fade + tl.sum(weights[:, None] * v.to(tl.float32), axis=0)
        total = total * fade + tl.sum(weights, axis=0)
        top = higher
        start += BLOCK_N
    tl.store(out + (row * heads + head) * HEAD_DIM + dims, (acc / total).to(new_value.dtype))
