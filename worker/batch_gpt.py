"""Batched XTTS-v2 GPT decoding over a static KV cache: many sentences advance one token per forward.

:class:`BatchDecoder` owns a preallocated cache with one row ("slot") per sequence and the per-row
decoding state on the device (next input embedding, cache length, tokens so far, repetition history,
``min_tokens``). Rows join with :meth:`~BatchDecoder.prefill` (their conditioning + text prefix, several
joiners in one padded forward) and leave with :meth:`~BatchDecoder.release`, which moves the last row
into the hole so that occupied slots stay ``0 .. rows-1``. :meth:`~BatchDecoder.step` runs one decode
step for every occupied row; a row marked inactive (its listener is behind) is computed but not advanced.

Each row sees exactly what it would see alone: attention is masked to its own cache length, sampling is
row-wise (:func:`worker.xtts_gpt.choose_tokens`) with the row's own uniform draw, and XTTS's GPT has no
position embedding of its own (coqui replaces GPT-2's with zeros), so a row's absolute slot and padding
change nothing. The step touches only static buffers and takes no host decision, which lets
:mod:`worker.batch_graphs` capture it in a CUDA graph per (batch, length) bucket.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from worker.xtts_gpt import SamplingParams, choose_tokens, initial_seen

if TYPE_CHECKING:
    from collections.abc import Sequence

    from TTS.tts.layers.xtts.gpt import GPT

LENGTH_BUCKET_MIN = 128  # positions: the smallest cache window a captured step attends over


class Replayable(Protocol):
    """A captured decode step (``torch.cuda.CUDAGraph``, see :mod:`worker.batch_graphs`)."""

    def replay(self) -> None: ...


@dataclass(frozen=True)
class StepResult:
    """What one prefill or decode step produced, for the rows it covered (in the order given)."""

    latents: torch.Tensor  # [rows, D] float32 GPT latents, what HiFi-GAN consumes
    tokens: list[int]  # the audio token each row chose (the stop token ends a sentence)


def buckets(limit: int, smallest: int = 1) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``limit``, then ``limit`` itself: the shapes graphs exist for."""
    sizes, size = [], smallest
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)


def bucket_for(value: int, sizes: Sequence[int]) -> int:
    """The smallest bucket that holds ``value``."""
    for size in sizes:
        if size >= value:
            return size
    raise ValueError(f"{value} is larger than the largest bucket {sizes[-1]}")


class BatchDecoder:
    """The GPT of one XTTS model decoding up to ``capacity`` sequences together."""

    def __init__(
        self,
        gpt: GPT,
        params: SamplingParams,
        *,
        capacity: int,
        max_positions: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.params = params
        self.capacity = capacity
        self.max_positions = max_positions
        self.device = torch.device(device)
        self.dtype = dtype
        self.stop_token = gpt.stop_audio_token
        self.gpt = gpt  # for initial_seen; the modules below may be a reduced-precision copy
        modules = torch.nn.ModuleDict(
            {
                "blocks": gpt.gpt.h,
                "ln_f": gpt.gpt.ln_f,
                "final_norm": gpt.final_norm,
                "mel_head": gpt.mel_head,
                "mel_embedding": gpt.mel_embedding,
                "mel_pos": gpt.mel_pos_embedding.emb,
            }
        )
        if dtype != gpt.final_norm.weight.dtype:
            modules = copy.deepcopy(modules).to(dtype)
        self.blocks: list[Any] = list(modules["blocks"])  # type: ignore[call-overload]
        self.ln_f: Any = modules["ln_f"]
        self.final_norm: Any = modules["final_norm"]
        self.mel_head: Any = modules["mel_head"]
        self.mel_embedding: Any = modules["mel_embedding"]
        self.mel_pos: torch.Tensor = modules["mel_pos"].weight  # type: ignore[assignment]
        first = gpt.gpt.h[0].attn
        self.layers, self.heads, self.head_dim = len(gpt.gpt.h), first.num_heads, first.head_dim
        self.dim, self.vocab = gpt.model_dim, gpt.num_audio_tokens
        self.scaling = float(first.scaling)
        self.batch_sizes = buckets(capacity)
        self.lengths = buckets(max_positions, min(LENGTH_BUCKET_MIN, max_positions))
        shape = (capacity, self.layers, 2, self.heads, max_positions, self.head_dim)
        dev = self.device
        self.kv = torch.zeros(shape, dtype=dtype, device=dev)
        # The cache as rows of head_dim values: a step writes each row's new K/V with one index_copy_
        # (graph-safe, no host sync) at offsets computed on the device.
        self._kv_rows = self.kv.view(-1, self.head_dim)
        self._stride_slot = self.layers * 2 * self.heads * max_positions
        self._head_offsets = torch.arange(self.heads, device=dev) * max_positions
        self.x = torch.zeros(capacity, self.dim, dtype=dtype, device=dev)  # next input embedding
        self.pos = torch.zeros(capacity, dtype=torch.long, device=dev)  # cache length = write position
        self.steps = torch.zeros(capacity, dtype=torch.long, device=dev)  # audio tokens generated
        self.min_tokens = torch.zeros(capacity, dtype=torch.long, device=dev)
        self.seen = torch.zeros(capacity, self.vocab, dtype=torch.bool, device=dev)
        self.uniform = torch.zeros(capacity, dtype=torch.float32, device=dev)
        self.active = torch.zeros(capacity, dtype=torch.bool, device=dev)
        self.out_latent = torch.zeros(capacity, self.dim, dtype=torch.float32, device=dev)
        self.out_tokens = torch.zeros(capacity, dtype=torch.long, device=dev)
        self.arange = torch.arange(max(capacity, max_positions), device=dev)
        self.rows = 0
        self._pos_host = [0] * capacity
        self.replay: dict[tuple[int, int], Replayable] = {}  # (batch, length) → captured step

    @property
    def kv_bytes_per_slot(self) -> int:
        """Bytes of KV cache one concurrent stream holds (preallocated for ``capacity`` streams)."""
        return self.kv[0].numel() * self.kv.element_size()

    # ----- rows --------------------------------------------------------------------------------------

    def claim(self) -> int:
        """A free slot for a new sequence (then :meth:`prefill` it)."""
        if self.rows >= self.capacity:
            raise RuntimeError("the batch is full")
        self.rows += 1
        return self.rows - 1

    def release(self, slot: int) -> int | None:
        """Free ``slot``; the last row moves into it. Returns the moved row's old slot, if one moved."""
        last = self.rows - 1
        moved = None
        if slot != last:
            length = self._pos_host[last] + 1
            self.kv[slot, :, :, :, :length].copy_(self.kv[last, :, :, :, :length])
            for buf in (self.x, self.pos, self.steps, self.min_tokens, self.seen):
                buf[slot].copy_(buf[last])
            self._pos_host[slot] = self._pos_host[last]
            moved = last
        self.pos[last] = 0
        self._pos_host[last] = 0
        self.rows -= 1
        return moved

    # ----- prefill -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(
        self,
        slots: Sequence[int],
        prefixes: Sequence[torch.Tensor],
        min_tokens: Sequence[int],
        uniforms: Sequence[float],
    ) -> StepResult:
        """Run each slot's prefix (``[1, P, D]``) and choose its first audio token, all in one forward."""
        count = len(slots)
        sizes = [int(p.shape[1]) for p in prefixes]
        width = max(sizes)
        if width > self.max_positions:
            raise ValueError(f"a prefix of {width} positions does not fit the cache ({self.max_positions})")
        x = torch.zeros(count, width, self.dim, dtype=self.dtype, device=self.device)
        for i, prefix in enumerate(prefixes):
            x[i, : sizes[i]] = prefix[0].to(self.dtype)
        index = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        h = x
        for layer, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, h)  # [n, H, P, d]
            self.kv[index, layer, 0, :, :width] = k
            self.kv[index, layer, 1, :, :width] = v
            # Causal attention within the prefix: a row's real positions never see its right padding.
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
            h = self._finish_block(block, h, attended)
        last = torch.tensor([s - 1 for s in sizes], device=self.device)
        latent = self.final_norm(self.ln_f(h[torch.arange(count, device=self.device), last]))
        self.seen[index] = initial_seen(self.gpt, count, self.device)
        self.steps[index] = 0
        self.min_tokens[index] = torch.tensor(list(min_tokens), device=self.device)
        self.pos[index] = torch.tensor(sizes, device=self.device)
        for slot, size in zip(slots, sizes, strict=True):
            self._pos_host[slot] = size
        u = torch.tensor(list(uniforms), dtype=torch.float32, device=self.device)
        logits = self.mel_head(latent)
        tokens = choose_tokens(
            logits, self.seen[index], self.steps[index], self.min_tokens[index], u, self.params,
            stop_token=self.stop_token,
        )  # fmt: skip
        self.seen[index] = self.seen[index].scatter(1, tokens[:, None], True)
        self.steps[index] = 1
        self.x[index] = self._next_input(tokens, self.steps[index])
        return StepResult(latent.float(), tokens.tolist())

    # ----- decode ------------------------------------------------------------------------------------

    def shape_for_step(self, graphs: bool) -> tuple[int, int]:
        """(batch, cache length) the next step runs at: exact when eager, the covering bucket for graphs."""
        rows = self.rows
        length = max(self._pos_host[:rows]) + 1
        if not graphs:
            return rows, length
        return bucket_for(rows, self.batch_sizes), bucket_for(length, self.lengths)

    @torch.inference_mode()
    def step(self, active: Sequence[bool], uniforms: Sequence[float]) -> StepResult:
        """One token for every occupied row whose ``active`` is True; inactive rows stay where they are."""
        rows = self.rows
        if rows == 0 or len(active) != rows or len(uniforms) != rows:
            raise ValueError("step needs one active flag and one uniform per occupied row")
        self.active[:rows].copy_(torch.tensor(list(active), dtype=torch.bool))
        self.uniform[:rows].copy_(torch.tensor(list(uniforms), dtype=torch.float32))
        shape = self.shape_for_step(graphs=bool(self.replay))
        self.active[rows : shape[0]] = False  # padding rows of a bucket are computed, never advanced
        captured = self.replay.get(shape)
        if captured is not None:
            captured.replay()
        else:
            self.run_step(*shape)
        for slot, on in enumerate(active):
            self._pos_host[slot] += int(on)
        return StepResult(self.out_latent[:rows].clone(), self.out_tokens[:rows].tolist())

    def run_step(self, batch: int, length: int) -> None:
        """The decode step over slots ``[0, batch)`` attending to ``length`` cache positions.

        Reads and writes static buffers only, with no host synchronisation: safe to capture in a graph.
        """
        pos = self.pos[:batch]
        active = self.active[:batch]
        write = pos.clamp(max=length - 1)
        mask = (self.arange[:length] <= write[:, None]).view(batch, 1, 1, length)
        # Flat cache row of (slot, layer 0, K, head, write position); + layer and K/V offsets below.
        at = (self.arange[:batch, None] * self._stride_slot + self._head_offsets + write[:, None]).view(-1)
        per_layer, per_kv = 2 * self.heads * self.max_positions, self.heads * self.max_positions
        h = self.x[:batch].unsqueeze(1)
        for layer, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, h)  # [B, H, 1, d]
            self._kv_rows.index_copy_(0, at + layer * per_layer, k.reshape(-1, self.head_dim))
            self._kv_rows.index_copy_(0, at + layer * per_layer + per_kv, v.reshape(-1, self.head_dim))
            keys = self.kv[:batch, layer, 0, :, :length]
            values = self.kv[:batch, layer, 1, :, :length]
            attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
            h = self._finish_block(block, h, attended)
        latent = self.final_norm(self.ln_f(h[:, 0]))
        logits = self.mel_head(latent)
        steps = self.steps[:batch]
        tokens = choose_tokens(
            logits, self.seen[:batch], steps, self.min_tokens[:batch], self.uniform[:batch], self.params,
            stop_token=self.stop_token,
        )  # fmt: skip
        hit = torch.zeros_like(self.seen[:batch]).scatter_(1, tokens[:, None], active[:, None])
        self.seen[:batch] |= hit
        advance = active.long()
        self.x[:batch] = torch.where(active[:, None], self._next_input(tokens, steps + 1), self.x[:batch])
        self.pos[:batch] += advance
        self.steps[:batch] += advance
        self.out_latent[:batch] = latent.float()
        self.out_tokens[:batch] = tokens

    # ----- pieces ------------------------------------------------------------------------------------

    def _qkv(self, block: Any, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, t, _ = h.shape
        qkv = block.attn.c_attn(block.ln_1(h)).view(n, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _finish_block(self, block: Any, h: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        n, t, _ = h.shape
        h = h + block.attn.c_proj(attended.transpose(1, 2).reshape(n, t, self.dim))
        return h + block.mlp(block.ln_2(h))

    def _next_input(self, tokens: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Embedding of each row's chosen token at its audio position (what the next step feeds)."""
        table = self.mel_pos
        return self.mel_embedding(tokens) + table[steps.clamp(max=table.shape[0] - 1)]
