"""The tables of report.md as DataFrames of display strings: the analyses' tables (summary.py,
correlations.py, goodhart.py, costs.py, toy_mdp.py) with their columns picked, headed in words and
their numbers written at fixed digits ('-' where missing, booleans yes/no).

    table = positions_table(peak_positions(results))   # then report_sections.markdown_table(table)

Nothing is computed here that the analyses did not compute; the sections (report_sections.py) put
these tables between their sentences.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from overopt.analysis.claims import FORM_NAMES
from overopt.analysis.costs import SweepCosts
from overopt.analysis.formatting import ci_text, num, percent, whole, yes_no

# goodhart.py's columns shown by shown(): in d, KL or tokens at 2 digits; other floats (win rates) at 3
TWO_DIGITS = set(
    "common_d_high d_at_pooled_peak d_at_own_peak own_d_max d_at_gold_peak step0_length length_at_largest_kl largest_kl growth".split()
)
MATCHED_COLUMNS = "size objective trials common_d_high pooled_peak d_at_pooled_peak at_common_end drop d_at_own_peak own_d_max falls_least"
PROXY_READINGS = "proxy_at_gold_peak proxy_last proxy_best proxy_kept_rising overshot_own_labels"
PROXY_COLUMNS = "objective size beta seed gold_peak d_at_gold_peak gold_fall gold_fell " + PROXY_READINGS
GROWTH_COLUMNS = "objective size beta trials step0_length length_at_largest_kl largest_kl growth"


def _digits(n: int):
    return lambda v: num(v, n)


def _beta(v) -> str:
    return f"{v:g}"


def shown(table: pd.DataFrame, columns: str) -> pd.DataFrame:
    """``table``'s ``columns`` (space-separated), headed in words: beta as given, TWO_DIGITS at 2 digits, other floats at 3,
    booleans yes/no, missing '-'."""

    def cell(value, column):
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        if isinstance(value, (bool, np.bool_)):
            return yes_no(value)
        spec = "g" if column == "beta" else ".2f" if column in TWO_DIGITS else ".3f"
        return f"{value:{spec}}" if isinstance(value, float) else str(value)

    return pd.DataFrame({column.replace("_", " "): [cell(v, column) for v in table[column]] for column in columns.split()})


def binned_table(curves: dict) -> pd.DataFrame:
    """Per objective: the step-0 win rate, each bin's win rate at its d, rise and fall with intervals, the KL reached."""
    return pd.DataFrame(
        [
            {
                "objective": c.objective,
                "step-0 win": num(c.step0_win_rate),
                "bins (win @ d)": " ".join(f"{w:.2f}@{d:.2f}" for w, d in zip(c.bin_win_rate, c.bin_d)),
                "rise": f"{num(c.rise)} {ci_text(c.rise_ci, 3)}",
                "fall": f"{num(c.fall)} {ci_text(c.fall_ci, 3)}",
                "max KL smallest beta": num(c.max_kl_smallest_beta, 2),
                "max KL largest beta": num(c.max_kl_largest_beta, 2),
            }
            for c in curves.values()
        ]
    )


def peaks_table(peaks: pd.DataFrame, objective: str) -> pd.DataFrame:
    """The objective's trials (summary.trial_peaks): peak, where and when, final win rate, KL reached, why it stopped."""
    rows = peaks[peaks["objective"] == objective]
    return rows.assign(
        peak_win_rate=rows["peak_win_rate"].map(num),
        d_at_peak=rows["d_at_peak"].map(_digits(2)),
        epoch_at_peak=rows["epoch_at_peak"].map(_digits(3)),
        final_win_rate=rows["final_win_rate"].map(num),
        max_kl=rows["max_kl"].map(_digits(2)),
    )[["size", "beta", "seed", "peak_win_rate", "d_at_peak", "epoch_at_peak", "final_win_rate", "max_kl", "stop_reason"]]


def fit_table(forms: dict, comparison) -> pd.DataFrame:
    """One (objective, size)'s three fitted forms: coefficients and d* with intervals, errors in and out of sample."""
    rows = []
    for form in ("rl", "bon", "quadratic"):
        fit = forms[form]
        rows.append(
            {
                "form": FORM_NAMES[form],
                "alpha": f"{num(fit.alpha)} {ci_text(fit.alpha_ci)}",
                "beta_f": f"{num(fit.beta_f)} {ci_text(fit.beta_f_ci)}",
                "d*": f"{num(fit.d_star, 2)} {ci_text(fit.d_star_ci)}",
                "predicted peak gain": num(fit.peak),
                "in-sample RMSE": num(fit.rmse),
                "R^2": num(fit.r2, 2),
                "leave-one-beta-out RMSE": num(comparison.rmse[form]) if comparison else "-",
            }
        )
    return pd.DataFrame(rows)


def gold_fits_table(gold_fits: dict) -> pd.DataFrame:
    """The RL fit of the gold reward per (objective, size)."""
    rows = []
    for (objective, size), forms in gold_fits.items():
        rl = forms["rl"]
        rows.append(
            {
                "objective / size": f"{objective} / {size}",
                "RL alpha": f"{num(rl.alpha)} {ci_text(rl.alpha_ci)}",
                "RL beta_f": f"{num(rl.beta_f)} {ci_text(rl.beta_f_ci)}",
                "d*": f"{num(rl.d_star, 2)} {ci_text(rl.d_star_ci)}",
                "R^2": num(rl.r2, 2),
                "peak": "identified" if rl.peak_identified() else "not identified",
            }
        )
    return pd.DataFrame(rows)


def positions_table(positions: pd.DataFrame) -> pd.DataFrame:
    """Per (objective, size, beta) (summary.peak_positions): the seed-averaged peak, the last evaluation, a clear decline."""
    return pd.DataFrame(
        {
            "objective": positions["objective"],
            "size": positions["size"],
            "beta": positions["beta"].map(_beta),
            "seeds": positions["seeds"],
            "peak epoch": positions["peak_epoch"].map(_digits(3)),
            "peak d": positions["peak_d"].map(_digits(2)),
            "peak win": positions["peak_win_rate"].map(num),
            "last epoch": positions["last_epoch"].map(_digits(3)),
            "last win": positions["last_win_rate"].map(num),
            "clear decline": positions["clear_decline"].map(yes_no),
        }
    )


def lengths_table(lengths: pd.DataFrame) -> pd.DataFrame:
    """Per size (correlations.length_exploitation): length_r2 and its correlations with KL, mean length with d."""
    return pd.DataFrame(
        {
            "size": lengths["size"],
            "evaluations": lengths["evaluations"],
            "mean length_r2": lengths["mean_length_r2"].map(num),
            "median KL": lengths["median_kl"].map(_digits(2)),
            "Spearman(length_r2, KL)": lengths["r2_vs_kl"].map(lambda c: c.text()),
            "Spearman(mean length, d)": lengths["length_vs_d"].map(lambda c: c.text()),
            "interval": lengths["r2_vs_kl"].map(lambda c: c.interval),
        }
    )


def training_table(training: pd.DataFrame) -> pd.DataFrame:
    """Per size and training metric (correlations.training_metrics_vs_win): its correlations with win rate."""
    return pd.DataFrame(
        {
            "size": training["size"],
            "metric": training["metric"],
            "evaluations": training["evaluations"],
            "Spearman": training["spearman"].map(lambda c: c.text()),
            "Pearson": training["pearson"].map(lambda c: c.text()),
            "interval": training["spearman"].map(lambda c: c.interval),
        }
    )


def sizes_table(sizes: pd.DataFrame) -> pd.DataFrame:
    """Per objective and size (summary.size_effect): KL reached and where the trials peak."""
    return pd.DataFrame(
        {
            "objective": sizes["objective"],
            "size": sizes["size"],
            "trials": sizes["trials"],
            "max KL": sizes["max_kl"].map(_digits(2)),
            "median max KL": sizes["median_max_kl"].map(_digits(2)),
            "median peak epoch": sizes["median_peak_epoch"].map(_digits(3)),
            "median peak d": sizes["median_peak_d"].map(_digits(2)),
            "smallest beta": sizes["smallest_beta"].map(_beta),
            "its max KL": sizes["smallest_beta_max_kl"].map(_digits(2)),
            "its peak epoch": sizes["smallest_beta_peak_epoch"].map(_digits(3)),
        }
    )


def toy_table(toy: dict) -> pd.DataFrame:
    """The toy MDP's runs (toy_mdp.summary_rows): probability mass outside the data at the start and the end."""
    from overopt.analysis.toy_mdp import summary_rows

    return pd.DataFrame(
        [
            {
                "policy": row["parametrisation"],
                "objective": row["objective"],
                "beta": f"{row['beta']:g}",
                "mass outside the data: start": f"{row['outside_start']:.3f}",
                "end": f"{row['outside_end']:.3f}",
                "final loss": f"{row['loss_end']:.4f}",
            }
            for row in summary_rows(toy)
        ]
    )


def trial_costs_table(costs: pd.DataFrame, unit: str) -> pd.DataFrame:
    """Per trial (costs.trial_costs): seconds by phase, seconds per step and per evaluation, worker-seconds, the saving."""
    return pd.DataFrame(
        {
            "trial": costs["trial_name"],
            "stopped": costs["stopped"].map(yes_no),
            "steps": [
                f"{t:.0f}/{p:.0f}" if math.isfinite(p) else f"{t:.0f}" for t, p in zip(costs["trained_steps"], costs["planned_steps"])
            ],
            "evaluations": costs["evaluations"],
            "wall s": costs["wall_seconds"].map(_digits(1)),
            "start-up s": costs["startup_seconds"].map(_digits(1)),
            "training s": costs["training_seconds"].map(_digits(1)),
            "evaluation s": costs["evaluation_seconds"].map(_digits(1)),
            "evaluating": costs["evaluating_share"].map(percent),
            "s / step": costs["seconds_per_step"].map(_digits(3)),
            "s / evaluation": costs["seconds_per_evaluation"].map(_digits(2)),
            unit: costs["worker_seconds"].map(whole),
            f"saved {unit} (est.)": costs["saved_worker_seconds"].map(whole),
        }
    )


def estimate_table(sweep: SweepCosts, unit: str) -> pd.DataFrame:
    """Per size: the dry-run's estimate (sweep.estimate) beside this sweep's outcome (sweep.outcome)."""
    assert sweep.estimate is not None and sweep.outcome is not None, "no estimate to compare"
    outcome = sweep.outcome.set_index("size")
    rows = []
    for row in sweep.estimate.to_dict("records"):
        got = outcome.loc[row["size"]] if row["size"] in outcome.index else None

        def ran(column: str, digits: int, got=got) -> str:
            return num(float(got[column]), digits) if got is not None else "-"

        unstopped = float(got["unstopped_worker_seconds"]) if got is not None else math.nan
        rows.append(
            {
                "size": row["size"],
                "start-up s: est. / ran": f"{num(row['startup_seconds'], 1)} / {ran('startup_seconds', 1)}",
                "s / step: est. / ran": f"{num(row['seconds_per_step'], 3)} / {ran('seconds_per_step', 3)}",
                "s / evaluation: est. / ran": f"{num(row['seconds_per_evaluation'], 2)} / {ran('seconds_per_evaluation', 2)}",
                f"{unit} est. (to the end)": whole(row["worker_seconds"]),
                f"{unit} had no trial stopped": whole(unstopped),
                f"{unit} spent": whole(float(got["worker_seconds"])) if got is not None else "-",
                "no stop / est.": num(unstopped / row["worker_seconds"], 2) if row["worker_seconds"] else "-",  # the estimate's error
                "spent / est.": num(float(got["worker_seconds"]) / row["worker_seconds"], 2)
                if got is not None and row["worker_seconds"]
                else "-",
            }
        )
    return pd.DataFrame(rows)
