"""An experiment's costs, for the report: what its sweep cost (analysis/measured_costs.py) beside what
``--dry-run`` would have estimated before it ran (analysis/cost_estimate.py). No Ray here.

    sweep = experiment_costs("runs/embedded-<hash>", results)   # the report's section (analysis/report_sections.py)
    sweep.to_dict()                                              # its numbers in fits.json
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from overopt.analysis.cost_estimate import earlier_measurements, estimate, planned_counts, pooled_units
from overopt.analysis.measured_costs import CostTotals, cost_totals, missing_timings, outcome_by_size, trial_costs
from overopt.jsonsafe import json_safe
from overopt.trial_plan import Holding, holding, planned_fractions


@dataclass(frozen=True)
class SweepCosts:
    """Everything the report's cost section renders (analysis/report_sections.py); ``missing`` says why it is empty."""

    missing: str | None
    held: Holding | None = None
    costs: pd.DataFrame | None = None
    totals: CostTotals | None = None
    estimate: pd.DataFrame | None = None  # per size, from earlier experiments of the family (None: no measurement)
    outcome: pd.DataFrame | None = None  # per size, this experiment's unit costs and worker-seconds, run and unstopped
    measurements: tuple[str, ...] = ()  # the earlier experiments the estimate came from
    counts_from: str = ""  # where the estimate's counts came from

    def to_dict(self) -> dict:
        if self.missing:
            return {"missing": self.missing}
        assert self.costs is not None and self.totals is not None and self.outcome is not None, "costs without their tables"
        return {
            "per_trial": _records(self.costs),
            "totals": self.totals.to_dict(),
            "estimate": _records(self.estimate) if self.estimate is not None else None,
            "outcome": _records(self.outcome),
            "measured_by": list(self.measurements),
            "counts_from": self.counts_from,
        }


def experiment_costs(location: str, results: pd.DataFrame) -> SweepCosts:
    """The costs of the experiment at ``location`` (its config.yaml, stops are in ``results``), and the
    estimate ``--dry-run`` would have printed before it ran: its config's counts x the unit costs of the
    experiments of its family in the same storage that had finished before its first trial started."""
    missing = missing_timings(results)
    if missing:
        return SweepCosts(f"the rows carry no {', '.join(missing)} (written by the screen, or by a sweep older than these columns)")
    from overopt.storage import Storage

    store = Storage(location)
    if not store.exists("config.yaml"):
        return SweepCosts("no config.yaml beside the rows: what a trial held is not known")
    import yaml
    from pydantic import ValidationError

    from overopt.config import ExperimentConfig

    try:
        cfg = ExperimentConfig.model_validate(yaml.safe_load(store.read_text("config.yaml")))
    except (ValidationError, yaml.YAMLError, TypeError) as error:
        return SweepCosts(f"its config.yaml does not read as this code's config ({str(error).splitlines()[0]})")
    held = holding(cfg)
    costs = trial_costs(results, held, planned_fractions(cfg))
    totals = cost_totals(costs, results, held)
    base, _, query = location.partition("?")
    parent, _, name = base.rstrip("/").rpartition("/")
    parent = (parent or ".") + (f"?{query}" if query else "")
    measured = earlier_measurements(parent, cfg, before=float(results["trial_started_at"].min()), exclude=name)
    table, counts_from = None, ""
    if measured:
        counts, counts_from = planned_counts(cfg, store, results)
        table = estimate(counts, pooled_units(measured), held)
    return SweepCosts(
        None,
        held,
        costs,
        totals,
        table,
        outcome_by_size(costs),
        tuple(m.experiment.rstrip("/").rsplit("/", 1)[-1] for m in measured),
        counts_from,
    )


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: json_safe(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
