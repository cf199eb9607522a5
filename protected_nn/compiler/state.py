"""A tensor during planning (planner.py and the modules it calls)."""
from __future__ import annotations


class PlanState:
    """A tensor during planning: a single-ciphertext Layout, or a TensorMap over several."""

    def __init__(self, layout: Layout | None, level: int, scale: float, tmap=None):
        self.layout, self.level, self.scale, self.tmap = layout, level, scale, tmap
