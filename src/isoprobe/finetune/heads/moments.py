"""Batch moments of [CLS] vectors, all-reduced across processes under torch.distributed (as
SyncBatchNorm does), and bias-corrected exponential moving averages."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [H] and population covariance [H, H] of x [B, H] (float64 accumulation, no gradient).

    Under multi-process training both are over the global batch: every process gets the same values.
    """
    x = x.detach().to(torch.float64)
    total = torch.cat([x.sum(0), x.new_tensor([x.shape[0]])])
    if _distributed():
        dist.all_reduce(total)
    n = total[-1]
    mean = total[:-1] / n
    y = x - mean
    scatter = y.T @ y
    if _distributed():
        dist.all_reduce(scatter)
    return mean, scatter / n


class MovingMoments(torch.nn.Module):
    """Exponential moving averages `ema += momentum * (value - ema)` of named tensors, zero-initialised
    and bias-corrected (divided by 1 - (1 - momentum)^t after t updates), kept as buffers so they
    travel with the state dict and the device."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], momentum: float):
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.names = tuple(shapes)
        for name, shape in shapes.items():
            self.register_buffer(f"ema_{name}", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, **values: torch.Tensor) -> None:
        for name in self.names:
            ema = getattr(self, f"ema_{name}")
            ema += self.momentum * (values[name].to(ema.dtype) - ema)
        self.steps += 1

    def get(self, name: str) -> torch.Tensor:
        """The bias-corrected average (undefined before the first update: callers check `ready`)."""
        correction = 1.0 - (1.0 - self.momentum) ** int(self.steps)
        return getattr(self, f"ema_{name}") / correction

    @property
    def ready(self) -> bool:
        return int(self.steps) > 0
