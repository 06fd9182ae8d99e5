"""The speech types the engine, the batch sessions and the scheduler share: prepared requests, chunk
sizes, per-stream statistics and the PCM chunk type."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from core.audio import OUTPUT_SAMPLE_RATE
from worker.tts.transfer import to_device
from worker.tts.vocoder import DEFAULT_CONTEXT_FRAMES

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True)
class ChunkPlan:
    """How many audio tokens (46.4 ms each) to generate before each streamed chunk.

    The first chunk is small so that audio starts early; each later one doubles up to ``tokens``, so the
    listener's buffer grows faster than the next chunk takes to make (fewer, larger vocoder calls).

    27 tokens (1.25 s) is the most whose vocoder window fits 144 frames, the widest standard width on CUDA
    (:data:`~worker.tts.vocoder.WINDOW_STEP_CUDA` × 3): 117-118 new frames + 13 frames of context on each
    side. At 24 tokens that window was 130 frames padded to 144, and HiFi-GAN ran 1.44 frames per frame
    of audio against 1.29 now (CUDA widths, 4 requests of 100-211 tokens: 10.6 % less vocoder work).
    """

    first_tokens: int = 8
    tokens: int = 27
    context_frames: int = DEFAULT_CONTEXT_FRAMES

    def __post_init__(self) -> None:
        if not 1 <= self.first_tokens <= self.tokens:
            raise ValueError("chunk sizes must be at least one token, the first no larger than the rest")

    def after(self, previous: int) -> int:
        """The chunk size that follows one of ``previous`` tokens."""
        return min(self.tokens, 2 * previous)


@dataclass
class StreamStats:
    """What one synthesis did; filled in by the thread that runs it, read after it ends."""

    sentences: int = 0
    tokens: int = 0  # GPT decode steps (audio tokens)
    chunks: int = 0
    samples: int = 0  # output samples at 24 kHz
    vocoder_frames: int = 0  # frames HiFi-GAN ran over, context included
    cancelled: bool = False
    started: float = field(default_factory=time.perf_counter)
    first_chunk_s: float | None = None  # seconds from start to the first chunk
    elapsed_s: float = 0.0

    @property
    def audio_s(self) -> float:
        return self.samples / OUTPUT_SAMPLE_RATE

    @property
    def real_time_factor(self) -> float | None:
        """Seconds of compute per second of audio (below 1 is faster than real time)."""
        return self.elapsed_s / self.audio_s if self.samples else None


@dataclass(frozen=True)
class PreparedSpeech:
    """A validated request: text tokens per sentence and the voice as tensors.

    :meth:`XttsEngine.prepare` leaves them on the host: it runs on the caller's thread (the event loop),
    where a copy to the GPU would wait for the GPU's queued work. The engine thread moves them (:meth:`to`).
    """

    sentences: tuple[torch.Tensor, ...]
    language: str
    gpt_cond_latent: torch.Tensor
    speaker_embedding: torch.Tensor
    min_tokens: int
    max_tokens: int
    seed: int

    def to(self, device: str | torch.device) -> PreparedSpeech:
        """The same request with its tensors on ``device`` (itself when they are there already).

        Copied without waiting for the device (:mod:`worker.tts.transfer`): a request joins a batch between
        steps, with a decode step in flight.
        """
        target, here = torch.device(device), self.gpt_cond_latent.device
        if here.type == target.type and target.index in (None, here.index):  # "cuda" is the current card
            return self
        return dataclasses.replace(
            self,
            sentences=tuple(to_device(t, target) for t in self.sentences),
            gpt_cond_latent=to_device(self.gpt_cond_latent, target),
            speaker_embedding=to_device(self.speaker_embedding, target),
        )
