"""Turn a finished experiment into fits.json, plots and report.md, and print a terminal summary.

    python jobs/analyze.py runs/embedded-<hash>          # or a storage URI, e.g. s3://bucket/overopt/embedded-<hash>

Reads the experiment's rows through overopt.analysis.results.load_results (results.parquet, or the
rows/ of an unfinished sweep; results.partial.parquet as a last resort); nothing here re-runs a model.
Outputs are written into the experiment directory (for a remote URI: drawn in a temporary directory,
then written to the storage location file by file). Every analysis is computed from the result rows, for any config
(embedded or real; gold_reward is NaN unless the judge is the synthetic task's gold judge):

    pooled hump          per objective, equal-count bins of d (summary.binned_curve)
    fits                 RL / best-of-n / quadratic-in-KL per (objective, size), trial-bootstrap intervals,
                         in-sample RMSE and R^2 and leave-one-beta-out error; the preferred form is the one
                         with the lowest held-out error (fits.compare_held_out)
    intra-epoch peaks    per (objective, size, beta): epoch fraction and d of the peak (summary.peak_positions)
    length exploitation  per size: length_r2 vs KL, mean length vs d (correlations.length_exploitation)
    training metrics     per size: implicit accuracy and loss vs win rate (correlations.training_metrics_vs_win)
    size effect          per objective and size: KL reached, peak position (summary.size_effect); the
                         largest size against the smallest beside the DAA paper's finding (goodhart.size_vs_paper)
    matched distance     per size, objectives compared where they moved the policy equally far (matched.py)
    proxy and gold       per trial: did the proxy (the training pairs' labeller) hold where gold fell
                         (goodhart.proxy_and_gold); length growth from step 0 to the largest KL (goodhart.length_growth)
    gold reward fits     as the win-rate fits, where the rows carry a gold reward (gold_reward: the gold
                         judge's; a reward model's scores are reward_model_score, a proxy, never fitted as gold)
    costs                worker-seconds per trial and in all (start-up, training, evaluation), what the
                         degradation stopper saved, the dry-run's estimate against the outcome (costs.py)
    toy MDP              the DAA paper's out-of-distribution example (toy_mdp.py): it does not depend on
                         the experiment and takes seconds, so it is run into the experiment directory
                         when toy_mdp.json is not there yet (``toy_mdp=False`` / --no-toy-mdp skips it)

The baseline of every gain is the measured step-0 win rate of the same objective and size (see
summary.py); claims in the report are worded from the intervals (a peak is only called identified when
beta_f's interval excludes 0 and the bootstrap resamples turn over).

This module reads the rows, runs the analyses above and writes the files. The wording lives beside it:
claims.py (sentences from the fits' intervals), report_tables.py (the tables as DataFrames of display
strings), report_sections.py (report.md's sections in markdown, costs included) and report_inputs.py
(the data, failed-trial and judged-example sections, read from the experiment's storage).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from overopt.analysis.claims import BASELINE_TEXT, BOOTSTRAP_TEXT, fit_claims
from overopt.analysis.correlations import length_exploitation, training_metrics_vs_win
from overopt.analysis.costs import SweepCosts, experiment_costs
from overopt.analysis.formatting import percent, whole
from overopt.analysis.goodhart import goodhart_tables
from overopt.analysis.matched import matched_verdict
from overopt.analysis.plots import draw_all
from overopt.analysis.report_inputs import inputs_sections
from overopt.analysis.report_sections import costs_section, report_body
from overopt.analysis.summary import (
    binned_curve,
    fit_curves,
    held_out_comparisons,
    peak_positions,
    reference_baselines,
    size_effect,
    trial_peaks,
)
from overopt.jsonsafe import dumps, json_safe


def load_results(experiment: str | Path) -> pd.DataFrame:
    """The experiment's evaluation rows (see analysis/results.py), or results.partial.parquet if no rows remain."""
    from overopt.analysis.results import load_results as load_stored
    from overopt.storage import Storage

    try:
        return load_stored(str(experiment))
    except RuntimeError:  # no rows/ (e.g. an experiment written before rows were stored one file each)
        store = Storage(str(experiment))
        if store.exists("results.partial.parquet"):
            return store.read_parquet("results.partial.parquet").to_pandas()
        raise


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-safe records; objects with to_dict() (correlations) become dicts, nan becomes None."""
    return json_safe(frame.to_dict(orient="records"))


def analyze(experiment: str | Path, n_bootstrap: int = 200, log=print, toy_mdp: bool = True) -> Path | str:
    """Write fits.json, the PNG plots and report.md into ``experiment`` (a directory or a storage URI);
    returns the report's path (its URI for a remote location)."""
    from overopt.storage import Storage, is_uri

    location = str(experiment)
    store = Storage(location)
    remote = is_uri(location) and not store.local
    if not store.exists(""):
        raise FileNotFoundError(f"experiment directory {location} does not exist")
    results = load_results(location)
    inputs = inputs_sections(store, results)
    costs = experiment_costs(location, results)  # what the sweep cost, what stopping saved, against the dry-run's estimate
    if not remote:
        report = _analyze_into(Path(store.path()), results, n_bootstrap, log, toy_mdp, Path(store.path()).name, inputs, costs)
        log(f"report: {report}")
        return report
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        for name in ("toy_mdp.json", "toy_mdp.png"):  # reuse a toy MDP run already stored there
            if store.exists(name):
                (out / name).write_bytes(store.read_bytes(name))
        _analyze_into(out, results, n_bootstrap, log, toy_mdp, location.split("?")[0].rstrip("/").rsplit("/", 1)[-1], inputs, costs)
        for path in sorted(out.iterdir()):
            store.write_bytes(path.name, path.read_bytes())
    log(f"report: {store.uri('report.md')}")  # where it stays: the scratch directory is gone
    return store.uri("report.md")


def _analyze_into(
    experiment: Path,
    results: pd.DataFrame,
    n_bootstrap: int,
    log,
    toy_mdp: bool,
    title: str,
    inputs: Sequence[str] = (),
    costs: SweepCosts | None = None,
) -> Path:
    """Every analysis of ``results``, written into the local directory ``experiment``."""
    peaks = trial_peaks(results)
    baselines = reference_baselines(results)
    fits = fit_curves(results, n_bootstrap=n_bootstrap)
    comparisons = held_out_comparisons(results, n_bootstrap=n_bootstrap)
    curves = {}
    for objective in dict.fromkeys(results["objective"]):
        try:
            curves[objective] = binned_curve(results, objective, n_bootstrap=n_bootstrap)
        except ValueError:
            continue  # fewer trained evaluations than bins
    positions = peak_positions(results)
    sizes = size_effect(results)
    lengths = length_exploitation(results, n_bootstrap=n_bootstrap)
    training = training_metrics_vs_win(results, n_bootstrap=n_bootstrap)
    gold_fits = fit_curves(results, n_bootstrap=n_bootstrap, metric="gold_reward") if _has(results, "gold_reward") else {}
    toy = _toy_mdp(experiment, log) if toy_mdp else _read_toy_mdp(experiment)
    claims = fit_claims(fits, comparisons, results)
    goodhart = goodhart_tables(results)

    (experiment / "fits.json").write_text(
        dumps(
            {
                "baseline": {
                    "definition": BASELINE_TEXT,
                    "values": {f"{o}/{s}": b.to_dict() for (o, s), b in baselines.items()},
                },
                "bootstrap": BOOTSTRAP_TEXT,
                "fits": {f"{o}/{s}": {form: fit.to_dict() for form, fit in forms.items()} for (o, s), forms in fits.items()},
                "held_out": {f"{o}/{s}": c.to_dict() for (o, s), c in comparisons.items()},
                "claims": claims,
                "binned": {o: c.to_dict() for o, c in curves.items()},
                "peak_positions": _records(positions),
                "size_effect": _records(sizes),
                "length_exploitation": _records(lengths),
                "training_metrics_vs_win": _records(training),
                "gold_reward_fits": {
                    f"{o}/{s}": {form: fit.to_dict() for form, fit in forms.items()} for (o, s), forms in gold_fits.items()
                },
                "toy_mdp": "toy_mdp.json" if toy else None,
                "matched_d": {m: {"table": _records(t), "verdict": matched_verdict(t)} for m, t in goodhart.matched.items()},
                "proxy_and_gold": _records(goodhart.proxy),
                "length_growth": _records(goodhart.length),
                "size_vs_paper": {"table": _records(goodhart.sizes), "statements": goodhart.size_lines},
                "costs": costs.to_dict() if costs is not None else None,
            },
            indent=2,
        )
    )
    plots = draw_all(results, fits, experiment, baselines=baselines, peaks=positions, training_correlations=training)
    if toy and (experiment / "toy_mdp.png").exists():
        plots.append(experiment / "toy_mdp.png")
    report = experiment / "report.md"
    report.write_text(
        report_body(
            title, results, peaks, fits, comparisons, claims, curves, positions, sizes, lengths, training, gold_fits, toy, plots, goodhart
        )
        + "\n".join(costs_section(costs) if costs is not None else [])
        + "\n".join(inputs)
    )
    _print_summary(peaks, curves, comparisons, log)
    if costs is not None and costs.totals is not None and costs.held is not None:
        totals, unit = costs.totals, f"{costs.held.unit}-seconds"
        log(
            f"cost: {whole(totals.worker_seconds)} {unit}; the stopper saved about {whole(totals.saved_worker_seconds)} ({percent(totals.saved_share)})"
        )
    return report


def _has(results: pd.DataFrame, column: str) -> bool:
    return column in results and bool(np.isfinite(results[column].astype(float)).any())


def _read_toy_mdp(experiment: Path) -> dict | None:
    path = experiment / "toy_mdp.json"
    return json.loads(path.read_text()) if path.exists() else None


def _toy_mdp(experiment: Path, log) -> dict | None:
    existing = _read_toy_mdp(experiment)
    if existing is not None and (experiment / "toy_mdp.png").exists():
        return existing
    from overopt.analysis.toy_mdp import write_toy_mdp

    log("running the toy MDP (a few seconds) ...")
    json_path, _ = write_toy_mdp(experiment)
    return json.loads(json_path.read_text())


def _print_summary(peaks: pd.DataFrame, curves: dict, comparisons: dict, log) -> None:
    log("")
    log(f"{'objective':<9} {'size':<7} {'beta':>6} {'peak win':>9} {'d@peak':>7} {'epoch@peak':>10} {'max KL':>7}  stop")
    for row in peaks.itertuples(index=False):
        log(
            f"{row.objective:<9} {row.size:<7} {row.beta:>6g} {row.peak_win_rate:>9.3f} {row.d_at_peak:>7.2f} "
            f"{row.epoch_at_peak:>10.3f} {row.max_kl:>7.2f}  {row.stop_reason}"
        )
    for c in curves.values():
        log(
            f"{c.objective}: step-0 win {c.step0_win_rate:.3f}, best bin {c.bin_win_rate[c.best_bin]:.3f} "
            f"(rise {c.rise:+.3f}), highest-d bin {c.bin_win_rate[-1]:.3f} (fall {c.fall:+.3f})"
        )
    for (objective, size), comparison in comparisons.items():
        if comparison.preferred:
            log(
                f"{objective}/{size}: preferred form by leave-one-beta-out error: {comparison.preferred} "
                f"({'distinguishable' if comparison.distinguishable else 'not distinguishable'} from {comparison.runner_up})"
            )
