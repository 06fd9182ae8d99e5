"""Host-to-device copies for the engine loop (worker/tts/transfer.py), on the devices this machine has.

The CUDA branch (pinned memory, queued copy) runs in the GPU benchmark; here: the values arrive intact
from arrays of any layout, and nothing is pinned when the target is not a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.tts.transfer import copy_to, to_device


def test_arrays_and_tensors_arrive_with_their_values(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pinning(self: torch.Tensor) -> torch.Tensor:
        raise AssertionError("pinned memory is for copies to a GPU only")

    monkeypatch.setattr(torch.Tensor, "pin_memory", no_pinning)
    strided = np.arange(24, dtype=np.int64).reshape(4, 6)[:, ::2]  # not contiguous
    moved = to_device(strided, torch.device("cpu"))
    assert moved.dtype == torch.int64 and np.array_equal(moved.numpy(), strided)
    weights = torch.linspace(0, 1, 7)
    assert torch.equal(to_device(weights, torch.device("cpu")), weights)
    assert to_device(weights, torch.device("meta")).device.type == "meta"
    target = torch.zeros(3, dtype=torch.bool)
    copy_to(target, torch.tensor([True, False, True]))
    assert target.tolist() == [True, False, True]
