"""Data sources (`sources` and one module per format), the prepared-split schema and the prepare
step (`prepare`: validate, drop and count bad rows, split, subsample).

Imports: `core`.
"""
