"""Loading the Triton kernels (worker.kernels.loader): whether Triton interprets is Triton's own answer."""

from __future__ import annotations

import sys

import pytest

from worker.kernels import loader


def test_interpreting_is_what_triton_itself_reads() -> None:
    from triton import knobs

    assert loader.interpreting() is knobs.runtime.interpret is True  # tests/conftest.py: TRITON_INTERPRET=1


def test_without_triton_nothing_is_interpreted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # what an installation without Triton imports
    assert not loader.interpreting()
