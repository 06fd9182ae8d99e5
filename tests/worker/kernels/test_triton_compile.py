"""The worker's Triton kernels compile for the GPUs it runs on (Hopper, sm_90, and Ampere, sm_80).

The other tests run the kernels in Triton's interpreter, which executes them as NumPy and accepts code
the compiler would refuse (a type that changes across a loop, an op with no lowering). Here each is
compiled for real, to PTX and then to machine code with the ptxas that Triton's package carries, as the
worker launches it (the same dtypes and compile-time flags); no GPU is needed for that. The compiler
cannot run in a process where the interpreter is on (tests/conftest.py turns it on), so it runs in a
child process without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CAPABILITIES = (90, 80)


def _end_of_step_types(dtype: str) -> dict[str, str]:
    return {
        **dict.fromkeys(("logits", "latent", "x", "embedding", "positions"), f"*{dtype}"),
        **dict.fromkeys(("seen", "active"), "*i1"),
        **dict.fromkeys(("steps", "pos", "min_tokens", "out_tokens"), "*i64"),
        **dict.fromkeys(("uniform", "out_latent"), "*fp32"),
        **dict.fromkeys(("vocab", "dim", "last_position", "stop_token", "top_k"), "i32"),
        **dict.fromkeys(("penalty", "inverse_penalty", "inverse_temperature", "cut"), "fp32"),
    }


def _flags(penalty: bool, greedy: bool, top_k: bool, top_p: bool) -> dict[str, Any]:
    # XTTS-v2: 1026 audio tokens, 1024 wide.
    return {
        "PENALTY": penalty,
        "GREEDY": greedy,
        "TOP_K": top_k,
        "TOP_P": top_p,
        "BLOCK": 2048,
        "BLOCK_DIM": 1024,
    }


_NORM = ("residual", "delta", "weight", "bias", "out_sum", "out_norm")
CONFIGS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    **{
        f"add_layer_norm {dtype}": (
            "add_layer_norm_rows",
            {**dict.fromkeys(_NORM, f"*{dtype}"), "dim": "i32", "eps": "fp32"},
            {"BLOCK": 1024},
        )
        for dtype in ("fp16", "bf16", "fp32")
    },
    **{
        f"decode attention {dtype}, blocks of {block}": (
            "decode_attention_rows",
            {
                **dict.fromkeys(("qkv", "cache", "out"), f"*{dtype}"),
                "pos": "*i64",
                **dict.fromkeys(("layer", "length", "max_positions", "layers", "heads"), "i32"),
                "scale": "fp32",
            },
            {"HEAD_DIM": 64, "BLOCK_N": block},  # XTTS-v2: 16 heads of 64
        )
        for dtype in ("fp16", "bf16", "fp32")
        for block in (64, 32)  # worker.kernels.attention.BLOCKS
    },
    "end of step fp16, XTTS-v2's sampling": (
        "finish_step_rows",
        _end_of_step_types("fp16"),
        _flags(True, False, True, True),
    ),
    "end of step fp16, greedy": (
        "finish_step_rows",
        _end_of_step_types("fp16"),
        _flags(True, True, False, False),
    ),
    "end of step bf16, top-k alone": (
        "finish_step_rows",
        _end_of_step_types("bf16"),
        _flags(False, False, True, False),
    ),
    "end of step fp32, top-p alone": (
        "finish_step_rows",
        _end_of_step_types("fp32"),
        _flags(True, False, False, True),
    ),
}


def main() -> None:
    """Compile every configuration for every capability; one JSON line each (run without the interpreter)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from worker.kernels import triton_kernels

    for label, (name, types, constants) in CONFIGS.items():
        kernel = JITFunction(getattr(triton_kernels, name))
        for capability in CAPABILITIES:
            result: dict[str, Any] = {"label": label, "capability": capability}
            try:
                if set(types) | set(constants) != set(kernel.arg_names):
                    raise ValueError(f"the test's signature is out of date: {kernel.arg_names}")
                source = ASTSource(
                    fn=kernel,
                    signature={arg: types.get(arg, "constexpr") for arg in kernel.arg_names},
                    constexprs={(kernel.arg_names.index(arg),): value for arg, value in constants.items()},
                )
                compiled = triton.compile(
                    source, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4}
                )
                result["ok"] = bool(compiled.asm["cubin"]) and name in compiled.asm["ptx"]
            except Exception as error:  # reported to the test, which fails with it
                result["ok"], result["error"] = False, f"{type(error).__name__}: {error}"
            print(json.dumps(result))


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[str, int], dict[str, Any]]:
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", "from tests.worker.kernels.test_triton_compile import main; main()"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {(line["label"], line["capability"]): line for line in lines}


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("label", list(CONFIGS))
def test_the_kernel_compiles(
    compiled: dict[tuple[str, int], dict[str, Any]], label: str, capability: int
) -> None:
    result = compiled[(label, capability)]
    assert result["ok"], result.get("error")
