"""Audio constants shared by the bot and the worker, with their units."""

from typing import Final

OUTPUT_SAMPLE_RATE: Final = 24_000  # Hz: XTTS-v2 speaks 24 kHz mono
OUTPUT_SAMPLE_WIDTH: Final = 2  # bytes per sample: synthesized speech travels as s16le
ANALYSIS_SAMPLE_RATE: Final = 16_000  # Hz: VAD, Whisper and Resemblyzer all work at 16 kHz
CONDITIONING_SAMPLE_RATE: Final = 22_050  # Hz: XTTS-v2 computes its GPT conditioning at 22.05 kHz
AUDIO_TOKEN_SECONDS: Final = 1024 / 22_050  # 46.4 ms of audio per XTTS audio token
MAX_REFERENCE_SECONDS: Final = 30.0  # s: the best speech kept for cloning
ACCEPTED_INPUT_RATES: Final = frozenset({16_000, 22_050, 24_000, 44_100, 48_000})  # Hz on the wire
