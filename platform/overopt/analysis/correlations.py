"""Correlations the paper reads off its runs, each with an honest interval.

    length exploitation      per size: length_r2 (R^2 of the per-sample log-ratio regressed on response
                             length, one value per evaluation) against KL, and mean length against d.
                             The paper finds length explains more of the policy's movement for smaller
                             models and at smaller KL; a negative length_r2-vs-KL correlation is the latter.
    training metrics         per size: implicit reward accuracy and training loss against win rate.
                             The paper finds neither predicts win rate.

Interval: the evaluations of one trial share a trajectory, so the 95 % interval is a percentile
bootstrap that resamples whole trials (objective, beta, size, seed) when there are at least
``MIN_GROUPS_FOR_BOOTSTRAP`` of them. With fewer trials it falls back to the Fisher-z interval with
the number of evaluations as n (SE 1/sqrt(n-3) for Pearson, sqrt(1.06/(n-3)) for Spearman, Fieller et
al. 1957), which treats evaluations as independent and is therefore too narrow; ``interval`` says
which was used. Only trained evaluations (step > 0) with finite values enter: at step 0 the policy is
the reference, its log-ratio is 0 and its training loss is not a training loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from overopt.analysis.fits import MIN_GROUPS_FOR_BOOTSTRAP
from overopt.analysis.summary import trial_keys
from overopt.jsonsafe import json_safe
from overopt.metrics import Z_95

METHODS = ("spearman", "pearson")


@dataclass(frozen=True)
class Correlation:
    method: str  # "spearman" or "pearson"
    r: float
    low: float  # 95 % interval
    high: float
    n: int  # points (evaluations)
    n_groups: int  # trials
    interval: str  # "trial bootstrap (B)" or "fisher-z (evaluations as independent)"

    def excludes_zero(self) -> bool:
        return bool(math.isfinite(self.low) and (self.low > 0 or self.high < 0))

    def text(self) -> str:
        if not math.isfinite(self.r):
            return "-"
        return f"{self.r:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    def to_dict(self) -> dict:
        """JSON-safe: an undefined r or interval (nan) becomes None."""
        return json_safe(asdict(self))


def _coefficient(x: np.ndarray, y: np.ndarray, method: str) -> float:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
    return float(np.corrcoef(x, y)[0, 1])


def correlation(x, y, groups=None, method: str = "spearman", n_bootstrap: int = 500, seed: int = 0) -> Correlation:
    """Correlation of x and y with a 95 % interval (see the module docstring); nan when undefined."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid choices: {', '.join(METHODS)}")
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    labels = None if groups is None else [g for g, k in zip(list(groups), keep) if k]
    x, y = x[keep], y[keep]
    r = _coefficient(x, y, method)
    members: dict = {}
    for i, label in enumerate(labels or []):
        members.setdefault(label, []).append(i)
    n_groups = len(members)
    if not math.isfinite(r):
        return Correlation(method, math.nan, math.nan, math.nan, int(x.size), n_groups, "undefined")
    if n_groups >= MIN_GROUPS_FOR_BOOTSTRAP and n_bootstrap > 0:
        index_sets = [np.array(v) for v in members.values()]
        rng = np.random.default_rng(seed)
        coefficients = []
        for _ in range(n_bootstrap):
            index = np.concatenate([index_sets[g] for g in rng.integers(0, n_groups, size=n_groups)])
            coefficients.append(_coefficient(x[index], y[index], method))
        draws = np.array(coefficients)
        draws = draws[np.isfinite(draws)]
        if draws.size:
            low, high = np.percentile(draws, [2.5, 97.5])
            return Correlation(method, r, float(low), float(high), int(x.size), n_groups, f"trial bootstrap ({draws.size})")
    if x.size <= 3:
        return Correlation(method, r, math.nan, math.nan, int(x.size), n_groups, "none (n <= 3)")
    se = math.sqrt((1.06 if method == "spearman" else 1.0) / (x.size - 3))
    z = math.atanh(min(max(r, -0.999999), 0.999999))
    return Correlation(
        method, r, math.tanh(z - Z_95 * se), math.tanh(z + Z_95 * se), int(x.size), n_groups, "fisher-z (evaluations as independent)"
    )


def _trained(results: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Trained evaluations (step > 0) with finite values in ``columns``; none at all if a column is missing."""
    rows = results[results["step"] > 0]
    for column in columns:
        if column not in rows:
            return rows.iloc[0:0].assign(**{c: pd.Series(dtype=float) for c in columns})
        rows = rows[np.isfinite(rows[column].astype(float))]
    return rows


def length_exploitation(results: pd.DataFrame, n_bootstrap: int = 500, seed: int = 0) -> pd.DataFrame:
    """Per size: mean length_r2, Spearman(length_r2, KL) and Spearman(mean_length, d), with intervals."""
    out = []
    for size in dict.fromkeys(results["size"]):
        rows = results[results["size"] == size]
        r2_rows = _trained(rows, "length_r2", "kl")
        length_rows = _trained(rows, "mean_length", "d")
        r2_kl = correlation(r2_rows["length_r2"], r2_rows["kl"], trial_keys(r2_rows), "spearman", n_bootstrap, seed)
        length_d = correlation(length_rows["mean_length"], length_rows["d"], trial_keys(length_rows), "spearman", n_bootstrap, seed)
        out.append(
            {
                "size": size,
                "evaluations": len(r2_rows),
                "mean_length_r2": float(r2_rows["length_r2"].mean()) if len(r2_rows) else math.nan,
                "median_kl": float(r2_rows["kl"].median()) if len(r2_rows) else math.nan,
                "r2_vs_kl": r2_kl,
                "length_vs_d": length_d,
            }
        )
    return pd.DataFrame(out)


TRAINING_METRICS = ("implicit_accuracy", "loss")


def training_metrics_vs_win(results: pd.DataFrame, n_bootstrap: int = 500, seed: int = 0) -> pd.DataFrame:
    """Per size and training metric: Spearman and Pearson correlation with win rate, with intervals."""
    out = []
    for size in dict.fromkeys(results["size"]):
        for metric in TRAINING_METRICS:
            rows = _trained(results[results["size"] == size], metric, "win_rate")
            groups = trial_keys(rows)
            out.append(
                {
                    "size": size,
                    "metric": metric,
                    "evaluations": len(rows),
                    "spearman": correlation(rows[metric], rows["win_rate"], groups, "spearman", n_bootstrap, seed),
                    "pearson": correlation(rows[metric], rows["win_rate"], groups, "pearson", n_bootstrap, seed),
                }
            )
    return pd.DataFrame(out)
