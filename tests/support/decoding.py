"""Driving a BatchDecoder the same way in the tests that compare two of its configurations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def decode_two_rows(
    decoder: Any, prefixes: Sequence[torch.Tensor], min_tokens: int, steps: int = 12
) -> tuple[torch.Tensor, list[list[int]]]:
    """Prefill two rows (draws 0.3 and 0.7), then ``steps`` steps with the second row paused every third
    step and its own draws: every latent (``[rows, D]`` per call, concatenated) and every call's tokens."""
    slots = [decoder.claim() for _ in prefixes]
    first = decoder.prefill(slots, list(prefixes), [min_tokens] * len(slots), [0.3, 0.7])
    latents, tokens = [first.latents], [first.tokens]
    for i in range(steps):
        result = decoder.step([True, i % 3 != 1], [0.1 + 0.07 * i, 0.5])
        latents.append(result.latents)
        tokens.append(result.tokens)
    return torch.cat(latents), tokens
