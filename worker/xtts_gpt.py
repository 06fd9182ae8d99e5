"""The XTTS-v2 GPT decode loop, one audio token per step, driven by our own code instead of HF ``generate``.

Stock coqui-tts runs generation through ``GPT2InferenceModel.generate``, which stores the text prefix on
the shared module (``store_prefix_emb``) and can only run one request at a time. Here each sequence keeps
its own KV cache, sampling state and random generator in a :class:`SequenceState`, and :func:`decode_step`
advances one sequence by one token. That separation is what continuous batching (several sequences per
step) builds on. Every step also returns the GPT latent that HiFi-GAN turns into audio.

Sampling follows HF's order for XTTS: repetition penalty over every token seen (including the prefix's
placeholder token and the start token), the stop token masked until ``min_tokens``, then temperature,
top-k and top-p; ``greedy`` takes the arg-max instead.
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
    seen: torch.Tensor  # [num_audio_tokens] bool: tokens the repetition penalty applies to
    generator: torch.Generator
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


def new_sequence(
    gpt: GPT,
    cond_latent: torch.Tensor,
    text_tokens: torch.Tensor,
    *,
    min_tokens: int,
    max_tokens: int,
    generator: torch.Generator,
) -> SequenceState:
    """A sequence ready for its first :func:`decode_step` (which runs the whole prefix)."""
    seen = torch.zeros(gpt.num_audio_tokens, dtype=torch.bool, device=text_tokens.device)
    seen[PREFIX_PLACEHOLDER_TOKEN] = True
    seen[gpt.start_audio_token] = True
    return SequenceState(
        pending=text_prefix(gpt, cond_latent, text_tokens),
        seen=seen,
        generator=generator,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
    )


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
    token = sample_token(logits[0], state, params, stop_token=gpt.stop_audio_token)
    state.steps += 1
    if token == gpt.stop_audio_token:
        state.finished = state.stopped_by_model = True
    elif state.steps >= state.max_tokens:
        state.finished = True
    else:
        ids = torch.tensor([[token]], device=logits.device)
        state.pending = gpt.mel_embedding(ids) + gpt.mel_pos_embedding.get_fixed_embedding(
            state.steps, ids.device
        )
    return latent[0]


def sample_token(
    logits: torch.Tensor, state: SequenceState, params: SamplingParams, *, stop_token: int
) -> int:
    """Choose the next token from one row of logits, updating the sequence's repetition state."""
    scores = logits.float().clone()
    if params.repetition_penalty != 1.0:
        seen = scores[state.seen]
        penalised = torch.where(seen < 0, seen * params.repetition_penalty, seen / params.repetition_penalty)
        scores[state.seen] = penalised
    if state.steps < state.min_tokens:
        scores[stop_token] = -torch.inf
    if params.greedy:
        token = int(torch.argmax(scores).item())
    else:
        scores = scores / params.temperature
        if 0 < params.top_k < scores.numel():
            kth = torch.topk(scores, params.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, -torch.inf)
        if params.top_p < 1.0:
            scores = _top_p(scores, params.top_p)
        probs = torch.softmax(scores, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=state.generator).item())
    state.seen[token] = True
    return token


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probabilities add up to ``top_p`` (HF's TopPLogitsWarper)."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[-1] = False  # always keep the most likely token
    remove = remove_sorted.scatter(0, order, remove_sorted)
    return scores.masked_fill(remove, -torch.inf)
