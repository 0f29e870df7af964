"""Probing an encoder layer by layer: classifier probes (`classifiers`), DirectProbe clusters
(`directprobe`, `hulls`), the geometry of the change (`geometry`: CKA, spatial similarity), all of
them on one encoder by layer (`layers`), the probe stages' work (`run`), their files (`outputs`) and
figures (`plots`).

Imports: `core`, `data`, `embed`.
"""
