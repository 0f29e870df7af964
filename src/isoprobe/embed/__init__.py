"""Extraction: per-layer [CLS], mean and word vectors of an encoder over a prepared task, written as
safetensors (`extract`), and the embed stage's work on the pre-trained encoder (`run`).

Imports: `core`, `data`.
"""
