"""A random-weight XTTS-v2 checkpoint in the real file layout, for tests, demos and benchmarks.

The real download is a folder with ``config.json``, ``model.pth`` (``{"model": state_dict}``) and
``vocab.json``. :func:`make_test_model` writes the same three files with random weights, so everything
downstream (loading, conditioning, streaming) runs the production code path without any network.
Random weights cost the same compute as trained ones, but the model never decides to stop talking:
pin lengths with ``min_new_tokens``/``max_new_tokens``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ModelSize = Literal["tiny", "full"]

# The 17 languages of XTTS-v2; the tokenizer writes them as "[xx]" tokens (Chinese is "[zh-cn]").
XTTS_V2_LANGUAGES = (
    "en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi",
)  # fmt: skip
REAL_TEXT_VOCAB_SIZE = 6681  # tokens in the real XTTS-v2 vocab.json (and rows of its text embedding)
REAL_MAX_AUDIO_TOKENS = 605  # gpt_max_audio_tokens of the real config (602 generated tokens, ~28 s)
SPECIAL_TOKENS = ("[STOP]", "[UNK]", "[SPACE]", "[START]")

# Text the toy BPE vocabulary is trained on: enough letters for the languages the tests speak.
_VOCAB_CORPUS = (
    "hello world, this is a test of the voice model.",
    "the quick brown fox jumps over the lazy dog; she sells sea shells by the sea shore!",
    "bonjour le monde, ceci est un essai de la voix. où est la gare? àâçéèêëîïôûùüÿœæ",
    "hallo welt, das ist ein test. äöüß ñ ¿¡ ąćęłńóśźż čďěňřšťůž",
    "abcdefghijklmnopqrstuvwxyz 0123456789 .,!?;:'-",
)


@dataclass(frozen=True)
class ModelDimensions:
    """The GPT part of XTTS-v2 that ``size`` changes; HiFi-GAN and the speaker encoder keep their size."""

    layers: int
    channels: int
    heads: int


SIZES: dict[str, ModelDimensions] = {
    "tiny": ModelDimensions(layers=2, channels=64, heads=4),  # ~23 M parameters, model.pth ~93 MB
    "full": ModelDimensions(layers=30, channels=1024, heads=16),  # 466.9 M parameters, model.pth ~1.87 GB
}


def write_vocab(path: Path, pad_to: int = REAL_TEXT_VOCAB_SIZE) -> Path:
    """Train a small BPE tokenizer with XTTS's special and language tokens and save it as ``vocab.json``.

    The vocabulary is padded with unused tokens to ``pad_to`` entries, the real text-embedding size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))  # noqa: S106 (a token name, not a password)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    special = [*SPECIAL_TOKENS, *(f"[{lang}]" for lang in XTTS_V2_LANGUAGES)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False)
    tok.train_from_iterator(list(_VOCAB_CORPUS), trainer=trainer)
    missing = pad_to - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"[unused{i}]" for i in range(missing)])
    tok.save(str(path))
    return path


def make_test_model(
    out_dir: Path, size: ModelSize = "tiny", seed: int = 0, *, max_audio_tokens: int = REAL_MAX_AUDIO_TOKENS
) -> Path:
    """Write a random-weight XTTS-v2 checkpoint (config.json, model.pth, vocab.json) into ``out_dir``.

    The same arguments always give the same files. ``tiny`` has a 2-layer, 64-channel GPT; ``full`` the
    real 30 layers and 1024 channels. ``max_audio_tokens`` below the real 605 caps every sentence at
    ``max_audio_tokens - 3`` tokens (46.4 ms each): random weights then end sentences quickly on their own.
    Returns ``out_dir``.
    """
    import torch
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if not 8 <= max_audio_tokens <= REAL_MAX_AUDIO_TOKENS:
        raise ValueError(f"max_audio_tokens must be between 8 and {REAL_MAX_AUDIO_TOKENS}")
    dims = SIZES[size]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_path = write_vocab(out_dir / "vocab.json")

    # XttsArgs' defaults describe XTTS v1; these are the v2 values of the real config.json.
    args = XttsArgs(
        gpt_layers=dims.layers,
        gpt_n_model_channels=dims.channels,
        gpt_n_heads=dims.heads,
        decoder_input_dim=dims.channels,
        gpt_max_audio_tokens=max_audio_tokens,
        gpt_max_text_tokens=402,
        gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025,
        gpt_use_masking_gt_prompt_approach=True,
        gpt_use_perceiver_resampler=True,
    )
    config = XttsConfig(
        model_args=args,
        audio=XttsAudioConfig(),
        languages=list(XTTS_V2_LANGUAGES),
        temperature=0.75,
        length_penalty=1.0,
        repetition_penalty=5.0,
        top_k=50,
        top_p=0.85,
        gpt_cond_len=30,
        gpt_cond_chunk_len=4,
        max_ref_len=30,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Xtts(config)
        # Xtts has no GPT until it knows the text vocabulary.
        model.tokenizer = VoiceBpeTokenizer(vocab_file=str(vocab_path))
        model.init_models()
    torch.save({"model": model.state_dict()}, out_dir / "model.pth")
    config.save_json(str(out_dir / "config.json"))
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    log.info("wrote a random %s XTTS-v2 checkpoint (%.1f M parameters) to %s", size, params_m, out_dir)
    return out_dir
