"""Anisotropy of an embedding cloud: the metrics (`metrics`: `Isotropy().fit(X)`), per-layer
results and their files (`outputs`), the figures (`plots`) and the isotropy stage's work (`run`).

Imports: `core`, `embed`.
"""
