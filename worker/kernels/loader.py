"""Loading the decode step's Triton kernels (:mod:`worker.kernels.triton_kernels`) when they are first needed.

Triton decides when ``triton.jit`` decorates a function whether it compiles it for the GPU or runs it in
its interpreter (``TRITON_INTERPRET=1``, how the tests run them on the CPU), so the kernels are kept
undecorated and decorated here, once per kernel and mode. Importing Triton is deferred to that moment
too: a worker without Triton (or without a GPU) never imports it.
"""

from __future__ import annotations

import functools
from typing import Any


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (on the CPU) rather than compiling them.

    ``TRITON_INTERPRET`` is Triton's own switch, not one of ours: Triton's ``knobs.runtime.interpret`` is
    what ``triton.jit`` itself consults, so asking it gives Triton's answer (and its reading of values
    such as ``true``). Without Triton nothing is interpreted. Asked only off CUDA (the kernels' probes on
    the CPU, in the tests) and when a kernel is built, which imports Triton anyway.
    """
    try:
        from triton import knobs
    except ImportError:
        return False
    return bool(knobs.runtime.interpret)


def kernel(name: str) -> Any:
    """The kernel ``name`` of :mod:`worker.kernels.triton_kernels`, ready to launch.

    Raises if Triton is missing.
    """
    return _jit(name, interpreting())


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def _jit(name: str, interpret: bool) -> Any:
    del interpret  # part of the cache key: a kernel built for the interpreter is not the compiled one
    import triton

    from worker.kernels import triton_kernels

    return triton.jit(getattr(triton_kernels, name))
