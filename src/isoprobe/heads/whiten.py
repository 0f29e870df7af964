"""ZCA whitening of [CLS] vectors x [B, H] with moving (bias-corrected) mean and covariance: the
full-covariance counterpart of IsoBN (not in either paper).

out = (x - mu) W, W = S^(-1/2) with S = (1 - shrinkage) C + shrinkage * (tr C / H) I + eps I. The statistics
come from detached batches (all-reduced across processes) and are used in training and evaluation alike;
W is recomputed from them at every forward. Identity until the first training batch.
"""

from __future__ import annotations

import torch
from torch import nn

from isoprobe.heads.stats import MovingMoments, batch_moments


class Whiten(nn.Module):
    def __init__(
        self, hidden: int, momentum: float = 0.05, shrinkage: float = 0.1, eps: float = 1e-5
    ):
        super().__init__()
        if not 0 <= shrinkage <= 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.shrinkage, self.eps = shrinkage, eps
        self.stats = MovingMoments({"mean": (hidden,), "cov": (hidden, hidden)}, momentum)

    def matrix(self) -> torch.Tensor:
        """W [H, H] (float64), symmetric, from the current statistics."""
        cov = self.stats.get("cov")
        h = cov.shape[0]
        eye = torch.eye(h, dtype=cov.dtype, device=cov.device)
        s = (1 - self.shrinkage) * cov + (self.shrinkage * torch.trace(cov) / h + self.eps) * eye
        vals, vecs = torch.linalg.eigh(s)
        return vecs @ torch.diag(vals.clamp_min(self.eps).rsqrt()) @ vecs.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, cov = batch_moments(x)
            self.stats.update(mean=mean, cov=cov)
        if not self.stats.ready:
            return x
        w = self.matrix().detach().to(x.dtype)
        return (x - self.stats.get("mean").to(x.dtype)) @ w
