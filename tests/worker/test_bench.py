"""The synthesis benchmark runs end to end on the CPU and reports what it measured.

A GPU session gets one short call to run ``bench/gpu.sh``; a benchmark that breaks when the worker
changes would waste it. This runs the same script on the tiny checkpoint with every part that the CPU
has (variants, phases, profile, components, the agreement check) and checks the JSON it writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_runs_every_cpu_part_and_writes_its_figures(
    tiny_xtts_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "synthesis_tiny.json"
    command = [
        sys.executable, str(ROOT / "bench" / "synthesis.py"), "--model-dir", str(tiny_xtts_dir),
        "--tokens", "8", "--concurrency", "1,2", "--serial-at", "2", "--small-session-at", "1",
        "--phases-at", "2", "--profile-at", "2", "--staggered-at", "2", "--stagger-s", "0.3",
        "--watermarked-at", "2", "--flip-pipeline-at", "2",
        "--skip-stock", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == {}
    engines = {(row["engine"], row["concurrency"]) for row in result["rows"]}
    assert engines == {
        ("voxclone", 1), ("voxclone", 2), ("vox-serial", 2), ("vox-small-session", 1), ("vox-staggered", 2),
        ("vox-watermarked", 2), ("vox-pipelined", 2),
    }  # fmt: skip
    assert all(row["throughput_x"] > 0 and row["ttfc_ms_p50"] > 0 for row in result["rows"])
    assert [r["vs"] for r in result["ratios"]] == [
        "vox-serial", "vox-small-session", "vox-watermarked", "vox-pipelined",
    ]  # fmt: skip
    assert result["check"]["same_length"] and result["check"]["max_abs_diff_lsb"] <= 2
    ops = result["components"]["decode_step_ops"]
    assert ops["per_layer"] <= 12 and ops["total"] == ops["rest"] + 2 * ops["per_layer"]  # tiny: 2 layers
    # 8 tokens: the first comes from the prefill, 7 from decode steps
    assert result["phases"][0]["concurrency"] == 2 and result["phases"][0]["steps"] >= 7
    assert result["profile"][0]["steps"] >= 7 and (tmp_path / "profile_x2.txt").stat().st_size > 0
    assert "voxclone vs vox-serial x2" in done.stdout
    assert "unpipelined engine loop" in done.stdout  # the CPU default, named in the header
    assert result["components"]["attention_at"] == []  # the CPU decodes eagerly: no captured shapes


def test_the_attention_lines_say_which_captured_shapes_kept_the_fused_kernel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What a GPU run prints from the timed attention (components' JSON as the bench writes it)."""
    from bench.synthesis import print_attention

    print_attention({"attention_at": [], "attention_ms": []})
    assert capsys.readouterr().out == ""  # eager: nothing captured, nothing to say
    print_attention(
        {
            "attention_at": [[2, 128, 32], [2, 1088, 0], [32, 128, 0]],
            "attention_ms": [[2, 128, 1.5, 1.3, 1.25], [2, 1088, 1.5, 1.49, 1.6], [32, 128, 2.0, 2.5, 2.4]],
            "attention_blocks": [64, 32],
        }
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "attention: the fused kernel in 1 of 3 captured step shapes"
    assert "PyTorch's attention / the fused kernel with blocks of 64 / 32 positions (* kept)" in lines[1]
    assert lines[2].split() == ["2", "rows", "128:", "1.500/1.300/1.250*", "1088:", "1.500*/1.490/1.600"]
    assert lines[3].split() == ["32", "rows", "128:", "2.000*/2.500/2.400"]
