"""Tidy summaries of an experiment's evaluation rows: baselines, peaks, binned curves, fits, sizes.

Input is the results table (one row per evaluation: objective, beta, size, seed, step,
epoch_fraction, kl, d, win_rate, win_rate_low, win_rate_high, ...). Pure pandas/numpy; no Ray.

Baseline (one choice, used everywhere: the fits, the rise and fall, the plots' reference line)
    The gain of an evaluation is its win rate minus the *measured* step-0 win rate: the mean win rate
    of the step-0 rows (the reference model itself) of the same objective and size. By construction
    the reference judged against its own samples wins 0.5 in expectation, but the measured value is
    what this eval set and judge give (with "dataset_references" as the comparison it is not 0.5 at
    all), and subtracting it removes the judge's bias from every gain. Only when a (objective, size)
    has no step-0 row (e.g. a partial table) does the baseline fall back to 0.5, and the source says so.
    The fits' bootstrap re-measures the baseline in each resample (``recentre_on``).

Trials
    A trial is (objective, beta, size, seed): its evaluations share one training trajectory, so
    bootstrap intervals resample whole trials (``trial_keys``), never single evaluations.

Binned curve (the pooled hump)
    All trained evaluations (step > 0) of one objective, every beta, size and seed, sorted by
    d = sqrt(KL) and split into equal-count bins. rise = the best bin's mean gain; fall = the best
    bin's mean gain minus the highest-d bin's. (With one size, rise = best bin's win rate - step-0
    win rate.) Optional trial-bootstrap intervals, simultaneous over the bins (a maximum over bins is
    positive on a flat curve by selection alone): a model-free check that the data rise and fall.

Peak positions (intra-epoch over-optimization)
    Per (objective, size, beta) the seed-averaged win rate at each evaluated epoch fraction; the peak
    is its maximum: epoch fraction, d (seed-averaged) and win rate there, the last evaluation, and
    whether the decline from the peak to the last evaluation is clear (the last evaluation's interval
    lies below the peak's; seed-averaged bounds, which is conservative).

Size effect
    Per (objective, size): the KL reached (max over trials, median of the trials' max) and where the
    peaks sit (median over trials of the peak's epoch fraction and d).

One module: every summary starts from the same gains and trials (``with_gain``, ``trial_keys``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from overopt.analysis.fits import (
    MIN_GROUPS_FOR_BOOTSTRAP,
    HeldOutComparison,
    ScalingFit,
    compare_fits,
    compare_held_out,
)
from overopt.jsonsafe import json_safe

REFERENCE_WIN_RATE = 0.5  # fallback baseline only: the reference judged against its own samples, in expectation
TRIAL_KEYS = ["objective", "beta", "size", "seed"]
GROUP_KEYS = ["objective", "size"]


# ----------------------------------------------------------------------------------------------
# Baseline and gains


@dataclass(frozen=True)
class Baseline:
    value: float  # the score the gains are measured from
    n: int  # step-0 evaluations averaged (0 for the fallback)
    source: str  # "step-0 mean" or "fallback 0.5 (no step-0 evaluation)"

    def to_dict(self) -> dict:
        """JSON-safe: nan (a metric other than the win rate, without step-0 evaluations) becomes None."""
        return json_safe(asdict(self))


def _by_group(rows: pd.DataFrame) -> Iterator[tuple[tuple[str, str], pd.DataFrame]]:
    """((objective, size), its rows) for each group, in sorted order."""
    for (objective, size), group in rows.groupby(GROUP_KEYS, sort=True):
        yield (str(objective), str(size)), group


def _finite_rows(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    return results[np.isfinite(results[metric].astype(float)) & np.isfinite(results["d"].astype(float))]


def reference_baselines(results: pd.DataFrame, metric: str = "win_rate") -> dict[tuple[str, str], Baseline]:
    """Per (objective, size): the mean ``metric`` of its step-0 rows (fallback: 0.5 for win rate, else nan)."""
    baselines: dict[tuple[str, str], Baseline] = {}
    for key, rows in _by_group(results):
        step0 = rows.loc[rows["step"] == 0, metric].astype(float)
        step0 = step0[np.isfinite(step0)]
        if len(step0):
            baselines[key] = Baseline(float(step0.mean()), int(len(step0)), "step-0 mean")
        elif metric == "win_rate":
            baselines[key] = Baseline(REFERENCE_WIN_RATE, 0, "fallback 0.5 (no step-0 evaluation)")
        else:
            baselines[key] = Baseline(math.nan, 0, "none (no step-0 evaluation)")
    return baselines


def with_gain(results: pd.DataFrame, metric: str = "win_rate") -> pd.DataFrame:
    """A copy of ``results`` with columns ``baseline`` and ``gain`` (= metric - baseline of its objective/size)."""
    baselines = reference_baselines(results, metric)
    out = results.copy()
    out["baseline"] = [baselines[key].value for key in zip(out["objective"], out["size"])]
    out["gain"] = out[metric].astype(float) - out["baseline"]
    return out


def trial_keys(results: pd.DataFrame) -> list[tuple]:
    """The trial (objective, beta, size, seed) of every row: the bootstrap's resampling unit."""
    return list(zip(*(results[k] for k in TRIAL_KEYS)))


# ----------------------------------------------------------------------------------------------
# Per trial


def trial_peaks(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its best evaluation (peak win rate, d and epoch fraction there), its last KL."""
    keys = ["objective", "size", "beta", "seed"]
    rows = []
    for key, trial in _finite_rows(results, "win_rate").groupby(keys, sort=True):
        best = trial.iloc[trial["win_rate"].argmax()]  # the first best row, as idxmax
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


# ----------------------------------------------------------------------------------------------
# Pooled per objective


@dataclass(frozen=True)
class BinnedCurve:
    objective: str
    step0_win_rate: float  # mean win rate of the objective's step-0 (reference) evaluations
    bin_d: list[float]  # mean d of each equal-count bin of trained evaluations, low to high
    bin_win_rate: list[float]
    bin_gain: list[float]  # mean gain (win rate - its objective/size's step-0 baseline)
    best_bin: int  # the bin with the highest mean gain
    rise: float  # best bin's gain (over the step-0 baseline)
    fall: float  # best bin's gain - highest-d bin's gain
    max_kl_smallest_beta: float
    max_kl_largest_beta: float
    rise_ci: tuple[float, float] = (math.nan, math.nan)  # trial-bootstrap 95 % intervals (n_bootstrap > 0)
    fall_ci: tuple[float, float] = (math.nan, math.nan)

    def to_dict(self) -> dict:
        """JSON-safe: nan becomes None."""
        return json_safe(asdict(self))


def _rise_and_fall(d: np.ndarray, gain: np.ndarray, n_bins: int) -> tuple[float, float, list[np.ndarray]]:
    """(rise, fall, bins) of trained points: equal-count bins by d, best bin's mean gain, minus the last bin's."""
    order = np.argsort(d, kind="stable")
    bins = np.array_split(order, n_bins)
    means = np.array([gain[b].mean() for b in bins])
    best = int(np.argmax(means))
    return float(means[best]), float(means[best] - means[-1]), bins


def binned_curve(results: pd.DataFrame, objective: str, n_bins: int = 6, n_bootstrap: int = 0, seed: int = 0) -> BinnedCurve:
    """Pool every trained evaluation (step > 0) of ``objective`` and bin it by d into equal-count bins.

    With n_bootstrap > 0, rise and fall get 95 % percentile intervals from resampling whole trials
    (simultaneous over the bins, so that selecting the best bin does not make noise look like a hump).
    """
    all_rows = with_gain(_finite_rows(results[results["objective"] == objective], "win_rate"))
    trained = (all_rows["step"] > 0).to_numpy()
    if trained.sum() < n_bins:
        raise ValueError(f"objective {objective!r} has {int(trained.sum())} trained evaluations, fewer than {n_bins} bins")
    d, win, gain = (all_rows[c].to_numpy(float) for c in ("d", "win_rate", "gain"))
    rise, fall, bins = _rise_and_fall(d[trained], gain[trained], n_bins)
    trained_index = np.flatnonzero(trained)
    bin_gain = [float(gain[trained_index[b]].mean()) for b in bins]
    step0 = all_rows.loc[all_rows["step"] == 0, "win_rate"]
    betas = sorted(all_rows["beta"].unique())
    rise_ci = fall_ci = (math.nan, math.nan)
    if n_bootstrap > 0:
        rise_ci, fall_ci = _binned_bootstrap(all_rows, n_bins, n_bootstrap, seed)
    return BinnedCurve(
        objective=objective,
        step0_win_rate=float(step0.mean()) if len(step0) else math.nan,
        bin_d=[float(d[trained_index[b]].mean()) for b in bins],
        bin_win_rate=[float(win[trained_index[b]].mean()) for b in bins],
        bin_gain=bin_gain,
        best_bin=int(np.argmax(bin_gain)),
        rise=rise,
        fall=fall,
        max_kl_smallest_beta=float(all_rows.loc[all_rows["beta"] == betas[0], "kl"].max()),
        max_kl_largest_beta=float(all_rows.loc[all_rows["beta"] == betas[-1], "kl"].max()),
        rise_ci=rise_ci,
        fall_ci=fall_ci,
    )


def _binned_bootstrap(rows: pd.DataFrame, n_bins: int, n_bootstrap: int, seed: int):
    """Simultaneous 95 % intervals for rise = max_k b_k and fall = max_k (b_k - b_last), b_k the bins' mean gains.

    rise and fall are maxima over bins, so they come out positive on a flat curve by selection alone;
    an interval that re-selects the best bin in each resample stays above 0 too. Instead the bins (their
    d edges) are those of the full data, whole trials are resampled (step-0 baselines re-measured), and
    q = the 95th percentile of max_k |b*_k - b_k| (of the contrasts, for the fall) over resamples gives
    bands b_k +- q that hold for all bins at once; hence max_k b_k +- q for the maximum.
    """
    trial_of = pd.factorize(pd.Series(trial_keys(rows)))[0]
    size_of = pd.factorize(rows["size"])[0]
    members = [np.flatnonzero(trial_of == t) for t in range(trial_of.max() + 1)]
    if len(members) < MIN_GROUPS_FOR_BOOTSTRAP:
        return (math.nan, math.nan), (math.nan, math.nan)
    d, win = rows["d"].to_numpy(float), rows["win_rate"].to_numpy(float)
    step0 = (rows["step"] == 0).to_numpy()
    trained_d = np.sort(d[~step0])
    edges = [trained_d[b[0]] for b in np.array_split(np.arange(trained_d.size), n_bins)][1:]
    bin_of = np.searchsorted(edges, d, side="right")  # the full data's bins, by d
    fixed = rows["baseline"].to_numpy(float)  # the fallback where a size has no step-0 row at all

    def bin_means(index: np.ndarray) -> np.ndarray | None:
        baseline = fixed[index].copy()
        for size in np.unique(size_of[index]):
            in_size = size_of[index] == size
            reference = in_size & step0[index]
            if reference.any():
                baseline[in_size] = win[index][reference].mean()
        gain, trained, k = win[index] - baseline, ~step0[index], bin_of[index]
        means = np.array([gain[trained & (k == b)].mean() if (trained & (k == b)).any() else np.nan for b in range(n_bins)])
        return None if np.isnan(means).any() else means

    full = bin_means(np.arange(len(rows)))
    if full is None:
        return (math.nan, math.nan), (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    rise_deviation, fall_deviation = [], []
    for _ in range(n_bootstrap):
        means = bin_means(np.concatenate([members[t] for t in rng.integers(0, len(members), size=len(members))]))
        if means is None:
            continue
        rise_deviation.append(np.max(np.abs(means - full)))
        fall_deviation.append(np.max(np.abs((means[:-1] - means[-1]) - (full[:-1] - full[-1]))))
    if not rise_deviation:
        return (math.nan, math.nan), (math.nan, math.nan)
    rise, fall = float(full.max()), float(max(0.0, (full[:-1] - full[-1]).max()))
    q_rise, q_fall = float(np.percentile(rise_deviation, 95)), float(np.percentile(fall_deviation, 95))
    return (rise - q_rise, rise + q_rise), (fall - q_fall, fall + q_fall)


# ----------------------------------------------------------------------------------------------
# Fits per (objective, size)


def fit_curves(
    results: pd.DataFrame, n_bootstrap: int = 200, seed: int = 0, metric: str = "win_rate"
) -> dict[tuple[str, str], dict[str, ScalingFit]]:
    """RL, best-of-n and quadratic fits of gain vs d per (objective, size), all betas pooled.

    gain = metric - the step-0 baseline (see the module docstring); the bootstrap resamples whole
    trials and re-measures the baseline in each resample.
    """
    fits: dict[tuple[str, str], dict[str, ScalingFit]] = {}
    for key, rows in _by_group(with_gain(_finite_rows(results, metric), metric)):
        if not np.isfinite(rows["baseline"].iloc[0]):
            continue
        step0 = (rows["step"] == 0).to_numpy()
        try:
            fits[key] = compare_fits(
                rows["d"].to_numpy(float),
                rows["gain"].to_numpy(float),
                n_bootstrap=n_bootstrap,
                seed=seed,
                groups=trial_keys(rows),
                recentre_on=step0 if step0.any() else None,
            )
        except ValueError:
            continue  # too few distinct points to identify a curve: reported as "no fit"
    return fits


def held_out_comparisons(
    results: pd.DataFrame, n_bootstrap: int = 200, seed: int = 0, metric: str = "win_rate"
) -> dict[tuple[str, str], HeldOutComparison]:
    """Leave-one-beta-out comparison of the three forms per (objective, size) with at least two betas.

    Every beta's trained evaluations (step > 0) are predicted by fits on the other betas' rows
    (gains against the common step-0 baseline); the interval on the RMSE difference resamples trials.
    """
    comparisons: dict[tuple[str, str], HeldOutComparison] = {}
    for key, rows in _by_group(with_gain(_finite_rows(results, metric), metric)):
        if rows["beta"].nunique() < 2 or not np.isfinite(rows["baseline"].iloc[0]):
            continue
        try:
            comparisons[key] = compare_held_out(
                rows["d"].to_numpy(float),
                rows["gain"].to_numpy(float),
                folds=rows["beta"].tolist(),
                groups=trial_keys(rows),
                evaluate=(rows["step"] > 0).to_numpy(),
                n_bootstrap=n_bootstrap,
                seed=seed,
            )
        except ValueError:
            continue
    return comparisons


# ----------------------------------------------------------------------------------------------
# Where the peaks are


def peak_positions(results: pd.DataFrame) -> pd.DataFrame:
    """Per (objective, size, beta): the seed-averaged curve's peak (epoch fraction, d, win rate) and last point."""
    out = []
    rows = _finite_rows(results, "win_rate")
    for (objective, size, beta), group in rows.groupby(["objective", "size", "beta"], sort=True):
        curve = (
            group.groupby("epoch_fraction", sort=True)
            .agg(
                win_rate=("win_rate", "mean"),
                low=("win_rate_low", "mean"),
                high=("win_rate_high", "mean"),
                d=("d", "mean"),
                seeds=("seed", "nunique"),
            )
            .reset_index()
        )
        peak = curve.iloc[curve["win_rate"].argmax()]  # the first best row, as idxmax
        last = curve.iloc[-1]
        is_last = peak["epoch_fraction"] == last["epoch_fraction"]
        out.append(
            {
                "objective": objective,
                "size": size,
                "beta": beta,
                "seeds": int(group["seed"].nunique()),
                "evaluations": len(curve),
                "peak_epoch": float(peak["epoch_fraction"]),
                "peak_d": float(peak["d"]),
                "peak_win_rate": float(peak["win_rate"]),
                "last_epoch": float(last["epoch_fraction"]),
                "last_d": float(last["d"]),
                "last_win_rate": float(last["win_rate"]),
                "peak_at_start": bool(peak["epoch_fraction"] == curve["epoch_fraction"].iloc[0]),
                "peak_at_end": bool(is_last),
                # the last evaluation's interval lies below the peak's (seed-averaged bounds)
                "clear_decline": bool(not is_last and last["high"] < peak["low"]),
            }
        )
    return pd.DataFrame(out)


def size_effect(results: pd.DataFrame) -> pd.DataFrame:
    """Per (objective, size): KL reached and where the trials' peaks sit (epoch fraction, d)."""
    peaks = trial_peaks(_finite_rows(results, "win_rate"))
    out = []
    for (objective, size), trials in peaks.groupby(["objective", "size"], sort=False):
        smallest = trials[trials["beta"] == trials["beta"].min()]
        out.append(
            {
                "objective": objective,
                "size": size,
                "trials": len(trials),
                "max_kl": float(trials["max_kl"].max()),
                "median_max_kl": float(trials["max_kl"].median()),
                "median_peak_epoch": float(trials["epoch_at_peak"].median()),
                "median_peak_d": float(trials["d_at_peak"].median()),
                "smallest_beta": float(smallest["beta"].iloc[0]),
                "smallest_beta_max_kl": float(smallest["max_kl"].median()),
                "smallest_beta_peak_epoch": float(smallest["epoch_at_peak"].median()),
            }
        )
    order = {s: i for i, s in enumerate(dict.fromkeys(results["size"]))}
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    return frame.sort_values(["objective", "size"], key=lambda c: c.map(order) if c.name == "size" else c).reset_index(drop=True)
