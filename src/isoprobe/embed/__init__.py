"""Extraction: per-layer [CLS], mean and word vectors of an encoder over a prepared task, written as
safetensors (`extract`).

Imports: `core`, `data`.
"""
