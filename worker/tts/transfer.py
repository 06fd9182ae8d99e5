"""Host-to-device copies that do not make the host wait for the GPU (pinned memory, ``non_blocking``).

On the CPU these are plain copies.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(values: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    """``values`` (on the host) on ``device``, queued behind the device's work instead of waiting for it."""
    host = torch.from_numpy(np.ascontiguousarray(values)) if isinstance(values, np.ndarray) else values
    if device.type != "cuda" or host.device.type != "cpu":  # (a copy between devices waits for neither)
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def copy_to(target: torch.Tensor, values: torch.Tensor) -> None:
    """Copy host ``values`` into the device tensor ``target`` the same way (queued, not waited for)."""
    if target.device.type != "cuda":
        target.copy_(values)
        return
    target.copy_(values.pin_memory(), non_blocking=True)
