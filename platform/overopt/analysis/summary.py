"""Tidy summaries of an experiment's evaluation rows: per-trial peaks, binned curves, fits.

Input is the results table (one row per evaluation: objective, beta, size, seed, step,
epoch_fraction, kl, d, win_rate, ...). Pure pandas/numpy/scipy; no Ray.

The binned curve is how the over-optimization hump is read off pooled data: all evaluations of one
objective (every beta, size and seed) sorted by d = sqrt(KL) and split into equal-count bins. The
rise is the best bin's mean win rate minus the step-0 (reference) win rate; the fall is the best
bin's mean minus the highest-d bin's mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from overopt.analysis.fits import ScalingFit, compare_fits

REFERENCE_WIN_RATE = 0.5  # the reference judged against its own samples wins half the time


def trial_peaks(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its best evaluation (peak win rate, d and epoch fraction there), its last KL."""
    keys = ["objective", "size", "beta", "seed"]
    rows = []
    for key, trial in results.groupby(keys, sort=True):
        best = trial.loc[trial["win_rate"].idxmax()]
        rows.append(
            {
                **dict(zip(keys, key)),
                "peak_win_rate": best["win_rate"],
                "d_at_peak": best["d"],
                "epoch_at_peak": best["epoch_fraction"],
                "final_win_rate": trial.sort_values("step")["win_rate"].iloc[-1],
                "max_kl": trial["kl"].max(),
                "evaluations": len(trial),
                "stop_reason": trial["stop_reason"].iloc[0] if "stop_reason" in trial else "",
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class BinnedCurve:
    objective: str
    step0_win_rate: float  # mean win rate of the step-0 (reference) evaluations
    bin_d: list[float]  # mean d of each equal-count bin, low to high
    bin_win_rate: list[float]
    best_bin: int
    rise: float  # best bin - step 0
    fall: float  # best bin - highest-d bin
    max_kl_smallest_beta: float
    max_kl_largest_beta: float

    def to_dict(self) -> dict:
        return asdict(self)


def binned_curve(results: pd.DataFrame, objective: str, n_bins: int = 6) -> BinnedCurve:
    """Pool every evaluation of ``objective`` and bin it by d into ``n_bins`` equal-count bins."""
    rows = results[results["objective"] == objective].sort_values("d", kind="stable")
    if len(rows) < n_bins:
        raise ValueError(f"objective {objective!r} has {len(rows)} evaluations, fewer than {n_bins} bins")
    bins = np.array_split(np.arange(len(rows)), n_bins)
    bin_win = [float(rows["win_rate"].iloc[b].mean()) for b in bins]
    bin_d = [float(rows["d"].iloc[b].mean()) for b in bins]
    best = int(np.argmax(bin_win))
    step0 = float(rows.loc[rows["step"] == 0, "win_rate"].mean())
    betas = sorted(rows["beta"].unique())
    return BinnedCurve(
        objective=objective,
        step0_win_rate=step0,
        bin_d=bin_d,
        bin_win_rate=bin_win,
        best_bin=best,
        rise=bin_win[best] - step0,
        fall=bin_win[best] - bin_win[-1],
        max_kl_smallest_beta=float(rows.loc[rows["beta"] == betas[0], "kl"].max()),
        max_kl_largest_beta=float(rows.loc[rows["beta"] == betas[-1], "kl"].max()),
    )


def fit_curves(results: pd.DataFrame, n_bootstrap: int = 200, seed: int = 0) -> dict[tuple[str, str], dict[str, ScalingFit]]:
    """RL, best-of-n and quadratic fits of win-rate gain vs d, per (objective, size), all betas pooled."""
    fits = {}
    for (objective, size), rows in results.groupby(["objective", "size"], sort=True):
        rows = rows[np.isfinite(rows["win_rate"])]
        gain = rows["win_rate"].to_numpy() - REFERENCE_WIN_RATE
        try:
            fits[(objective, size)] = compare_fits(rows["d"].to_numpy(), gain, n_bootstrap=n_bootstrap, seed=seed)
        except ValueError:
            continue  # too few distinct points to identify a curve: reported as "no fit"
    return fits
