"""Judges rank a window of texts by how strongly each supports or opposes one value.

Everything that produces comparisons goes through :class:`workers.judges.base.Judge`.
"""
