"""The embedded demo's criteria, checked per trial on an experiment's rows. No Ray here.

    python jobs/check_criteria.py runs/embedded-<hash>          # or its results.parquet; exit 0 when all hold

What the embedded default must show for its figures to mean what docs/results.md says (each is
checked per trial, not on pooled averages that a few trials could carry):

  1. KL grows gradually: in every trial whose largest KL reaches ``min_kl`` (0.5), Spearman's rank
     correlation of KL with the step is at least 0.8, and the first evaluation at or after 1/8 epoch
     holds at most half the trial's largest KL (no jump at the start).
  2. Humps: for DPO and SLiC at their two smallest betas, on every size where both ran, each trial's best win
     rate is at least ``hump`` (0.08) above its step-0 win rate and at least ``hump`` above its last,
     and it peaks within the first epoch.
  3. Ordering: per objective and size, the smallest beta reaches a larger KL than the largest beta;
     IPO's mean per-trial fall (best minus last win rate) is the smallest of the objectives.
  4. Pooled: for DPO and SLiC, every evaluation after step 0 in six equal-count bins of d = sqrt(KL):
     the best bin is at least ``pooled`` (0.10) above the mean step-0 win rate, and the highest-d
     bin at least ``pooled`` below the best bin.

``check_criteria(frame)`` returns the findings (one line per trial or group) and the shortfalls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

TRIAL = ["objective", "beta", "size", "seed"]


@dataclass
class CriteriaReport:
    findings: list[str] = field(default_factory=list)  # what was measured, a line each
    shortfalls: list[str] = field(default_factory=list)  # what did not hold
    humps: int = 0  # trials of criterion 2 that showed their hump
    trials: int = 0

    def text(self) -> str:
        summary = f"{len(self.shortfalls)} shortfalls; per-trial humps {self.humps}; trials {self.trials}"
        return "\n".join(self.findings + [f"SHORT: {s}" for s in self.shortfalls] + [summary])


def check_criteria(frame: pd.DataFrame, min_kl: float = 0.5, hump: float = 0.08, pooled: float = 0.10) -> CriteriaReport:
    """Criteria 1-4 of the module docstring on an experiment's rows (results.parquet)."""
    report = CriteriaReport(trials=frame.groupby(TRIAL).ngroups)
    trials = {key: rows.sort_values("step") for key, rows in frame.groupby(TRIAL)}
    # 1. KL grows gradually
    for key, rows in trials.items():
        largest = rows["kl"].max()
        if len(rows) < 4 or largest < min_kl:
            continue
        rho = spearmanr(rows["step"], rows["kl"]).statistic
        if not rho >= 0.8:
            report.shortfalls.append(f"KL does not grow steadily in {key}: Spearman {rho:.2f} < 0.8")
        later = rows[rows["epoch_fraction"] >= 1 / 8]
        if len(later) and later["kl"].iloc[0] > 0.5 * largest:
            report.shortfalls.append(
                f"KL jumps in {key}: {later['kl'].iloc[0]:.2f} of its largest {largest:.2f} by epoch {later['epoch_fraction'].iloc[0]:.3f}"
            )
    # 2. humps, on every size where both DPO and SLiC ran
    both = set(frame[frame["objective"] == "dpo"]["size"]) & set(frame[frame["objective"] == "slic"]["size"])
    for objective in ("dpo", "slic"):
        for size in sorted(both):
            betas = sorted(frame[(frame["objective"] == objective) & (frame["size"] == size)]["beta"].unique())[:2]
            for key, rows in trials.items():
                if key[0] != objective or key[2] != size or key[1] not in betas:
                    continue
                start, best, last = rows["win_rate"].iloc[0], rows["win_rate"].max(), rows["win_rate"].iloc[-1]
                peak = rows.loc[rows["win_rate"].idxmax(), "epoch_fraction"]
                shown = best - start >= hump and best - last >= hump and peak <= 1.0
                report.humps += shown
                report.findings.append(
                    f"{objective} beta={key[1]:g} {size} seed={key[3]}: rise {best - start:+.3f} "
                    f"fall {best - last:+.3f} peak at epoch {peak:.3f} -> {'hump' if shown else 'SHORT'}"
                )
                if not shown:
                    report.shortfalls.append(f"no hump in {objective} beta={key[1]:g} {size} seed={key[3]}")
    # 3. ordering
    for (objective, size), rows in frame.groupby(["objective", "size"]):
        largest_kl = rows.groupby("beta")["kl"].max().sort_index()
        if len(largest_kl) > 1 and not largest_kl.iloc[0] > largest_kl.iloc[-1]:
            report.shortfalls.append(
                f"KL order {objective}/{size}: smallest beta reaches {largest_kl.iloc[0]:.2f}, largest {largest_kl.iloc[-1]:.2f}"
            )
    falls = {
        objective: float(
            np.mean([rows["win_rate"].max() - rows["win_rate"].iloc[-1] for key, rows in trials.items() if key[0] == objective])
        )
        for objective in sorted(frame["objective"].unique())
    }
    report.findings.append("mean per-trial fall: " + ", ".join(f"{o} {v:.3f}" for o, v in falls.items()))
    if "ipo" in falls and any(falls[o] < falls["ipo"] for o in falls if o != "ipo"):
        report.shortfalls.append(f"IPO does not fall least: {falls}")
    # 4. pooled rise and fall
    for objective in ("dpo", "slic"):
        rows = frame[frame["objective"] == objective]
        if rows.empty:
            continue
        start = rows[rows["step"] == 0]["win_rate"].mean()
        moved = rows[rows["step"] > 0].sort_values("d")
        bins = [float(moved["win_rate"].iloc[part].mean()) for part in np.array_split(np.arange(len(moved)), 6)]
        rise, fall = max(bins) - start, max(bins) - bins[-1]
        report.findings.append(f"{objective} pooled rise {rise:.3f} fall {fall:.3f}")
        if rise < pooled or fall < pooled:
            report.shortfalls.append(f"pooled {objective}: rise {rise:.2f}, fall {fall:.2f} (each must reach {pooled})")
    return report
