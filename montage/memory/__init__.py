"""Memory core: where the ceiling is, what is used, how much pressure, who holds what.

Submodules are imported on use; this package import starts nothing.
"""
