"""Objectives compared at matched distance d = sqrt(KL) instead of at equal nominal beta. No Ray here.

Beta is no common currency across objectives: at the same beta IPO moves the policy much less far than
DPO does, so a smaller per-trial fall (best minus last win rate) at equal beta may only mean that the
trial stopped earlier on the same curve. Here every curve is read as a function of d:

    trial curve     a trial's evaluations sorted by d (a KL estimate may dip between evaluations, so d
                    need not grow with the step; evaluations at equal d are averaged), interpolated
                    linearly on a grid of d, only inside the trial's own observed range [min d, max d]:
                    no extrapolation, NaN outside it.
    pooled curve    per (size, objective), at each grid d: the mean over the objective's trials whose
                    range covers that d. Which trials contribute changes along d (at large d only the
                    smaller betas remain), so the pooled curve can step where a trial's range ends.
    common range    per size: the d range every compared objective reaches, from the largest of the
                    objectives' smallest d to the smallest of their largest d.
    per objective   on a grid over the common range: the pooled peak (value and d), the pooled value at
                    the end of the common range, drop = peak - that value; the objective with the
                    smallest drop falls least at matched d. Also where the objective's pooled curve
                    peaks over its own whole range (``d_at_own_peak``) and how far it reaches.

``metric`` is a column of the results table: ``win_rate`` (the gold judge's) or ``proxy_win_rate`` (the
labeller that made the training pairs), both read the same way.

    table = compare_at_matched_d(results)                              # every objective, per size
    table = compare_at_matched_d(results, objectives=("dpo", "ipo", "slic"), metric="proxy_win_rate")
    print(matched_verdict(table))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

TRIAL_KEYS = ["objective", "beta", "size", "seed"]
METRIC_NAMES = {"win_rate": "gold win rate", "proxy_win_rate": "proxy win rate"}
N_GRID = 101  # grid points per range: finer than any experiment's evaluations along d

MATCHED_COLUMNS = [
    "size",
    "objective",
    "metric",
    "trials",
    "common_d_low",
    "common_d_high",
    "pooled_peak",
    "d_at_pooled_peak",
    "at_common_end",
    "drop",
    "d_at_own_peak",
    "own_d_max",
    "falls_least",
]


def has_metric(results: pd.DataFrame, metric: str) -> bool:
    """Whether ``results`` has the column ``metric`` with at least one finite value."""
    return metric in results and bool(np.isfinite(pd.to_numeric(results[metric], errors="coerce").astype(float)).any())


def _finite(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    if not has_metric(results, metric):
        return results.iloc[0:0]
    values = pd.to_numeric(results[metric], errors="coerce").astype(float)
    return results[np.isfinite(values) & np.isfinite(results["d"].astype(float))]


def trial_curve(d: ArrayLike, values: ArrayLike, grid: ArrayLike) -> np.ndarray:
    """``values`` read at each point of ``grid``: linear interpolation of the curve (d, value) sorted by d,
    with values at equal d averaged; NaN outside [min d, max d] and where there is no finite point."""
    at = np.asarray(grid, float)
    points = pd.DataFrame({"d": np.asarray(d, float), "value": np.asarray(values, float)})
    points = points[np.isfinite(points["d"]) & np.isfinite(points["value"])]
    out = np.full(at.shape, math.nan)
    if points.empty:
        return out
    curve = points.groupby("d", sort=True)["value"].mean()
    xs, ys = curve.index.to_numpy(float), curve.to_numpy(float)
    inside = (at >= xs[0]) & (at <= xs[-1])
    out[inside] = np.interp(at[inside], xs, ys)
    return out


def _grid(low: float, high: float, observed: ArrayLike, n_grid: int) -> np.ndarray:
    """``n_grid`` even points from ``low`` to ``high`` and every observed d between them: a pooled curve is
    piecewise linear with its corners at observed d, so its peak is on this grid, not between two points."""
    seen = np.asarray(observed, float)
    return np.union1d(np.linspace(low, high, n_grid), seen[(seen >= low) & (seen <= high)])


def _pooled(trials: pd.DataFrame, metric: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean over the covering trials, number of covering trials) at each grid point."""
    curves = np.array([trial_curve(rows["d"], rows[metric], grid) for _, rows in trials.groupby(TRIAL_KEYS, sort=True)])
    covering = np.isfinite(curves).sum(axis=0)
    total = np.where(np.isfinite(curves), curves, 0.0).sum(axis=0)
    return np.where(covering > 0, total / np.maximum(covering, 1), math.nan), covering


def trial_curves(results: pd.DataFrame, metric: str = "win_rate", n_grid: int = N_GRID) -> pd.DataFrame:
    """Tidy: every trial's curve on its size's grid (the grid of ``pooled_curves``); columns objective, beta,
    size, seed, d and ``metric``; NaN outside the trial's range."""
    rows = _finite(results, metric)
    parts = []
    for _, in_size in rows.groupby("size", sort=False):
        grid = _grid(in_size["d"].min(), in_size["d"].max(), in_size["d"], n_grid)
        for key, trial in in_size.groupby(TRIAL_KEYS, sort=True):
            parts.append(pd.DataFrame({**dict(zip(TRIAL_KEYS, key)), "d": grid, metric: trial_curve(trial["d"], trial[metric], grid)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*TRIAL_KEYS, "d", metric])


def pooled_curves(results: pd.DataFrame, metric: str = "win_rate", n_grid: int = N_GRID) -> pd.DataFrame:
    """Tidy: per (size, objective) the pooled curve (module docstring) on the size's grid (``n_grid`` even
    points from the size's smallest to its largest d, and every observed d); columns size, objective, d,
    ``metric`` and trials (how many trials cover that d)."""
    rows = _finite(results, metric)
    parts = []
    for size, in_size in rows.groupby("size", sort=False):
        grid = _grid(in_size["d"].min(), in_size["d"].max(), in_size["d"], n_grid)
        for objective, trials in in_size.groupby("objective", sort=False):
            mean, covering = _pooled(trials, metric, grid)
            parts.append(pd.DataFrame({"size": size, "objective": objective, "d": grid, metric: mean, "trials": covering}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["size", "objective", "d", metric, "trials"])


def compare_at_matched_d(
    results: pd.DataFrame, metric: str = "win_rate", objectives: Sequence[str] | None = None, n_grid: int = N_GRID
) -> pd.DataFrame:
    """Per size and objective, the pooled curve read over the common range (module docstring): one row each
    with columns MATCHED_COLUMNS. ``objectives``: those compared (default: every objective of the size);
    a size with fewer than two of them, or whose objectives share no range of d, has no rows."""
    rows = _finite(results, metric)
    out = []
    for size, in_size in rows.groupby("size", sort=False):
        present = list(dict.fromkeys(in_size["objective"]))
        compared = [o for o in (objectives if objectives is not None else present) if o in present]
        if len(compared) < 2:
            continue
        reach = {
            o: (in_size.loc[in_size["objective"] == o, "d"].min(), in_size.loc[in_size["objective"] == o, "d"].max()) for o in compared
        }
        low, high = max(r[0] for r in reach.values()), min(r[1] for r in reach.values())
        if not high > low:
            continue
        grid = _grid(low, high, in_size["d"], n_grid)
        for objective in compared:
            trials = in_size[in_size["objective"] == objective]
            mean, _ = _pooled(trials, metric, grid)
            if not np.isfinite(mean).any():  # its trials' ranges fall in gaps of the common range
                continue
            peak = int(np.nanargmax(mean))
            own_grid = _grid(*reach[objective], trials["d"], n_grid)
            own_mean, _ = _pooled(trials, metric, own_grid)
            out.append(
                {
                    "size": size,
                    "objective": objective,
                    "metric": metric,
                    "trials": int(trials.groupby(TRIAL_KEYS).ngroups),
                    "common_d_low": float(low),
                    "common_d_high": float(high),
                    "pooled_peak": float(mean[peak]),
                    "d_at_pooled_peak": float(grid[peak]),
                    "at_common_end": float(mean[-1]),
                    "drop": float(mean[peak] - mean[-1]),
                    "d_at_own_peak": float(own_grid[int(np.nanargmax(own_mean))]),
                    "own_d_max": float(reach[objective][1]),
                }
            )
    table = pd.DataFrame(out, columns=MATCHED_COLUMNS[:-1])
    table["falls_least"] = table["drop"] == table.groupby("size")["drop"].transform("min") if len(table) else pd.Series(dtype=bool)
    return table[MATCHED_COLUMNS]


def matched_verdict(table: pd.DataFrame) -> str:
    """One plain-text line per size of ``compare_at_matched_d``'s table: which objective falls least over
    the common range, and where each objective's pooled curve peaks."""
    if table.empty:
        return "No size has two objectives that reach a common range of d: nothing is compared at matched d."
    lines = []
    for size, rows in table.groupby("size", sort=False):
        rows = rows.sort_values("drop", kind="stable")
        first = rows.iloc[0]
        least = " and ".join(rows.loc[rows["falls_least"], "objective"])
        metric = METRIC_NAMES.get(first.metric, first.metric)
        parts = [
            f"{r.objective} peaks at {r.pooled_peak:.3f} (d {r.d_at_pooled_peak:.2f}) and drops {r.drop:.3f}" for r in rows.itertuples()
        ]
        lines.append(
            f"{size}: over d {first.common_d_low:.2f} to {first.common_d_high:.2f} (reached by every compared objective), "
            f"the {metric} of {least} falls least: " + "; ".join(parts) + "."
        )
    return "\n".join(lines)
