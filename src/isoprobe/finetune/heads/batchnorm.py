"""BatchNorm1d whose training statistics span every process, on any device (CPU/gloo included).

torch's SyncBatchNorm only runs on accelerators; this one all-reduces the batch mean and variance
with the autograd-aware `torch.distributed.nn.functional.all_reduce`, so the forward pass and the
gradients through the statistics equal single-process BatchNorm over the global batch. With one
process it is plain `nn.BatchNorm1d` (same parameters, buffers and arithmetic).
"""

from __future__ import annotations

import torch
from torch import nn

from isoprobe.finetune.heads.moments import _distributed


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


class DistBatchNorm1d(nn.BatchNorm1d):
    """x [B, H] -> [B, H]; `affine=False` gives plain standardization."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        xf = x.float()
        total = _all_reduce(torch.cat([xf.sum(0), xf.new_tensor([x.shape[0]])]))
        n = total[-1]
        mean = total[:-1] / n
        var = _all_reduce(((xf - mean) ** 2).sum(0)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / int(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
            unbiased = var.detach() * n / (n - 1).clamp_min(1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def batchnorm(hidden: int, *, momentum: float, eps: float) -> DistBatchNorm1d:
    """The `batchnorm` treatment: BatchNorm1d with affine parameters."""
    return DistBatchNorm1d(hidden, eps=eps, momentum=momentum, affine=True)


def standardize(hidden: int, *, momentum: float, eps: float) -> DistBatchNorm1d:
    """The `standardize` treatment: batch statistics in training, running ones at eval, no affine."""
    return DistBatchNorm1d(hidden, eps=eps, momentum=momentum, affine=False)
