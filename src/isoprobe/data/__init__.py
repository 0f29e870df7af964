"""Data sources, the prepared-split schema, and the prepare step."""
