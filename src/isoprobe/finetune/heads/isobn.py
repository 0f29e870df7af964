"""Isotropic Batch Normalization (Zhou, Lin & Ren, AAAI 2021) of [CLS] vectors x [B, H].

Moving averages (momentum 0.05) of the covariance C and per-dimension std sigma of the detached batch;
rho = clamp(C / (sigma sigma^T), -1, 1); gamma_i = mean_j rho_ij^2; s_i = (gamma_i sigma_i + eps)^-beta;
m = sqrt(sum_i C_ii / (sum_i C_ii s_i^2 + eps)) keeps the total variance; output x * (m s), the scale
detached. No centring and no learnable parameters.

Unlike the reference code: the statistics are buffers (checkpointed, on the module's device), the
zero-initialised averages are bias-corrected, the module is the identity until it has seen a training
batch (so evaluating first gives no NaN), and batch statistics are all-reduced across processes.
"""

from __future__ import annotations

import torch
from torch import nn

from isoprobe.finetune.heads.moments import MovingMoments, batch_moments


class IsoBN(nn.Module):
    """Options are keyword-only and required: their defaults live in the treatment's options model
    (isoprobe.core.treatments.IsoBNOptions); `make_normalizer("isobn", hidden)` applies them."""

    def __init__(self, hidden: int, *, momentum: float, beta: float, eps: float):
        super().__init__()
        self.beta, self.eps = beta, eps
        self.stats = MovingMoments({"cov": (hidden, hidden), "std": (hidden,)}, momentum)

    def scale(self) -> torch.Tensor:
        """The per-dimension factor m * s [H] from the current statistics (float64)."""
        cov, std = self.stats.get("cov"), self.stats.get("std")
        denom = torch.outer(std, std).clamp_min(torch.finfo(std.dtype).tiny)
        rho = (cov / denom).clamp(-1.0, 1.0)
        gamma = (rho**2).mean(1)
        s = (gamma * std + self.eps) ** (-self.beta)
        var = torch.diagonal(cov)
        m = torch.sqrt(var.sum() / ((var * s**2).sum() + self.eps))
        return m * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            _, cov = batch_moments(x)
            self.stats.update(cov=cov, std=torch.sqrt(torch.diagonal(cov)))
        if not self.stats.ready:
            return x
        return x * self.scale().detach().to(x.dtype)
