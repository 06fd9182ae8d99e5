"""The XTTS-v2 GPT decode loop, one audio token per step, driven by our own code instead of HF ``generate``.

Each sequence keeps its own KV cache, sampling state and random draws (:class:`SequenceState`);
:func:`choose_tokens` samples in HF's order for XTTS and is shared with the batched decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from TTS.tts.layers.xtts.gpt import GPT

# compute_embeddings() feeds HF generate this placeholder id for every prefix position; HF's repetition
# penalty therefore penalises audio token 1 from the first step. Kept so that greedy output matches stock.
PREFIX_PLACEHOLDER_TOKEN = 1


@dataclass(frozen=True)
class SamplingParams:
    """How the next audio token is chosen. Defaults are the real XTTS-v2 config.json's."""

    temperature: float = 0.75
    top_k: int = 50
    top_p: float = 0.85
    repetition_penalty: float = 5.0
    greedy: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0 and not self.greedy:
            raise ValueError("temperature must be > 0 when sampling (use greedy=True for arg-max decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")


@dataclass
class SequenceState:
    """One sentence being generated: its KV cache, what to feed next and its own sampling state."""

    pending: torch.Tensor  # [1, n, D] embeddings to run through the GPT at the next step
    seen: torch.Tensor  # [1, num_audio_tokens] bool: tokens the repetition penalty applies to
    draws: UniformDraws  # the request's random numbers (the same seed gives the same draws everywhere)
    min_tokens: int
    max_tokens: int
    cache: Any = None  # transformers Cache, created by the first step
    steps: int = 0  # audio tokens generated so far (one GPT latent each)
    finished: bool = False
    stopped_by_model: bool = False  # the model chose the stop token (real weights do; random ones rarely)


def text_prefix(gpt: GPT, cond_latent: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
    """The GPT input for one sentence: voice conditioning, [START] text [STOP], then the start audio token.

    Same embeddings as ``GPT.compute_embeddings`` plus the start token's, without touching shared state.
    """
    text = torch.nn.functional.pad(text_tokens, (0, 1), value=gpt.stop_text_token)
    text = torch.nn.functional.pad(text, (1, 0), value=gpt.start_text_token)
    text_emb = gpt.text_embedding(text) + gpt.text_pos_embedding(text)
    start = torch.full((1, 1), gpt.start_audio_token, dtype=torch.long, device=text_tokens.device)
    start_emb = gpt.mel_embedding(start) + gpt.mel_pos_embedding(start)
    return torch.cat([cond_latent.to(text_emb.dtype), text_emb, start_emb], dim=1)


def initial_seen(gpt: GPT, rows: int, device: torch.device | str) -> torch.Tensor:
    """``[rows, num_audio_tokens]`` repetition state of a fresh sentence (placeholder and start token)."""
    seen = torch.zeros(rows, gpt.num_audio_tokens, dtype=torch.bool, device=device)
    seen[:, PREFIX_PLACEHOLDER_TOKEN] = True
    seen[:, gpt.start_audio_token] = True
    return seen


def new_sequence(
    gpt: GPT,
    cond_latent: torch.Tensor,
    text_tokens: torch.Tensor,
    *,
    min_tokens: int,
    max_tokens: int,
    draws: UniformDraws,
) -> SequenceState:
    """A sequence ready for its first :func:`decode_step` (which runs the whole prefix)."""
    return SequenceState(
        pending=text_prefix(gpt, cond_latent, text_tokens),
        seen=initial_seen(gpt, 1, text_tokens.device),
        draws=draws,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
    )


class UniformDraws:
    """A request's random numbers, one per sampling step, from its own CPU generator seeded with its seed.

    Drawn :attr:`BLOCK` at a time: the CPU generator fills a tensor in order, so these are the numbers
    one-by-one draws give (tested), at ~0.05 µs each instead of ~3 µs (a batch of 32 streams draws 32
    per decode step).
    """

    BLOCK = 64

    def __init__(self, seed: int) -> None:
        self._generator = torch.Generator().manual_seed(seed)  # CPU: the same draws on every device
        self._block: list[float] = []
        self._next = 0

    def next(self) -> float:
        if self._next == len(self._block):
            self._block = torch.rand(self.BLOCK, generator=self._generator).tolist()
            self._next = 0
        self._next += 1
        return self._block[self._next - 1]

    def unread(self) -> None:
        """Give the last number back: the next :meth:`next` returns it again."""
        if self._next == 0:
            raise RuntimeError("no number was drawn since the last block was made")
        self._next -= 1


def draw_uniform(draws: UniformDraws, params: SamplingParams) -> float:
    """The one uniform number a sampling step consumes (none when greedy), from the request's draws."""
    return 0.0 if params.greedy else draws.next()


def undraw_uniform(draws: UniformDraws, params: SamplingParams) -> None:
    """Undo the last :func:`draw_uniform` (a step whose token was dropped)."""
    if not params.greedy:
        draws.unread()


@torch.inference_mode()
def decode_step(gpt: GPT, state: SequenceState, params: SamplingParams) -> torch.Tensor:
    """Advance ``state`` by one audio token; return that step's GPT latent (``[D]``, final-normed).

    The latent of every step, including one that chose the stop token, is what the vocoder consumes.
    """
    if state.finished:
        raise RuntimeError("decode_step called on a finished sequence")
    out = gpt.gpt(inputs_embeds=state.pending, past_key_values=state.cache, use_cache=True, return_dict=True)
    state.cache = out.past_key_values
    latent = gpt.final_norm(out.last_hidden_state[:, -1])  # [1, D]
    logits = gpt.mel_head(latent)  # [1, num_audio_tokens]
    device = logits.device
    uniform = torch.tensor([draw_uniform(state.draws, params)], device=device)
    steps = torch.tensor([state.steps], device=device)
    min_tokens = torch.tensor([state.min_tokens], device=device)
    chosen = choose_tokens(
        logits, state.seen, steps, min_tokens, uniform, params, stop_token=gpt.stop_audio_token
    )
    state.seen.scatter_(1, chosen[:, None], True)
    token = int(chosen[0])
    state.steps += 1
    if token == gpt.stop_audio_token:
        state.finished = state.stopped_by_model = True
    elif state.steps >= state.max_tokens:
        state.finished = True
    else:
        ids = torch.tensor([[token]], device=device)
        state.pending = gpt.mel_embedding(ids) + gpt.mel_pos_embedding.get_fixed_embedding(
            state.steps, device
        )
    return latent[0]


def choose_tokens(
    logits: torch.Tensor,
    seen: torch.Tensor,
    steps: torch.Tensor,
    min_tokens: torch.Tensor,
    uniform: torch.Tensor,
    params: SamplingParams,
    *,
    stop_token: int,
) -> torch.Tensor:
    """The next token of each row (``[B]`` long) from ``[B, V]`` logits; ``seen`` is not updated here.

    Row-wise and free of host synchronisation, so a batch of sequences gives each row exactly what it
    gets alone, and the whole function can be captured in a CUDA graph. Sampling inverts the row's
    cumulative distribution at its own ``uniform`` draw (one per step, from the sequence's draws).
    """
    scores = logits.float()
    if params.repetition_penalty != 1.0:
        penalty = params.repetition_penalty
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(seen, penalised, scores)
    else:
        scores = scores.clone()
    scores[:, stop_token].masked_fill_(steps < min_tokens, -torch.inf)  # no stopping before min_tokens
    best = torch.argmax(scores, dim=-1)
    if params.greedy:
        return best
    scores = scores / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -torch.inf)
    if params.top_p < 1.0:
        scores = _top_p(scores, params.top_p)
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
    target = (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    index = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # Rounding can put the target at the very top of the distribution: take the likeliest token then.
    return torch.where(index < scores.shape[-1], index, best)


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probabilities add up to ``top_p`` (HF's TopPLogitsWarper)."""
    sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[:, -1] = False  # always keep the most likely token
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, -torch.inf)
