"""Device choice and CPU thread count."""

from __future__ import annotations

import os

import torch

from isoprobe.errors import IsoprobeError


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pick_device(preference: str = "auto", num_threads: int = 0) -> torch.device:
    """`auto`: CUDA when present, else CPU. On CPU, use `num_threads` (0 = every usable core)."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise IsoprobeError(
            "embed.device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'"
        )
    device = torch.device(
        "cuda" if preference in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    )
    if device.type == "cpu":
        torch.set_num_threads(num_threads or usable_cores())
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (fp32)."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )
