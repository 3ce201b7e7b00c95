"""DegradationStopper: the degradation rule (sweep/degradation.py) as a Tune stopper.

Each trial driver applies the rule to its own rows, stops its training and records the stop itself
(sweep/trial.py); this stopper sees the same rows in Tune and reaches the same decisions: the
cluster-wide backstop, and what the sweep's progress line reads (``reasons``). ``log_path`` /
``on_stop`` receive each stop it decides ({trial_name, step, reason}), for uses outside a sweep.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ray import tune

from overopt.sweep.degradation import DegradationRule


class DegradationStopper(tune.Stopper):
    """Stop a trial clearly past its peak, or past an optional KL budget (sweep/degradation.py)."""

    def __init__(
        self,
        margin: float,
        patience_epochs: float,
        kl_budget: float | None = None,
        log_path: str | Path | None = None,
        on_stop: Callable[[dict], None] | None = None,
        history: Callable[[str], list[dict]] | None = None,
    ):
        self.rule = DegradationRule(margin, patience_epochs, kl_budget, history=history)
        self.log_path = Path(log_path) if log_path else None
        self.on_stop = on_stop

    @property
    def reasons(self) -> dict[str, str]:
        return self.rule.reasons

    @property
    def best(self):
        return self.rule.best

    @property
    def streak_start(self):
        return self.rule.streak_start

    def __call__(self, trial_id: str, result: dict) -> bool:
        name = result.get("trial_name", trial_id)
        reason = self.rule.observe(name, result)
        if reason is None:
            return False
        record = {"trial_name": name, "step": result.get("step"), "reason": reason}
        if self.log_path:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.on_stop is not None:
            self.on_stop(record)
        return True

    def stop_all(self) -> bool:
        return False
