"""When to evaluate: fractions of the epoch, turned into optimizer steps.

Geometric early points catch a small-beta peak that comes within a few percent of the epoch; even
points through epoch 1 trace the rise and fall; then one point every ``after_epoch_1`` epochs shows
the decline continuing. Step 0 (the reference itself) is always evaluated so every curve starts at d = 0.
"""

from __future__ import annotations


def evaluation_fractions(epochs: float, early: list[float], per_epoch_1: int, after_epoch_1: float) -> list[float]:
    """Sorted, de-duplicated epoch fractions in [0, epochs], always including 0 and ``epochs``."""
    points = {0.0, float(epochs)}
    points.update(f for f in early if 0 < f <= epochs)
    points.update(k / per_epoch_1 for k in range(1, per_epoch_1 + 1) if k / per_epoch_1 <= epochs)
    f = 1.0 + after_epoch_1
    while f < epochs:
        points.add(f)
        f += after_epoch_1
    return sorted(points)


def evaluation_steps(fractions: list[float], steps_per_epoch: int) -> dict[int, float]:
    """{optimizer step: epoch fraction}; fractions that round to the same step keep the first."""
    steps: dict[int, float] = {}
    for f in fractions:
        step = round(f * steps_per_epoch)
        if f > 0:
            step = max(step, 1)  # a positive fraction never collapses onto the reference
        steps.setdefault(step, f)
    return steps
