"""What a person watching a sweep sees: one line per evaluation, trial counts and time left.

The estimate of time left is (seconds per evaluation so far) x (evaluations still planned), where a
stopped or finished trial plans no more; it is rough early on and sharpens as trials finish.
"""

from __future__ import annotations

import time

from ray import tune


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _say(line: str) -> None:
    print(line, flush=True)  # a module function, not a stored callable: Tune pickles its callbacks


class SweepProgress(tune.Callback):
    def __init__(self, total_trials: int, evaluations_per_trial: int, stopper=None):
        self.total_trials, self.evaluations_per_trial = total_trials, evaluations_per_trial
        self.stopper = stopper
        self.names: dict[str, str] = {}  # trial id -> our trial name (the key of the stopper's reasons)
        self.started = time.time()
        self.evaluations: dict[str, int] = {}  # trial id -> evaluations done
        self.ended: dict[str, str] = {}  # trial id -> "done" | "stopped" | "error"

    def _status(self) -> str:
        done = sum(v == "done" for v in self.ended.values())
        stopped = sum(v == "stopped" for v in self.ended.values())
        errored = sum(v == "error" for v in self.ended.values())
        running = len(set(self.evaluations) - set(self.ended))
        n_evals = sum(self.evaluations.values())
        remaining_evals = sum(
            self.evaluations_per_trial - self.evaluations.get(t, 0) for t in set(self.evaluations) - set(self.ended)
        ) + self.evaluations_per_trial * (self.total_trials - len(set(self.evaluations) | set(self.ended)))
        elapsed = time.time() - self.started
        eta = _clock(elapsed / n_evals * remaining_evals) if n_evals else "?"
        text = f"trials {done} done, {stopped} stopped, {running} running, {self.total_trials - len(self.evaluations)} queued"
        if errored:
            text += f", {errored} FAILED"
        return f"{text} | {n_evals} evaluations | {_clock(elapsed)} elapsed, ~{eta} left"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "win_rate" not in result:
            return
        self.evaluations[trial.trial_id] = self.evaluations.get(trial.trial_id, 0) + 1
        self.names[trial.trial_id] = result.get("trial_name", trial.trial_id)
        proxy = result.get("proxy_win_rate", float("nan"))
        _say(
            f"[{result.get('objective')} beta={result.get('beta')} {result.get('size')} seed={result.get('seed')}] "
            f"epoch {result.get('epoch_fraction', 0):.3f}: KL {result.get('kl', float('nan')):.2f} "
            f"win {result.get('win_rate', float('nan')):.3f}"
            + (f" proxy {proxy:.3f}" if proxy == proxy else "")  # the labeller's (or proxy model's) win rate, when there is one
            + f" len {result.get('mean_length', float('nan')):.1f}  || {self._status()}"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        stopped = self.stopper is not None and self.names.get(trial.trial_id) in self.stopper.reasons
        self.ended[trial.trial_id] = "stopped" if stopped else "done"

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "error"
        _say(f"trial {trial.trial_id} FAILED: see {trial.local_path or trial.path}  || {self._status()}")
