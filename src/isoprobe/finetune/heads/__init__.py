"""[CLS] treatments, registered by name: each maps x [B, H] -> [B, H] and sits before dropout -> linear.

- baseline: identity (the common practice);
- layernorm: LayerNorm with affine parameters;
- batchnorm: BatchNorm1d with affine parameters (statistics over every process: batchnorm.py);
- standardize: the same without affine parameters (batch statistics in training, running at eval);
- isobn: Isotropic Batch Normalization (isobn.py);
- whiten: ZCA whitening with moving statistics and shrinkage (whiten.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from isoprobe.finetune.heads.batchnorm import DistBatchNorm1d
from isoprobe.finetune.heads.isobn import IsoBN
from isoprobe.finetune.heads.whiten import Whiten

NORMALIZERS: dict[str, Callable[..., nn.Module]] = {
    "baseline": lambda hidden: nn.Identity(),
    "layernorm": lambda hidden, eps=1e-12: nn.LayerNorm(hidden, eps=eps, elementwise_affine=True),
    "batchnorm": lambda hidden, momentum=0.1, eps=1e-5: DistBatchNorm1d(
        hidden, eps=eps, momentum=momentum, affine=True
    ),
    "standardize": lambda hidden, momentum=0.1, eps=1e-5: DistBatchNorm1d(
        hidden, eps=eps, momentum=momentum, affine=False
    ),
    "isobn": IsoBN,
    "whiten": Whiten,
}
METHODS = tuple(NORMALIZERS)


def make_normalizer(method: str, hidden: int, options: dict[str, Any] | None = None) -> nn.Module:
    if method not in NORMALIZERS:
        raise ValueError(f"unknown method '{method}'; allowed: {', '.join(METHODS)}")
    return NORMALIZERS[method](hidden, **(options or {}))


class ClassifierHead(nn.Module):
    """normalizer -> dropout -> linear. `forward` returns (logits [B, C], normalized input [B, H])."""

    def __init__(
        self,
        method: str,
        hidden: int,
        num_outputs: int,
        dropout: float,
        options: dict | None = None,
    ):
        super().__init__()
        self.method = method
        self.norm = make_normalizer(method, hidden, options)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, num_outputs)

    def forward(self, x):
        z = self.norm(x)
        return self.linear(self.dropout(z)), z
