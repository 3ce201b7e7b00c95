"""The degradation rule: has a trial's quality clearly fallen past its own peak? No Ray here.

The trial driver (sweep/trial.py) applies it to its own rows as they arrive, stops training and
records the stop where it decides it; ``DegradationStopper`` (sweep/stopper.py) applies the same rule
in Tune, as the cluster-wide backstop.

Every evaluation row carries its own uncertainty (``win_rate_low`` / ``win_rate_high``: the 95 %
interval of the judged win rate, Wilson in the built-in evaluation). An evaluation counts as
*clearly worse* than the trial's running best (the evaluation with the highest win rate so far) when
both hold:

  * the point estimates differ by more than ``margin``:  win_rate < best.win_rate - margin, and
  * the two intervals separate:                          win_rate_high < best.win_rate_low.

Interval separation is the test (rather than a two-proportion z-test) because it uses whatever
interval the evaluation produced (Wilson, bootstrap, an LLM judge's with invalid answers dropped)
without needing its n or its tie structure, and because it is conservative: two 95 % intervals of
equal width separate only at about p < 0.006 for the difference. Conservative is what a stopper
needs: the running best is a maximum over noisy evaluations and therefore biased upward, and a
trial stopped on noise loses its decline for good. With 128 judged prompts (interval half-width
~0.085 at 0.5) a drop has to be ~0.17 to count; a 0.7 -> 0.4 decline does, sampling noise around a
flat 0.5 essentially never does (tests/unit/test_stopper.py simulates both).

Patience is measured in training, not in evaluations, because evaluations are spaced unevenly
(geometric early, then every 1/8 epoch, then every half epoch): the trial is stopped when its current
streak of clearly-worse evaluations spans at least ``patience_epochs`` of epoch fraction, i.e.
``epoch_fraction(now) - epoch_fraction(first evaluation of the streak) >= patience_epochs``. Any
evaluation that is not clearly worse (including a new best) ends the streak. ``patience_epochs = 0``
stops at the first clearly-worse evaluation. The decline is therefore recorded before the stop.

Optionally a trial is also stopped once its KL to the reference exceeds ``kl_budget`` (nats).

Each stop's reason is kept in ``reasons`` (by trial name). ``history`` (trial name -> its stored
rows) lets a rule of a sweep run again after its driver died start each resumed trial from the rows
reported before.

Rows are Tune results; the keys read are trial_name, step, epoch_fraction, win_rate, win_rate_low,
win_rate_high and kl. A row without a (finite) win rate is no evidence about quality (only its KL
is checked against the budget). A row with a win rate but without an interval is treated as an
interval of zero width; a row with a win rate but without ``epoch_fraction`` is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class _Evaluation:
    """The part of an evaluation row the rule needs."""

    epoch: float
    win_rate: float
    low: float
    high: float

    @classmethod
    def from_row(cls, row: dict) -> _Evaluation:
        win_rate = float(row["win_rate"])
        if not _finite(row.get("epoch_fraction")):
            raise ValueError(
                "the degradation rule: an evaluation row with a win rate must carry a finite epoch_fraction "
                f"(patience is measured in epochs); got {row.get('epoch_fraction')!r} in trial {row.get('trial_name')!r}"
            )
        low = float(row["win_rate_low"]) if _finite(row.get("win_rate_low")) else win_rate
        high = float(row["win_rate_high"]) if _finite(row.get("win_rate_high")) else win_rate
        return cls(float(row["epoch_fraction"]), win_rate, low, high)

    def text(self) -> str:
        return f"{self.win_rate:.3f} [{self.low:.3f}, {self.high:.3f}] at epoch {self.epoch:.3f}"


class DegradationRule:
    """Whether each trial is clearly past its peak (see the module docstring), or past an optional KL budget."""

    def __init__(
        self,
        margin: float,
        patience_epochs: float,
        kl_budget: float | None = None,
        history: Callable[[str], list[dict]] | None = None,
    ):
        if not (margin >= 0 and patience_epochs >= 0):
            raise ValueError(f"the degradation rule needs margin >= 0 and patience_epochs >= 0, got {margin}, {patience_epochs}")
        if kl_budget is not None and not kl_budget > 0:
            raise ValueError(f"the degradation rule: kl_budget must be positive or None, got {kl_budget}")
        self.margin, self.patience_epochs, self.kl_budget = float(margin), float(patience_epochs), kl_budget
        self.history = history  # trial name -> its rows already stored (a sweep run again after its driver died)
        self._replayed: set[str] = set()
        self.best: dict[str, _Evaluation] = {}  # trial name -> its evaluation with the highest win rate
        self.streak_start: dict[str, _Evaluation] = {}  # trial name -> first evaluation of the current streak
        self.reasons: dict[str, str] = {}

    def clearly_worse(self, evaluation: _Evaluation, best: _Evaluation) -> bool:
        """Below the best by more than the margin AND with separated intervals."""
        return evaluation.win_rate < best.win_rate - self.margin and evaluation.high < best.low

    def observe(self, name: str, result: dict) -> str | None:
        """The reason to stop trial ``name`` at this row, or None to go on."""
        if self.history is not None and name not in self._replayed:
            # A resumed trial does not report its earlier rows again: its running best comes from storage.
            self._replayed.add(name)
            earlier = [row for row in self.history(name) if _finite(row.get("step")) and row["step"] < result.get("step", math.inf)]
            for row in sorted(earlier, key=lambda row: row["step"]):
                if _finite(row.get("win_rate")):
                    self._degradation(name, _Evaluation.from_row(row))
        reason = None
        if _finite(result.get("win_rate")):
            reason = self._degradation(name, _Evaluation.from_row(result))
        if reason is None and self.kl_budget is not None and _finite(result.get("kl")) and result["kl"] > self.kl_budget:
            reason = f"kl budget: KL {result['kl']:.2f} > {self.kl_budget}"
        if reason is not None:
            self.reasons[name] = reason
        return reason

    def _degradation(self, name: str, evaluation: _Evaluation) -> str | None:
        best = self.best.get(name)
        if best is None or evaluation.win_rate > best.win_rate:
            self.best[name] = evaluation
            self.streak_start.pop(name, None)
            return None
        if not self.clearly_worse(evaluation, best):
            self.streak_start.pop(name, None)
            return None
        start = self.streak_start.setdefault(name, evaluation)
        span = evaluation.epoch - start.epoch
        if span + 1e-12 < self.patience_epochs:
            return None
        return (
            f"degraded: win rate {evaluation.text()} below its best {best.text()} by more than {self.margin} "
            f"with separated intervals, since epoch {start.epoch:.3f} ({span:.3f} >= {self.patience_epochs} epochs)"
        )
