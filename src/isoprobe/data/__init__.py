"""Data sources (`sources` and one module per format: `glue`, `trec`, `conllu`, `table`, `hf`),
the link to a task's source data that DVC hashes (`link`), reading raw rows (`raw`), splitting
(`split`), the prepare step (`prepare`: validate, drop and count bad rows, split, subsample) and
the prepare stage's work (`run`).

Imports: `core`.
"""
