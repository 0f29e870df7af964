"""Anisotropy of an embedding cloud: the metrics (`metrics`: `Isotropy().fit(X)`), per-layer
results and their files (`outputs`), and the figures (`plots`).

Imports: `core`, `embed`.
"""
