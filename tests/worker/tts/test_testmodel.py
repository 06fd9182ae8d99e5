"""The random-weight XTTS-v2 checkpoint: real layout, v2 architecture, deterministic, production loading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from worker.tts.load import checkpoint_id
from worker.tts.testmodel import REAL_TEXT_VOCAB_SIZE, XTTS_V2_LANGUAGES, make_test_model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_file_layout_and_v2_config(tiny_xtts_dir: Path) -> None:
    assert sorted(p.name for p in tiny_xtts_dir.iterdir()) == ["config.json", "model.pth", "vocab.json"]
    config = json.loads((tiny_xtts_dir / "config.json").read_text())
    args = config["model_args"]
    assert config["model"] == "xtts"
    assert config["languages"] == list(XTTS_V2_LANGUAGES) and len(config["languages"]) == 17
    assert (args["gpt_layers"], args["gpt_n_model_channels"], args["gpt_n_heads"]) == (2, 64, 4)
    assert args["decoder_input_dim"] == args["gpt_n_model_channels"]
    assert (args["gpt_num_audio_tokens"], args["gpt_start_audio_token"], args["gpt_stop_audio_token"]) == (
        1026,
        1024,
        1025,
    )
    assert args["gpt_use_perceiver_resampler"] and args["gpt_use_masking_gt_prompt_approach"]
    vocab = json.loads((tiny_xtts_dir / "vocab.json").read_text())["model"]["vocab"]
    assert {"[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]", "[fr]", "[zh-cn]"} <= set(vocab)


def test_loads_strictly_through_coqui(tiny_xtts_dir: Path) -> None:
    """Exactly what production does: Xtts(config) + load_checkpoint(strict) with the folder's own vocab."""
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(tiny_xtts_dir / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(tiny_xtts_dir), eval=True, strict=True)
    assert model.gpt is not None and len(model.gpt.gpt.h) == 2
    assert model.tokenizer.get_number_tokens() == REAL_TEXT_VOCAB_SIZE
    assert model.gpt.text_embedding.num_embeddings == REAL_TEXT_VOCAB_SIZE
    ids = model.tokenizer.encode("bonjour à tous", lang="fr")
    assert ids[0] == model.tokenizer.tokenizer.token_to_id("[fr]")
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert 20 < params_m < 30  # the GPT is tiny; HiFi-GAN and the speaker encoder keep their size


def test_same_seed_same_bytes_other_seed_other_model(tiny_xtts_dir: Path, tmp_path: Path) -> None:
    again = make_test_model(tmp_path / "again", seed=0)
    for name in ("config.json", "vocab.json", "model.pth"):
        assert digest(again / name) == digest(tiny_xtts_dir / name), name
    other = make_test_model(tmp_path / "other", seed=1)
    assert digest(other / "model.pth") != digest(tiny_xtts_dir / "model.pth")
    assert checkpoint_id(other) != checkpoint_id(tiny_xtts_dir) == checkpoint_id(again)


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny, full"):
        make_test_model(tmp_path, size="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_audio_tokens"):
        make_test_model(tmp_path, max_audio_tokens=4)


def test_short_sentence_cap(tmp_path: Path) -> None:
    """A lower audio-token cap ends every sentence early, even with random weights."""
    import threading

    import numpy as np

    from worker.serving.engine import XttsEngine
    from worker.types import SpeechRequest

    engine = XttsEngine.load(make_test_model(tmp_path, max_audio_tokens=24), "cpu")
    assert engine.max_tokens == 21
    sr = 22_050
    tone = (0.3 * np.sin(2 * np.pi * 150 * np.arange(sr * 2) / sr)).astype(np.float32)
    request = SpeechRequest("Hello world.", "en", engine.embed(tone, sr), seed=0)
    chunks = list(engine.stream(request, threading.Event()))
    assert 0 < sum(c.size for c in chunks) <= engine.output_samples([21])
