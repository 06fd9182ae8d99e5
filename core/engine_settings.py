"""The speech engine's switches as one frozen value, which :attr:`core.settings.Settings.engine` builds.

Plain Python (no pydantic): the engine's modules take it, and the benchmark's GPU machine runs them without
the bot's packages. What each switch does, measured: bench/README.md ("Commands").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AutoOnOff = Literal["auto", "on", "off"]
AutoOff = Literal["auto", "off"]
OnOff = Literal["on", "off"]
DecodeDtype = Literal["float16", "bfloat16", "float32"]
VocoderDtype = Literal["auto", "float16", "float32"]


@dataclass(frozen=True)
class EngineSettings:
    """The switches, validated where they are read (core.settings); each default is an unset variable's."""

    fast_decode: AutoOnOff = "auto"  # FAST_DECODE (or VOXCLONE_FAST_DECODE): CUDA graphs + float16 on CUDA
    decode_dtype: DecodeDtype | None = None  # VOXCLONE_DECODE_DTYPE (None: float16 with graphs, else float32)
    prefill_graphs: OnOff = "on"  # VOXCLONE_PREFILL_GRAPHS: with graphs, the prefill captured too
    vocoder_graphs: OnOff = "on"  # VOXCLONE_VOCODER_GRAPHS: with graphs, HiFi-GAN's standard shapes too
    vocoder_dtype: VocoderDtype = "auto"  # VOXCLONE_VOCODER_DTYPE: batched HiFi-GAN calls' precision
    fused_norm: AutoOff = "auto"  # VOXCLONE_FUSED_NORM: residual add + LayerNorm as one Triton kernel
    fused_sampling: AutoOff = "auto"  # VOXCLONE_FUSED_SAMPLING: the end of a step as one Triton kernel
    fused_attention: AutoOnOff = "auto"  # VOXCLONE_FUSED_ATTENTION: cache write + attention as one kernel
    pipeline: AutoOnOff = "auto"  # VOXCLONE_PIPELINE: each decode step launched before the last is read
