"""Batched XTTS-v2 GPT decoding over a static KV cache: many sentences advance one token per forward.

:class:`BatchDecoder` keeps one row per sequence, and each row sees exactly what it would see alone; the step
and the prefill touch only static buffers, so :mod:`worker.batching.graphs` can capture them.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from worker.kernels.attention import BLOCK_POSITIONS, decode_attention
from worker.kernels.attention import works_for as fused_attention_works
from worker.kernels.norm import add_layer_norm
from worker.kernels.norm import works_for as fused_norm_works
from worker.kernels.sampling import StepRows, finish_step, finish_step_torch, next_input
from worker.kernels.sampling import works_for as fused_sampling_works
from worker.tts.gpt import SamplingParams, choose_tokens, initial_seen
from worker.tts.transfer import copy_to

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from TTS.tts.layers.xtts.gpt import GPT

    from core.engine_settings import AutoOnOff

LENGTH_BUCKET_MIN = 128  # positions: the smallest cache window a captured step attends over
PREFILL_WIDTH_MIN = 64  # positions: the narrowest captured prefill (a sentence's prefix is 35+ positions)
PREFILL_ROWS = 4  # rows one prefill runs at most with graphs; more joiners at one step take several


class Replayable(Protocol):
    """A captured decode step (``torch.cuda.CUDAGraph``, see :mod:`worker.batching.graphs`)."""

    def replay(self) -> None: ...


@dataclass(frozen=True)
class StepResult:
    """What one prefill or decode step produced, for the rows it covered (in the order given)."""

    latents: torch.Tensor  # [rows, D] float32 GPT latents, what HiFi-GAN consumes
    tokens: list[int]  # the audio token each row chose (the stop token ends a sentence)


@dataclass(frozen=True)
class PendingStep:
    """A decode step that was launched and may still be running (:meth:`BatchDecoder.launch`).

    Its outputs were copied as soon as it ran (in stream order), so later steps do not overwrite them:
    the latents stay on the device, the tokens come to pinned host memory, and :attr:`done` (CUDA) marks
    when they are there.
    """

    latents: torch.Tensor  # [rows, D] float32, on the device
    tokens: torch.Tensor  # [rows] int64, on the host
    done: torch.cuda.Event | None = None  # None: computed synchronously (CPU)

    def result(self) -> StepResult:
        """The step's outputs, waiting for the device if it is still running."""
        if self.done is not None:
            self.done.synchronize()
        return StepResult(self.latents, self.tokens.tolist())


def fused_activation(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``act`` as one fused op where that is the same function: GPT-2's ``gelu_new`` is tanh-GELU.

    Hugging Face's ``NewGELUActivation`` writes tanh-GELU as eight elementwise ops (eight kernels per
    layer on a GPU); ``F.gelu(approximate="tanh")`` computes the same formula in one. Checked on a probe
    range rather than by class name, so any other activation is kept as it is.
    """
    probe = torch.linspace(-8.0, 8.0, 4001)
    fused = functools.partial(F.gelu, approximate="tanh")
    with torch.inference_mode():
        same = torch.allclose(act(probe), fused(probe), rtol=1e-5, atol=1e-6)
    return fused if same else act


def gelu_epilogue(linear: Any, act: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether ``act(linear(x))`` can be one GEMM with cuBLASLt's bias + GELU epilogue, as the same function.

    ``torch._addmm_activation(bias, x, weight, use_gelu=True)`` is one kernel on CUDA where cuBLASLt takes
    the call (two or more rows): the bias and a tanh-GELU are applied as the GEMM writes its output,
    instead of a second kernel per MLP (30 per decode step). Where cuBLASLt does not take it (one row),
    PyTorch runs the GEMM and then a tanh-GELU, which is what the two ops do anyway. On the CPU the same
    op computes the exact (erf) GELU, which is not GPT-2's ``gelu_new``; hence probes on the linear's own
    device rather than a rule: the op against ``act`` on pre-activations where tanh- and erf-GELU differ
    most (up to ~5e-4, float32), and the op on the linear's weights against the two ops in its dtype
    (GPT-2's ``Conv1D`` layout: ``weight`` is [in, out]).
    """
    fused = getattr(torch, "_addmm_activation", None)
    weight, bias = getattr(linear, "weight", None), getattr(linear, "bias", None)
    if fused is None or not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        return False
    if weight.dim() != 2 or bias.shape != (weight.shape[1],):
        return False
    device = weight.device
    try:
        with torch.inference_mode():
            pre = torch.linspace(-6.0, 6.0, 256, device=device)
            probe = fused(
                pre, torch.zeros(2, 8, device=device), torch.ones(8, 256, device=device), use_gelu=True
            )
            if not torch.allclose(probe, act(pre).expand(2, -1), rtol=0.0, atol=1e-4):
                return False
            x = torch.randn(2, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(
                device, weight.dtype
            )
            got = fused(bias, x, weight, use_gelu=True).float()
            want = act(linear(x)).float()
    except (RuntimeError, TypeError):  # an op this build or device lacks: keep the two ops
        return False
    scale = float(want.abs().max()) + 1e-3
    return got.shape == want.shape and float((got - want).abs().max()) <= 1e-2 * scale


def attention_choice(
    device: torch.device, agrees: Callable[[], bool], mode: AutoOnOff = "auto"
) -> tuple[bool, bool]:
    """(the fused attention in every step, timed against PyTorch's per captured shape) for a decoder on
    ``device``, by ``mode`` (``VOXCLONE_FUSED_ATTENTION``, see :mod:`worker.kernels.attention`); ``agrees``
    is the probe, asked only on CUDA and unless switched off."""
    wanted = mode if device.type == "cuda" else "off"
    if wanted == "off" or not agrees():
        return False, False
    return wanted == "on", wanted == "auto"


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
        fused_norm: bool | None = None,
        fused_sampling: bool | None = None,
        fused_attention: bool | None = None,
        timed_attention: bool | None = None,
        attention_mode: AutoOnOff = "auto",
    ) -> None:
        """``fused_*`` None: the Triton kernel where its probe on the device agrees (CUDA only); the
        attention then by ``attention_mode`` (``VOXCLONE_FUSED_ATTENTION``: timed, always or never)."""
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
        self.activation = fused_activation(gpt.gpt.h[0].mlp.act)
        self.gelu_epilogue = gelu_epilogue(self.blocks[0].mlp.c_fc, self.activation)
        # Each residual add and the LayerNorm after it as one kernel (Triton): by default where a probe on
        # the device agrees, which is only ever on CUDA (on the CPU Triton runs only in its interpreter).
        if fused_norm is None:
            fused_norm = self.device.type == "cuda" and fused_norm_works(self.blocks[0].ln_2)
        self.fused_norm = fused_norm
        # Likewise the end of the step (the token choice and the rows' bookkeeping) as one kernel (Triton)
        # instead of ~40 ops.
        if fused_sampling is None:
            fused_sampling = self.device.type == "cuda" and fused_sampling_works(
                params,
                vocab=self.vocab,
                dim=self.dim,
                positions=self.mel_pos.shape[0],
                stop_token=self.stop_token,
                device=self.device,
                dtype=dtype,
            )
        self.fused_sampling = fused_sampling
        # Each layer's cache write and attention as one kernel (Triton), where the probe agrees: for every
        # step with VOXCLONE_FUSED_ATTENTION=on; by default (auto) in the captured steps where it times
        # faster than PyTorch's attention (worker.batching.graphs.capture_steps), and not in eager steps.
        if fused_attention is None:
            fused_attention, timed = attention_choice(
                self.device,
                lambda: fused_attention_works(
                    heads=self.heads, head_dim=self.head_dim, device=self.device, dtype=dtype
                ),
                attention_mode,
            )
            timed_attention = timed if timed_attention is None else timed_attention
        self.fused_attention = fused_attention  # what an uncaptured (eager) step uses
        self.timed_attention = bool(timed_attention)  # capture_steps: time the ways, keep the fastest
        # Per captured (batch, length): the attention its graph uses (0: PyTorch's, else the fused kernel's
        # block size), and with timed attention the replay times measured in ms: PyTorch's, then the fused
        # kernel's with each of fused_attention.BLOCKS.
        self.attention_at: dict[tuple[int, int], int] = {}
        self.attention_ms: dict[tuple[int, int], tuple[float, ...]] = {}
        self.batch_sizes = buckets(capacity)  # rows a step runs at (with graphs, the covering bucket)
        self.lengths = buckets(max_positions, min(LENGTH_BUCKET_MIN, max_positions))
        shape = (capacity, self.layers, 2, self.heads, max_positions, self.head_dim)
        dev = self.device
        self.kv = torch.zeros(shape, dtype=dtype, device=dev)
        # The cache as rows of head_dim values. Offsets of (layer, K/V, head) within a slot: a step adds
        # each row's slot and write position once, then every layer writes its new K and V with one
        # index_put_ (graph-safe, no host sync, no per-layer index arithmetic).
        self._kv_rows = self.kv.view(-1, self.head_dim)
        self._stride_slot = self.layers * 2 * self.heads * max_positions
        per_kv = self.heads * max_positions
        heads = torch.arange(self.heads, device=dev) * max_positions
        kv_heads = torch.arange(2, device=dev)[:, None] * per_kv + heads  # [2, H]
        self._write_offsets = torch.arange(self.layers, device=dev)[:, None, None] * (2 * per_kv) + kv_heads
        self._open = torch.zeros((), dtype=dtype, device=dev)  # attention bias of a visible position
        self._closed = torch.full((), -torch.inf, dtype=dtype, device=dev)  # and of a masked one
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
        # Prefill staging: joiners' prefixes, slots and first-step state, so a prefill reads only static
        # buffers too (with graphs, one captured prefill per (rows, width) bucket).
        self.prefill_group = min(capacity, PREFILL_ROWS)  # rows per captured prefill
        self.prefill_widths = buckets(max_positions, min(PREFILL_WIDTH_MIN, max_positions))
        self._stage_rows(self.prefill_group)
        self.rows = 0
        self._pos_host = [0] * capacity
        self.replay: dict[tuple[int, int], Replayable] = {}  # (batch, length) → captured step
        self.prefill_replay: dict[tuple[int, int], Replayable] = {}  # (rows, width) → captured prefill

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
        """Run each slot's prefix (``[1, P, D]``) and choose its first audio token.

        Eagerly all joiners go in one padded forward; with captured prefills they go
        :attr:`prefill_group` at a time, each group at its (rows, width) bucket.
        """
        sizes = [int(p.shape[1]) for p in prefixes]
        if max(sizes) > self.max_positions:
            raise ValueError(
                f"a prefix of {max(sizes)} positions does not fit the cache of {self.max_positions}"
            )
        graphs = bool(self.prefill_replay)
        group = self.prefill_group if graphs else len(slots)
        latents: list[torch.Tensor] = []
        tokens: list[int] = []
        for first in range(0, len(slots), group):
            part = range(first, min(first + group, len(slots)))
            if len(part) > self.px.shape[0]:  # eager, with more joiners than the staging buffers hold
                self._stage_rows(len(part))
            width = max(sizes[i] for i in part)
            if graphs:
                width = bucket_for(width, self.prefill_widths)
            rows = len(part)
            self.px[:rows, :width].zero_()
            for row, i in enumerate(part):
                self.px[row, : sizes[i]] = prefixes[i][0].to(self.dtype)
            for buf, values in (
                (self.p_slots, [slots[i] for i in part]),
                (self.p_sizes, [sizes[i] for i in part]),
                (self.p_min_tokens, [min_tokens[i] for i in part]),
            ):
                copy_to(buf[:rows], torch.tensor(values, dtype=torch.long))
            copy_to(self.p_uniform[:rows], torch.tensor([uniforms[i] for i in part], dtype=torch.float32))
            captured = self.prefill_replay.get((rows, width)) if graphs else None
            if captured is not None:
                captured.replay()
            else:
                self.run_prefill(rows, width)
            latents.append(self.p_latent[:rows].clone())
            tokens += self.p_tokens[:rows].tolist()
        for slot, size in zip(slots, sizes, strict=True):
            self._pos_host[slot] = size
        return StepResult(torch.cat(latents), tokens)

    def run_prefill(self, rows: int, width: int) -> None:
        """Prefill the ``rows`` staged prefixes (``px``, zero-padded to ``width``) into their cache slots.

        Like :meth:`run_step`, static buffers only and no host synchronisation. Attention is causal, so a
        row's real positions never see its right padding; the padding's keys land beyond the row's length,
        where decode steps mask them until they overwrite them.
        """
        index = self.p_slots[:rows]
        sizes = self.p_sizes[:rows]
        h = self.px[:rows, :width]
        normed = self.blocks[0].ln_1(h)
        for layer, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, normed)  # [n, H, P, d]
            self.kv[index, layer, 0, :, :width] = k
            self.kv[index, layer, 1, :, :width] = v
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
            h, normed = self._finish_block(layer, h, attended)
        latent = self.final_norm(normed[self.arange[:rows], sizes - 1])
        fresh = self._fresh_seen[:rows]
        self.steps.index_fill_(0, index, 0)  # a fill, not a copy of a host scalar: capturable
        self.min_tokens[index] = self.p_min_tokens[:rows]
        self.pos[index] = sizes
        logits = self.mel_head(latent)
        tokens = choose_tokens(
            logits, fresh, self.steps[index], self.p_min_tokens[:rows], self.p_uniform[:rows], self.params,
            stop_token=self.stop_token,
        )  # fmt: skip
        self.seen[index] = fresh.scatter(1, tokens[:, None], True)
        self.steps.index_fill_(0, index, 1)
        self.x[index] = next_input(self.mel_embedding.weight, self.mel_pos, tokens, self.steps[index])
        self.p_latent[:rows] = latent.float()
        self.p_tokens[:rows] = tokens

    def _stage_rows(self, rows: int) -> None:
        """(Re)allocate the prefill staging buffers for ``rows`` joiners at once."""
        dev, n = self.device, rows
        self.px = torch.zeros(n, self.max_positions, self.dim, dtype=self.dtype, device=dev)
        self.p_slots = torch.zeros(n, dtype=torch.long, device=dev)
        self.p_sizes = torch.ones(n, dtype=torch.long, device=dev)
        self.p_min_tokens = torch.zeros(n, dtype=torch.long, device=dev)
        self.p_uniform = torch.zeros(n, dtype=torch.float32, device=dev)
        self.p_latent = torch.zeros(n, self.dim, dtype=torch.float32, device=dev)
        self.p_tokens = torch.zeros(n, dtype=torch.long, device=dev)
        self._fresh_seen = initial_seen(self.gpt, n, dev)

    # ----- decode ------------------------------------------------------------------------------------

    def shape_for_step(self, graphs: bool) -> tuple[int, int]:
        """(batch, cache length) the next step runs at: exact when eager, the covering bucket for graphs."""
        rows = self.rows
        length = max(self._pos_host[:rows]) + 1
        if not graphs:
            return rows, length
        return bucket_for(rows, self.batch_sizes), bucket_for(length, self.lengths)

    def step(self, active: Sequence[bool], uniforms: Sequence[float]) -> StepResult:
        """One token for every occupied row whose ``active`` is True; inactive rows stay where they are."""
        return self.launch(active, uniforms).result()

    @torch.inference_mode()
    def launch(self, active: Sequence[bool], uniforms: Sequence[float]) -> PendingStep:
        """:meth:`step` without waiting for it: on CUDA the host goes on while the device runs it.

        Nothing here waits for the device (the inputs go over in queued copies), so a step can be launched
        while the previous one still runs. The next step, a prefill or a :meth:`release` may follow before
        :meth:`PendingStep.result`: each runs after this one, in stream order, and this step's outputs were
        copied aside first. The host's cache lengths count this step at once.
        """
        rows = self.rows
        if rows == 0 or len(active) != rows or len(uniforms) != rows:
            raise ValueError("step needs one active flag and one uniform per occupied row")
        copy_to(self.active[:rows], torch.tensor(list(active), dtype=torch.bool))
        copy_to(self.uniform[:rows], torch.tensor(list(uniforms), dtype=torch.float32))
        shape = self.shape_for_step(graphs=bool(self.replay))
        self.active[rows : shape[0]] = False  # padding rows of a bucket are computed, never advanced
        captured = self.replay.get(shape)
        if captured is not None:
            captured.replay()
        else:
            self.run_step(*shape)
        for slot, on in enumerate(active):
            self._pos_host[slot] += int(on)
        latents = self.out_latent[:rows].clone()
        if self.device.type != "cuda":
            return PendingStep(latents, self.out_tokens[:rows].clone())
        tokens = torch.empty(rows, dtype=torch.long, pin_memory=True)
        tokens.copy_(self.out_tokens[:rows], non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PendingStep(latents, tokens, done)

    def run_step(self, batch: int, length: int, attention: int | None = None) -> None:
        """The decode step over slots ``[0, batch)`` attending to ``length`` cache positions.

        Reads and writes static buffers only, with no host synchronisation: safe to capture in a graph.
        Kept to few kernels (11 ops per layer, 8 on CUDA; a CUDA graph of it costs about a fixed gap per
        kernel): the attention mask is built once as an additive bias, each layer writes its K and V with
        one ``index_put_`` at offsets worked out once per step, the MLP's tanh-GELU is one fused op, on
        CUDA part of its first GEMM (:func:`gelu_epilogue`), and on CUDA each residual add is one kernel
        with the LayerNorm after it (:mod:`worker.kernels.norm`) and the step's end, from the logits to the
        rows' bookkeeping, one kernel (:mod:`worker.kernels.sampling`). ``attention``: 0 for PyTorch's; a
        block size for each layer's cache write and attention as one kernel with blocks of that many
        positions, with no mask to build (:mod:`worker.kernels.attention`); by default as
        :attr:`fused_attention` says.
        """
        pos = self.pos[:batch]
        if attention is None:
            attention = BLOCK_POSITIONS if self.fused_attention else 0
        attend = self._fused_attend(pos, length, attention) if attention else self._attend(batch, length, pos)
        h = self.x[:batch].unsqueeze(1)
        normed = self.blocks[0].ln_1(h)
        for layer, block in enumerate(self.blocks):
            qkv = block.attn.c_attn(normed).view(batch, 3, self.heads, self.head_dim)
            h, normed = self._finish_block(layer, h, attend(layer, qkv))
        latent = self.final_norm(normed[:, 0])
        logits = self.mel_head(latent)
        finish = finish_step if self.fused_sampling else finish_step_torch
        finish(logits, latent, self._step_rows(batch), self.params, stop_token=self.stop_token)

    def _step_rows(self, batch: int) -> StepRows:
        """The buffers the end of a step reads and writes, over slots ``[0, batch)``."""
        return StepRows(
            seen=self.seen[:batch],
            steps=self.steps[:batch],
            pos=self.pos[:batch],
            min_tokens=self.min_tokens[:batch],
            uniform=self.uniform[:batch],
            active=self.active[:batch],
            x=self.x[:batch],
            out_latent=self.out_latent[:batch],
            out_tokens=self.out_tokens[:batch],
            embedding=self.mel_embedding.weight,
            positions=self.mel_pos,
        )

    # ----- pieces ------------------------------------------------------------------------------------

    def _attend(
        self, batch: int, length: int, pos: torch.Tensor
    ) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """A step's attention in PyTorch's ops: ``(layer, qkv [B, 3, H, d]) -> [B, H, 1, d]``, writing the new
        keys and values into the cache first."""
        write = pos.clamp(max=length - 1)
        visible = self.arange[:length] <= write[:, None]
        bias = torch.where(visible, self._open, self._closed).view(batch, 1, 1, length)
        # Flat cache rows of (layer, slot, K/V, head) at each slot's write position: [layers, B, 2, H].
        slot_rows = self.arange[:batch] * self._stride_slot + write
        rows = self._write_offsets[:, None] + slot_rows[None, :, None, None]

        def attention(layer: int, qkv: torch.Tensor) -> torch.Tensor:
            self._kv_rows.index_put_((rows[layer],), qkv[:, 1:])
            q = qkv[:, 0].unsqueeze(2)  # [B, H, 1, d]
            keys = self.kv[:batch, layer, 0, :, :length]
            values = self.kv[:batch, layer, 1, :, :length]
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=self.scaling)

        return attention

    def _fused_attend(
        self, pos: torch.Tensor, length: int, block: int
    ) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """:meth:`_attend` as one kernel per layer (:mod:`worker.kernels.attention`, ``block`` positions per
        loop iteration); no mask to build."""

        def attention(layer: int, qkv: torch.Tensor) -> torch.Tensor:
            return decode_attention(
                qkv, self.kv, pos, layer=layer, length=length, scale=self.scaling, block=block
            )

        return attention

    def _qkv(self, block: Any, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, t, _ = normed.shape
        qkv = block.attn.c_attn(normed).view(n, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _finish_block(
        self, layer: int, h: torch.Tensor, attended: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rest of block ``layer`` after attention: its new residual stream and the next block's input.

        That input is the next block's ``ln_1`` of the residual; after the last block, its ``ln_f``.
        """
        block = self.blocks[layer]
        n, t, _ = h.shape
        h, x = self._add_norm(
            h, block.attn.c_proj(attended.transpose(1, 2).reshape(n, t, self.dim)), block.ln_2
        )
        mlp = block.mlp  # GPT-2's MLP without its dropout (a no-op here), with the activation fused
        if self.gelu_epilogue:  # one kernel instead of two (see gelu_epilogue)
            inner = torch._addmm_activation(
                mlp.c_fc.bias, x.view(n * t, self.dim), mlp.c_fc.weight, use_gelu=True
            )
            x = inner.view(n, t, -1)
        else:
            x = self.activation(mlp.c_fc(x))
        last = layer + 1 == len(self.blocks)
        return self._add_norm(h, mlp.c_proj(x), self.ln_f if last else self.blocks[layer + 1].ln_1)

    def _add_norm(self, h: torch.Tensor, delta: torch.Tensor, norm: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``h + delta`` and its normalisation by ``norm``: one kernel where :attr:`fused_norm` is on."""
        if self.fused_norm:
            return add_layer_norm(h, delta, norm)
        h = h + delta
        return h, norm(h)
