"""Device choice and CPU thread count."""

from __future__ import annotations

import os

import torch

from isoprobe.core.errors import IsoprobeError


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pick_device(
    preference: str = "auto", num_threads: int = 0, key: str = "embed.device"
) -> torch.device:
    """`auto`: CUDA when present, else CPU. On CPU, use `num_threads` (0 = the usable cores shared
    among the processes a launcher started on this machine, LOCAL_WORLD_SIZE)."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise IsoprobeError(
            f"{key}: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'"
        )
    device = torch.device(
        "cuda" if preference in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    )
    if device.type == "cpu":
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(num_threads or max(1, usable_cores() // local_processes))
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (fp32)."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )
