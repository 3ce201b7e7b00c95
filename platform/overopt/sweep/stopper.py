"""DegradationStopper: end a trial once its quality has clearly fallen past its own peak.

A trial is stopped when its win rate has stayed more than ``margin`` below the trial's running best
for ``patience`` consecutive evaluations (so the decline is still recorded), or, optionally, once
its KL to the reference exceeds ``kl_budget``. Each stop's reason is kept in ``reasons`` (by trial
name) and appended to ``stops.jsonl`` in the experiment directory, so it reaches the results table
even if the sweep's driver dies afterwards.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray import tune


class DegradationStopper(tune.Stopper):
    def __init__(self, margin: float, patience: int, kl_budget: float | None = None, log_path: str | Path | None = None):
        if margin < 0 or patience < 1:
            raise ValueError(f"DegradationStopper needs margin >= 0 and patience >= 1, got {margin}, {patience}")
        self.margin, self.patience, self.kl_budget = margin, patience, kl_budget
        self.log_path = Path(log_path) if log_path else None
        self.best: dict[str, float] = {}
        self.strikes: dict[str, int] = {}
        self.reasons: dict[str, str] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        win_rate = result.get("win_rate")
        if win_rate is None or (isinstance(win_rate, float) and math.isnan(win_rate)):
            return False  # not an evaluation row (or the judge failed everywhere): no evidence either way
        name = result.get("trial_name", trial_id)
        best = self.best[name] = max(self.best.get(name, -math.inf), win_rate)
        self.strikes[name] = self.strikes.get(name, 0) + 1 if win_rate < best - self.margin else 0
        reason = None
        if self.strikes[name] >= self.patience:
            reason = (
                f"degraded: win rate {win_rate:.3f} stayed more than {self.margin} below its best {best:.3f} "
                f"for {self.patience} evaluations"
            )
        elif self.kl_budget is not None and result.get("kl", 0.0) > self.kl_budget:
            reason = f"kl budget: KL {result['kl']:.2f} > {self.kl_budget}"
        if reason is None:
            return False
        self.reasons[name] = reason
        if self.log_path:
            with self.log_path.open("a") as f:
                f.write(json.dumps({"trial_name": name, "step": result.get("step"), "reason": reason}) + "\n")
        return True

    def stop_all(self) -> bool:
        return False
