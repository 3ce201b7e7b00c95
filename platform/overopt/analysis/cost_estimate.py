"""What a config will cost before it runs: the estimate ``jobs/scale_sweep.py --dry-run`` prints
(sweep/plan.py ``describe_costs``) and the report sets beside the outcome (analysis/costs.py). No Ray here.

    measured = earlier_measurements(cfg.storage, cfg)            # earlier experiments of the config family
    table = estimate(counts, pooled_units(measured), holding(cfg))
    lines = estimate_lines(counts, holding(cfg), measured, concurrent, resources_per_trial(cfg), cfg.storage)

The plan's counts (trials, steps and evaluations per trial, devices per trial: overopt/trial_plan.py)
x per-size seconds (a trial's start-up, per training step, per evaluation: medians over trials,
analysis/measured_costs.py ``unit_costs``) measured by the latest earlier experiment in the same storage
that ran the size and whose config differs from this one only in settings that change how many trials,
steps or evaluations run, not what one costs (``COUNT_ONLY``). Without such a measurement the seconds
are unknown; nothing is assumed. The estimate is of every trial run to its planned end: the stopper
can only make the outcome cheaper.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from overopt.analysis.measured_costs import missing_timings, trial_costs, trial_steps_per_epoch, unit_costs
from overopt.trial_plan import Holding, holding, planned_trials, steps_and_evaluations

if TYPE_CHECKING:
    from overopt.config import ExperimentConfig

# Settings that change how many trials, steps or evaluations a sweep runs (or only name and file it), not
# what one step, one evaluation or a trial's start-up costs: experiments that differ only in these are one
# config family, and one's measured seconds estimate the other's. Pydantic's exclude format. Seconds are
# measured per size, so models.sizes is left out; sft.checkpoints (which model a size is) stays in.
COUNT_ONLY: dict[str, Any] = {  # pydantic's IncEx
    "name": True,
    "seed": True,
    "storage": True,
    "tracking": True,
    "models": {"sizes": True},
    "sft": {"enabled", "steps", "steps_by_size", "batch_size", "lr", "num_workers", "cpus_per_worker", "micro_batch_size"}
    | {"gradient_checkpointing"},  # the SFT stage, not the trials
    "data": {
        "seed": True,
        "sft": True,
        "pairs": {"limit": True},
        "synthetic": {"demonstrations": True, "preference_pairs": True, "labeller": True},
    },
    "train": {"objectives", "betas", "objective_kwargs", "epochs", "lr", "warmup_steps", "max_grad_norm"},
    "evaluation": {"early_fractions", "fractions_per_epoch_1", "fractions_after_epoch_1"},
    "sweep": {"seeds", "size_objectives", "stopper"},
}


@dataclass(frozen=True)
class SizeCounts:
    """What the plan runs of one size: trials, and each trial's optimizer steps and evaluations."""

    trials: int
    steps: int
    evaluations: int


def estimate(counts: dict[str, SizeCounts], units: pd.DataFrame, held: Holding) -> pd.DataFrame:
    """Per size: each trial's wall seconds if run to its planned end (start-up + steps x seconds per step
    + evaluations x seconds per evaluation) and the size's worker-seconds by phase; NaN where ``units``
    (unit_costs of earlier experiments) has no measurement of the size."""
    out = []
    by_size = units.to_dict("index")  # one row per size
    for size, count in counts.items():
        unit = by_size.get(size)
        startup, per_step, per_evaluation = (
            (float(unit["startup_seconds"]), float(unit["seconds_per_step"]), float(unit["seconds_per_evaluation"]))
            if unit is not None
            else (math.nan,) * 3
        )
        phases = {"startup": startup, "training": count.steps * per_step, "evaluation": count.evaluations * per_evaluation}
        wall = sum(phases.values())
        out.append(
            {
                "size": size,
                "trials": count.trials,
                "steps": count.steps,
                "evaluations": count.evaluations,
                "startup_seconds": startup,
                "seconds_per_step": per_step,
                "seconds_per_evaluation": per_evaluation,
                "wall_seconds_per_trial": wall,
                "worker_seconds": count.trials * wall * held.total,
                **{f"{phase}_worker_seconds": count.trials * seconds * held.total for phase, seconds in phases.items()},
            }
        )
    return pd.DataFrame(out)


def family(cfg: ExperimentConfig) -> dict:
    """The settings one trial's cost depends on: experiments equal in these are one config family."""
    return cfg.model_dump(mode="json", exclude=COUNT_ONLY)


@dataclass(frozen=True)
class Measurement:
    """An earlier experiment of the same config family: where it is, when it ran, its unit costs per size."""

    experiment: str
    started_at: float  # its first trial_started_at
    finished_at: float  # its last reported_at
    units: pd.DataFrame  # unit_costs


def measurement(location: str, cfg: ExperimentConfig, results: pd.DataFrame) -> Measurement | None:
    """``results`` of the experiment at ``location`` (config ``cfg``) as a measurement; None without timings."""
    if missing_timings(results):
        return None
    costs = trial_costs(results, holding(cfg))
    return Measurement(location, float(results["trial_started_at"].min()), float(results["reported_at"].max()), unit_costs(costs))


def earlier_measurements(storage: str, cfg: ExperimentConfig, before: float | None = None, exclude: str | None = None) -> list[Measurement]:
    """The experiments in ``storage`` (its direct sub-directories with a config.yaml) of ``cfg``'s config
    family whose rows carry timings, oldest first; ``before``: only those whose last row came before this
    unix time; ``exclude``: an experiment directory name to leave out (the one being analysed)."""
    import pyarrow.fs as pafs
    import yaml
    from pydantic import ValidationError

    from overopt.analysis.results import load_results
    from overopt.config import ExperimentConfig
    from overopt.storage import Storage

    store = Storage(storage)
    if not store.exists(""):
        return []
    wanted, found = family(cfg), []
    for info in store.fs.get_file_info(pafs.FileSelector(store.path(), recursive=False)):
        name = info.base_name
        if info.type != pafs.FileType.Directory or name == exclude or not store.exists(f"{name}/config.yaml"):
            continue
        try:
            other = ExperimentConfig.model_validate(yaml.safe_load(store.read_text(f"{name}/config.yaml")))
        except (ValidationError, yaml.YAMLError, TypeError):
            continue  # a config of an older schema: not known to be the same family
        if family(other) != wanted:
            continue
        try:
            measured = measurement(store.uri(name), other, load_results(store.uri(name)))
        except (OSError, RuntimeError, ValueError, KeyError):
            continue  # no rows yet, or rows this code cannot read: no measurement
        if measured is not None and (before is None or measured.finished_at < before):
            found.append(measured)
    return sorted(found, key=lambda m: m.finished_at)


def pooled_units(measurements: list[Measurement]) -> pd.DataFrame:
    """Per size, the unit costs of the latest measurement that has the size (hardware and code change:
    the most recent run is the best guess)."""
    units: dict[Hashable, pd.Series] = {}
    for measured in measurements:  # oldest first: a later one replaces an earlier one's sizes
        for size, row in measured.units.iterrows():
            units[size] = row
    return pd.DataFrame(units.values(), index=pd.Index(list(units), name="size")) if units else pd.DataFrame()


# ----------------------------------------------------------------------------------------------
# The dry-run's lines


def estimate_lines(
    counts: dict[str, SizeCounts],
    held: Holding,
    measurements: list[Measurement],
    concurrent: int,
    resources: dict[str, float],
    storage: str,
) -> list[str]:
    """What ``--dry-run`` prints about the sweep's cost: the counts always, seconds only where an earlier
    experiment of the config family measured them."""
    trials = sum(c.trials for c in counts.values())
    steps = sum(c.trials * c.steps for c in counts.values())
    evaluations = sum(c.trials * c.evaluations for c in counts.values())
    slots = ", ".join(f"{v * concurrent:g} {k}" for k, v in resources.items())
    lines = ["  cost:"]
    for size, c in counts.items():
        lines.append(
            f"    {size}: {c.trials} trials x {c.steps} steps and {c.evaluations} evaluations = {c.trials * c.steps} steps, "
            f"{c.trials * c.evaluations} evaluations"
        )
    lines.append(
        f"    in all {trials} trials, {steps} training steps, {evaluations} evaluations (every trial run to its planned end); "
        f"worker slots: {concurrent} trial(s) at once hold {slots}"
    )
    lines.append(f"    worker-seconds = wall seconds x {held.text()}")
    units = pooled_units(measurements)
    if units.empty:
        lines.append(
            f"    seconds: unknown until a run measures them (no earlier experiment of this config family with timed rows in {storage})"
        )
        return lines
    names = ", ".join(m.experiment.rstrip("/").rsplit("/", 1)[-1] for m in measurements)
    lines.append(
        f"    seconds measured by {len(measurements)} earlier experiment(s) of this config family ({names}); per size, medians over trials:"
    )
    table = estimate(counts, units, held)
    for row in table.to_dict("records"):
        if not math.isfinite(row["wall_seconds_per_trial"]):
            lines.append(f"    {row['size']}: seconds unknown (no earlier experiment of the family ran this size)")
            continue
        lines.append(
            f"    {row['size']}: start-up {row['startup_seconds']:.1f} s + {row['steps']} x {row['seconds_per_step']:.3g} s/step + "
            f"{row['evaluations']} x {row['seconds_per_evaluation']:.3g} s/evaluation = {row['wall_seconds_per_trial']:,.0f} s per trial; "
            f"{row['trials']} trials: {row['worker_seconds']:,.0f} {held.unit}-s"
        )
    known = table[np.isfinite(table["wall_seconds_per_trial"])]
    phases = "; ".join(f"{phase} {known[f'{phase}_worker_seconds'].sum():,.0f}" for phase in ("startup", "training", "evaluation"))
    what = "in all" if len(known) == len(table) else f"the measured sizes ({', '.join(known['size'])})"
    lines.append(
        f"    estimate, {what}: {known['worker_seconds'].sum():,.0f} {held.unit}-seconds ({known['worker_seconds'].sum() / 3600:,.1f} "
        f"{held.unit}-hours; {phases}); at {concurrent} trial(s) at once about {(known['trials'] * known['wall_seconds_per_trial']).sum() / concurrent:,.0f} s "
        "of sweep wall time after the stages; stopped trials make it less"
    )
    return lines


# ----------------------------------------------------------------------------------------------
# The counts of an experiment that ran


def planned_counts(cfg: ExperimentConfig, store, results: pd.DataFrame) -> tuple[dict[str, SizeCounts], str]:
    """The plan's counts of the experiment at ``store`` (config ``cfg``, rows ``results``) as the dry-run made
    them (overopt/trial_plan.py), the pairs counted as it counted them; and where the counts came from, in words."""
    pairs, counts_from = None, "the config (synthetic pairs: its preference_pairs, an upper bound, as the dry-run counts them)"
    if cfg.data.pairs.source != "synthetic":
        read = None
        if store.exists("data_summary.json"):
            stats: dict[str, Any] | None = next(iter(json.loads(store.read_text("data_summary.json")).values()), {})
            read = ((stats or {}).get("pairs") or {}).get("read") or {}
        if read and read.get("rows_kept"):
            pairs, counts_from = int(read["rows_kept"]), "the config and the pairs the data stage read (data_summary.json)"
        else:  # the pairs count is not recorded: the trials' own steps per epoch
            per_epoch = next((n for n in (trial_steps_per_epoch(t) for _, t in results.groupby("trial_name")) if n), 1)
            pairs, counts_from = per_epoch * cfg.train.batch_size, "the config and the trials' own steps per epoch"
    steps, evaluations = steps_and_evaluations(cfg, pairs)
    trials = planned_trials(cfg)
    return {size: SizeCounts(sum(t["size"] == size for t in trials), steps, evaluations) for size in cfg.models.sizes}, counts_from
