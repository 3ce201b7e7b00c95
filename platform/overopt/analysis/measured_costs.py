"""What each trial of a finished sweep cost, from its rows' timing columns, and what the degradation
stopper saved. Plain pandas, no Ray: analysis/costs.py assembles the report's cost section from it.

    held = holding(cfg)                                          # the devices one trial holds (overopt/trial_plan.py)
    costs = trial_costs(results, held, planned_fractions(cfg))  # one row per trial
    totals = cost_totals(costs, results, held)
    units = unit_costs(costs)                                    # per size: start-up, per step, per evaluation

What is counted. A trial holds, from its driver's start to its end, its Ray Train workers
(train.num_workers, each 1 GPU when training on GPUs, else train.cpus_per_worker CPUs), its evaluation
bundles (trial_plan.bundles_per_trial: one per scoring task and vLLM engine of every evaluation it may
have open at once, each the evaluation config's GPUs or CPUs) and its driver's CPU. Worker-seconds are
a phase's wall seconds x the devices held: GPU-seconds when training on GPUs (the training workers' and
the bundles' GPUs; CPUs are not counted), else CPU-seconds (the workers', the bundles' and the driver's
CPUs). Held, not busy: in inline mode the workers wait while an evaluation runs and the bundles wait
while training runs; ``busy_*`` says how much of the held time each group worked. Not counted: the
stages (SFT, the reference cache), time a trial waited for resources before its driver started, and
what a trial did after its last row (deleting its checkpoints; a failed trial's last steps).

The phases of a trial's wall time (its driver's trial_started_at to its last row's reported_at; a
trial run again by a new driver adds each driver's span), from the rows' timing columns:

    start-up    trial_started_at -> the first row's reported_at, less that evaluation's own
                evaluation_seconds: Ray Train's worker group, loading the model, DeepSpeed, writing the
                step-0 checkpoint. The trial's fixed cost. (A driver that restarted a trial starts at a
                trained step: that row's own training is taken out too, steps trained again stay in.)
    training    the sum over trained rows (step > 0) of interval_seconds - evaluation_wait_seconds: the
                training workers' own time between hand-overs (optimizer steps, writing each checkpoint)
    evaluation  the rest of the wall time: training paused for evaluations (inline) or over and waiting
                for the last ones. In inline mode close to the sum of evaluation_seconds (each evaluation:
                checkpoint taken -> metrics ready), which is reported beside it (``evaluating``).

Start-up, phase by phase (``STARTUP_PHASES``; the training workers stamp the first checkpoint they hand
over): the Ray Train worker group (trial_started_at -> the rank-0 worker function running), the model
and DeepSpeed (-> engine ready), the first checkpoint (-> in storage), and the rest of the start-up.

What the degradation stopper saved, an estimate: for each trial its driver stopped (stopped_at_step set,
from stops/<trial>.json), the steps it did not train, (planned_steps - trained_steps) x the trial's own
seconds per training step (training / the last row's step), plus the evaluations of the schedule
(overopt/schedule.py) past trained_steps that never ran x the trial's own median evaluation_seconds,
times the devices held. In async mode evaluations overlap training, so there it is an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from overopt.jsonsafe import json_safe
from overopt.schedule import evaluation_steps
from overopt.trial_plan import Holding

# What the cost of a trial is read from (sweep/trial.py and train/worker.py write them into every row).
TIMING_COLUMNS = ("trial_started_at", "reported_at", "evaluation_seconds", "interval_seconds", "evaluation_wait_seconds")


def missing_timings(rows: pd.DataFrame) -> list[str]:
    """The timing columns the rows lack (rows of the screen, or of a sweep older than these columns)."""
    return [c for c in TIMING_COLUMNS if c not in rows or not rows[c].notna().any()]


def _number(value) -> float:
    return float(value) if value is not None and pd.notna(value) else math.nan


def _training_seconds(rows: pd.DataFrame) -> pd.Series:
    """Each row's training: its interval less the time training waited for an evaluation in it."""
    wait = rows["evaluation_wait_seconds"].astype(float).fillna(0.0)
    return (rows["interval_seconds"].astype(float) - wait).clip(lower=0.0)


def trial_steps_per_epoch(trial: pd.DataFrame) -> int | None:
    """A trial's optimizer steps per epoch, read from its trained rows (None before any)."""
    trained = trial[(trial["step"] > 0) & (trial["epoch_fraction"] > 0)]
    if trained.empty:
        return None
    return int(round(float(trained["step"].iloc[0]) / float(trained["epoch_fraction"].iloc[0])))  # epoch_fraction = step / steps per epoch


# A trial's start-up, phase by phase (seconds), from the stamps the training workers put on the first
# checkpoint they hand over (train/worker.py) and the driver's trial_started_at. NaN where the rows have no
# stamps (an older run, or a driver that resumed a trial past step 0).
STARTUP_PHASES = {
    "startup_worker_group_seconds": "worker group",  # placement, worker processes and their imports, process group
    "startup_model_seconds": "model + DeepSpeed",  # model load and DeepSpeed initialisation
    "startup_checkpoint_seconds": "first checkpoint",  # pairs read, ZeRO-3 gather, upload
    "startup_other_seconds": "rest",  # hand-over to the driver, its evaluation queue, Tune's report
}


def startup_phases(opening: pd.Series, started_at: float) -> dict[str, float]:
    """The start-up phases of one driver's opening row (its first evaluation excluded)."""
    stamps = [started_at] + [_number(opening.get(key)) for key in ("worker_started_at", "engine_ready_at", "checkpoint_ready_at")]
    if int(_number(opening.get("step"))) != 0 or not all(math.isfinite(t) for t in stamps):
        return dict.fromkeys(STARTUP_PHASES, math.nan)
    total = float(opening["reported_at"]) - started_at - _number(opening["evaluation_seconds"])
    spans = [max(b - a, 0.0) for a, b in zip(stamps, stamps[1:])]
    return dict(zip(STARTUP_PHASES, [*spans, max(total - sum(spans), 0.0)]))


def trial_costs(rows: pd.DataFrame, held: Holding, fractions: list[float] | None = None) -> pd.DataFrame:
    """One row per trial: its phases in seconds, worker-seconds held, unit costs and (stopped trials) the
    estimated saving (module docstring). ``fractions``: the evaluation schedule, to count the evaluations
    a stopped trial never ran (None: not counted)."""
    missing = missing_timings(rows)
    if missing:
        raise ValueError(f"the rows lack the timing columns {', '.join(missing)}")
    out = []
    for name, trial in rows.groupby("trial_name", sort=False):
        trial = trial.sort_values("step")
        first = trial.iloc[0]
        training_of = _training_seconds(trial)
        wall = startup = 0.0
        phases = dict.fromkeys(STARTUP_PHASES, 0.0)
        for started, attempt in trial.groupby("trial_started_at"):  # one per driver that ran the trial
            earliest = int(attempt["reported_at"].argmin())  # its earliest row (NaN skipped, first of ties, as idxmin)
            opening = attempt.iloc[earliest]
            wall += float(attempt["reported_at"].max()) - _number(started)
            gap = float(opening["reported_at"]) - _number(started) - _number(opening["evaluation_seconds"])
            if opening["step"] > 0:  # a driver that restarted the trial: its first row's own training is training
                gap -= float(_training_seconds(attempt).iloc[earliest])
            startup += max(gap, 0.0)
            for phase, seconds in startup_phases(opening, _number(started)).items():
                phases[phase] += seconds
        training = float(training_of[trial["step"] > 0].sum())
        evaluating = float(trial["evaluation_seconds"].astype(float).sum())
        timed_steps = int(trial["step"].max())  # the steps the rows' intervals cover
        per_step = training / timed_steps if timed_steps else math.nan
        per_evaluation = float(trial["evaluation_seconds"].astype(float).median())
        planned = _number(trial["planned_steps"].max()) if "planned_steps" in trial else math.nan
        stopped = "stopped_at_step" in trial and pd.notna(first.get("stopped_at_step"))
        trained = _number(first.get("trained_steps")) if stopped else math.nan
        if math.isnan(trained) and "trained_steps_at_report" in trial:
            trained = _number(trial["trained_steps_at_report"].iloc[-1])
        if math.isnan(trained):
            trained = float(timed_steps)
        steps_saved = evaluations_saved = saved = math.nan
        if stopped and math.isfinite(planned):
            steps_saved = max(planned - trained, 0.0)
            per_epoch = trial_steps_per_epoch(trial)
            if fractions is not None and per_epoch:
                evaluations_saved = float(sum(1 for step in evaluation_steps(fractions, per_epoch) if trained < step <= planned))
            saved = steps_saved * per_step + (evaluations_saved * per_evaluation if math.isfinite(evaluations_saved) else 0.0)
        out.append(
            {
                "trial_name": name,
                **{key: first.get(key) for key in ("objective", "beta", "size", "seed")},
                "stopped": bool(stopped),
                "trained_steps": trained,
                "planned_steps": planned,
                "evaluations": len(trial),
                "drivers": int(trial["trial_started_at"].nunique()),
                "started_at": float(pd.to_numeric(trial["trial_started_at"]).min()),
                "wall_seconds": wall,
                "startup_seconds": startup,
                **phases,
                "training_seconds": training,
                "evaluation_seconds": max(wall - startup - training, 0.0),
                "evaluating_seconds": evaluating,
                "evaluating_share": evaluating / wall if wall > 0 else math.nan,
                "seconds_per_step": per_step,
                "seconds_per_evaluation": per_evaluation,
                "worker_seconds": wall * held.total,
                "steps_not_trained": steps_saved,
                "evaluations_not_run": evaluations_saved,
                "saved_seconds": saved,
                "saved_worker_seconds": saved * held.total,
            }
        )
    return pd.DataFrame(out)


@dataclass(frozen=True)
class CostTotals:
    """A sweep's costs summed over its trials (worker-seconds in ``held.unit``-seconds)."""

    held: Holding
    trials: int
    wall_seconds: float  # summed over trials (trials that ran at once each count)
    worker_seconds: float
    startup_worker_seconds: float
    training_worker_seconds: float
    evaluation_worker_seconds: float
    busy_training_worker_seconds: float  # the training workers' devices x training seconds
    busy_evaluation_worker_seconds: float  # the bundles' devices x the evaluations' own seconds
    median_startup_seconds: float  # a trial's fixed cost, median over trials
    median_seconds_per_evaluation: float  # over every evaluation
    evaluating_share: float  # the evaluations' own seconds / wall seconds, over all trials
    median_evaluating_share: float  # the same per trial, median over trials
    stopped: int
    saved_worker_seconds: float  # the stopper's saving, an estimate (stopped trials)
    unmeasured_stops: int  # stopped trials whose saving could not be estimated (no planned_steps)

    @property
    def unstopped_worker_seconds(self) -> float:
        """What the sweep would have cost had every stopped trial run to its planned end (an estimate)."""
        return self.worker_seconds + self.saved_worker_seconds

    @property
    def saved_share(self) -> float:
        return self.saved_worker_seconds / self.unstopped_worker_seconds if self.unstopped_worker_seconds > 0 else math.nan

    def to_dict(self) -> dict:
        out = {k: json_safe(v) for k, v in self.__dict__.items() if k != "held"}
        out["held"] = self.held.to_dict()
        out["unstopped_worker_seconds"], out["saved_share"] = json_safe(self.unstopped_worker_seconds), json_safe(self.saved_share)
        return out


def cost_totals(costs: pd.DataFrame, rows: pd.DataFrame, held: Holding) -> CostTotals:
    """``costs`` (trial_costs) summed; ``rows`` for the median over every evaluation."""
    stopped = costs[costs["stopped"]]
    wall = float(costs["wall_seconds"].sum())
    return CostTotals(
        held=held,
        trials=len(costs),
        wall_seconds=wall,
        worker_seconds=float(costs["worker_seconds"].sum()),
        startup_worker_seconds=float(costs["startup_seconds"].sum()) * held.total,
        training_worker_seconds=float(costs["training_seconds"].sum()) * held.total,
        evaluation_worker_seconds=float(costs["evaluation_seconds"].sum()) * held.total,
        busy_training_worker_seconds=float(costs["training_seconds"].sum()) * held.training,
        busy_evaluation_worker_seconds=float(costs["evaluating_seconds"].sum()) * held.evaluation,
        median_startup_seconds=float(costs["startup_seconds"].median()),
        median_seconds_per_evaluation=float(rows["evaluation_seconds"].astype(float).median()),
        evaluating_share=float(costs["evaluating_seconds"].sum()) / wall if wall > 0 else math.nan,
        median_evaluating_share=float(costs["evaluating_share"].median()),
        stopped=len(stopped),
        saved_worker_seconds=float(stopped["saved_worker_seconds"].fillna(0.0).sum()),
        unmeasured_stops=int(stopped["saved_worker_seconds"].isna().sum()),
    )


# ----------------------------------------------------------------------------------------------
# Unit costs per size


def unit_costs(costs: pd.DataFrame) -> pd.DataFrame:
    """Per size, medians over its trials: start-up seconds, seconds per training step, seconds per evaluation."""
    grouped = costs.groupby("size", sort=False)
    return pd.DataFrame(
        {
            "trials": grouped.size(),
            "startup_seconds": grouped["startup_seconds"].median(),
            "seconds_per_step": grouped["seconds_per_step"].median(),
            "seconds_per_evaluation": grouped["seconds_per_evaluation"].median(),
        }
    ).rename_axis("size")


def outcome_by_size(costs: pd.DataFrame) -> pd.DataFrame:
    """Per size, what ran: unit costs (medians over trials) and worker-seconds spent and had every stopped
    trial run to its end (spent + the estimated saving)."""
    rows = []
    for size, group in costs.groupby("size", sort=False):
        spent = float(group["worker_seconds"].sum())
        rows.append(
            {
                "size": size,
                "trials": len(group),
                "startup_seconds": float(group["startup_seconds"].median()),
                "seconds_per_step": float(group["seconds_per_step"].median()),
                "seconds_per_evaluation": float(group["seconds_per_evaluation"].median()),
                "worker_seconds": spent,
                "unstopped_worker_seconds": spent + float(group["saved_worker_seconds"].fillna(0.0).sum()),
            }
        )
    return pd.DataFrame(rows)
