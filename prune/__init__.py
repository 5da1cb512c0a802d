"""Structured pruning (dependency-aware) for nasforge models.

The pruning engine arrives with its own issue; this package exists so the layout and the wheel are stable.
"""

__all__: list[str] = []
