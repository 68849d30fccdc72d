"""Data: reading sources, synthetic generators, the data contract and spec inference."""
