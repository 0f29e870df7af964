"""Builders of the two treatments without statistics: `baseline` (identity) and `layernorm`."""

from __future__ import annotations

from torch import nn


def identity(hidden: int) -> nn.Module:
    """baseline: [CLS] as the encoder gives it."""
    return nn.Identity()


def layernorm(hidden: int, *, eps: float) -> nn.Module:
    """LayerNorm with affine parameters."""
    return nn.LayerNorm(hidden, eps=eps, elementwise_affine=True)
