"""[CLS] treatments: each maps x [B, H] -> [B, H] and sits before dropout -> linear. The list of
them, their options and their defaults is the registry `isoprobe.core.treatments`; this package
holds the built-in modules and builds any registered treatment (`make_normalizer`).

- baseline: identity (the common practice; basic.py);
- layernorm: LayerNorm with affine parameters (basic.py);
- batchnorm: BatchNorm1d with affine parameters (statistics over every process: batchnorm.py);
- standardize: the same without affine parameters (batch statistics in training, running at eval);
- isobn: Isotropic Batch Normalization (isobn.py);
- whiten: ZCA whitening with moving statistics and shrinkage (whiten.py);
- any treatment a user registers (`isoprobe.register_treatment`, a module in `treatments/`, or an
  entry point of the group `isoprobe.treatments`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from isoprobe.core.treatments import BUILTIN_METHODS, get_treatment

METHODS = BUILTIN_METHODS  # the built-in treatments; every registered one: treatment_names()


def make_normalizer(
    method: str, hidden: int, options: Mapping[str, Any] | None = None
) -> nn.Module:
    """The module of treatment `method` for width `hidden`; unset options take the defaults of its
    options model. Unknown method or bad options: IsoprobeError (also a ValueError for the method)."""
    treatment = get_treatment(method)
    module = treatment.make(hidden, options)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"treatment '{method}' ({treatment.origin}): its builder returned "
            f"{type(module).__name__}, not a torch.nn.Module"
        )
    return module


class ClassifierHead(nn.Module):
    """normalizer -> dropout -> linear. `forward` returns (logits [B, C], normalized input [B, H])."""

    def __init__(
        self,
        method: str,
        hidden: int,
        num_outputs: int,
        dropout: float,
        options: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.method = method
        self.norm = make_normalizer(method, hidden, options)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, num_outputs)

    def forward(self, x):
        z = self.norm(x)
        return self.linear(self.dropout(z)), z
