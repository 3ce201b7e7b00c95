"""DegradationStopper: the degradation rule (sweep/degradation.py) as a Tune stopper.

Each trial driver applies the rule to its own rows, stops its training and records the stop itself
(sweep/trial.py). This stopper applies the same rule to the same rows as Tune receives them, so it
reaches the same decisions: it is the cluster-wide backstop, and its ``reasons`` are what the sweep's
progress line reports as stopped (sweep/progress.py).
"""

from __future__ import annotations

from collections.abc import Callable

from ray import tune

from overopt.sweep.degradation import DegradationRule


class DegradationStopper(tune.Stopper):
    """Stop a trial clearly past its peak, or past an optional KL budget (sweep/degradation.py).

    ``history(trial_name)`` returns the rows a trial reported before the sweep's driver restarted:
    a resumed trial does not report them to Tune again, and the rule needs them to decide as before.
    """

    def __init__(
        self,
        margin: float,
        patience_epochs: float,
        kl_budget: float | None = None,
        history: Callable[[str], list[dict]] | None = None,
    ):
        self.rule = DegradationRule(margin, patience_epochs, kl_budget, history=history)

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
        return self.rule.observe(result.get("trial_name", trial_id), result) is not None

    def stop_all(self) -> bool:
        return False
