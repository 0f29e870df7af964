"""ZCA whitening of [CLS] vectors x [B, H] with moving (bias-corrected) mean and covariance: the
full-covariance counterpart of IsoBN (not in either paper).

out = (x - mu) W, W = S^(-1/2) with S = (1 - shrinkage) C + shrinkage * (tr C / H) I + eps I. The statistics
come from detached batches (all-reduced across processes) and are used in training and evaluation alike;
W is recomputed from them at every training forward, and in evaluation once per state of the statistics
(an H x H eigendecomposition per eval batch cost ~1 s of a short run). Identity until the first
training batch.
"""

from __future__ import annotations

import torch
from torch import nn

from isoprobe.finetune.heads.moments import MovingMoments, batch_moments


class Whiten(nn.Module):
    """Options are keyword-only and required: their defaults live in the treatment's options model
    (isoprobe.core.treatments.WhitenOptions); `make_normalizer("whiten", hidden)` applies them."""

    def __init__(self, hidden: int, *, momentum: float, shrinkage: float, eps: float):
        super().__init__()
        if not 0 <= shrinkage <= 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.shrinkage, self.eps = shrinkage, eps
        self.stats = MovingMoments({"mean": (hidden,), "cov": (hidden, hidden)}, momentum)
        self._eval_cache: tuple[tuple, torch.Tensor] | None = None

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
        w = self._eval_matrix() if not self.training else self.matrix()
        w = w.detach().to(x.dtype)
        return (x - self.stats.get("mean").to(x.dtype)) @ w

    def _eval_matrix(self) -> torch.Tensor:
        """`matrix()`, reused while the statistics are unchanged: the key holds the update count and
        the in-place version counters of the buffers (bumped by updates and `load_state_dict`)."""
        cov = self.stats.get_buffer("ema_cov")
        key = (int(self.stats.steps), cov._version, cov.data_ptr(), cov.device)
        if self._eval_cache is None or self._eval_cache[0] != key:
            self._eval_cache = (key, self.matrix())
        return self._eval_cache[1]
