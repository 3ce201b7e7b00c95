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
  3. Ordering: per objective (R-DPO included) and size, the smallest beta reaches a larger KL than the
     largest beta; on every size where IPO ran, IPO falls least of DPO, IPO and SLiC at matched d: the
     drop from each objective's pooled peak to its value at the end of the d range all three reach
     (analysis/matched.py), not the per-trial fall at equal nominal beta, since at one beta the objectives
     move the policy different distances.
  4. Pooled: for DPO and SLiC, every evaluation after step 0 in six equal-count bins of d = sqrt(KL):
     the best bin is at least ``pooled`` (0.10) above the mean step-0 win rate, and the highest-d
     bin at least ``pooled`` below the best bin.
  5. Goodhart signature: in every trial whose gold win rate falls at least ``hump`` (0.08) from its
     peak (best minus last), the proxy win rate (the labeller that made the training pairs) at the last
     evaluation is not below its value at gold's peak step. A trial where it is below has over-shot its
     own labels: it gets a finding line saying so and counts as a shortfall. Without a proxy (no
     proxy_win_rate column, or all NaN) the criterion is skipped with a finding line.
  6. Length growth: for DPO, IPO and SLiC on size "tiny" at their two smallest betas, each trial's
     mean_length at its largest-KL evaluation exceeds its step-0 mean_length.

Points 2 and 4 are about DPO and SLiC only and point 6 about DPO, IPO and SLiC, so R-DPO trials enter points 1
and 5 and point 3's KL ordering.
``check_criteria(frame)`` returns the findings (one line per trial or group) and the shortfalls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from overopt.analysis.goodhart import proxy_and_gold, trial_length_growth
from overopt.analysis.matched import compare_at_matched_d, matched_verdict

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
    """Criteria 1-6 of the module docstring on an experiment's rows (results.parquet)."""
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
                peak = rows["epoch_fraction"].iloc[rows["win_rate"].argmax()]  # at the first best row, as idxmax
                shown = bool(best - start >= hump and best - last >= hump and peak <= 1.0)
                report.humps += shown
                report.findings.append(
                    f"{objective} beta={key[1]:g} {size} seed={key[3]}: rise {best - start:+.3f} "
                    f"fall {best - last:+.3f} peak at epoch {peak:.3f} -> {'hump' if shown else 'SHORT'}"
                )
                if not shown:
                    report.shortfalls.append(f"no hump in {objective} beta={key[1]:g} {size} seed={key[3]}")
    # 3. ordering
    for (group_objective, group_size), rows in frame.groupby(["objective", "size"]):
        largest_kl = rows.groupby("beta")["kl"].max().sort_index()
        if len(largest_kl) > 1 and not largest_kl.iloc[0] > largest_kl.iloc[-1]:
            report.shortfalls.append(
                f"KL order {group_objective}/{group_size}: smallest beta reaches {largest_kl.iloc[0]:.2f}, largest {largest_kl.iloc[-1]:.2f}"
            )
    matched = compare_at_matched_d(frame, objectives=("dpo", "ipo", "slic"))
    report.findings += [f"matched d: {line}" for line in matched_verdict(matched).splitlines()]
    for matched_size, rows in matched.groupby("size", sort=False):
        rows = rows.set_index("objective")
        if "ipo" in rows.index and not rows.loc["ipo", "falls_least"]:
            drops = ", ".join(f"{o} {v:.3f}" for o, v in rows["drop"].items())
            report.shortfalls.append(
                f"IPO does not fall least at matched d on {matched_size!s} (drop up to d {rows['common_d_high'].iloc[0]:.2f}: {drops})"
            )
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
    # 5. the proxy holds where gold falls; 6. responses grow longer
    _goodhart_signature(frame, hump, report)
    _length_growth(frame, report)
    return report


def _name(key) -> str:
    objective, beta, size, seed = key
    return f"{objective} beta={beta:g} {size} seed={seed}"


def _goodhart_signature(frame: pd.DataFrame, gold_fall: float, report: CriteriaReport) -> None:
    """Criterion 5: where gold fell, the proxy at the last evaluation is not below its value at gold's peak."""
    table = proxy_and_gold(frame, gold_fall=gold_fall)
    if table.empty:
        report.findings.append("Goodhart signature not checked: no proxy in this experiment (no proxy_win_rate)")
        return
    for row in table[table["gold_fell"]].itertuples(index=False):
        name = _name((row.objective, row.beta, row.size, row.seed))
        moved = (
            f"gold falls {row.gold_fall:+.3f}; proxy {row.proxy_at_gold_peak:.3f} at gold's peak, "
            f"{row.proxy_last:.3f} at the last evaluation"
        )
        if row.proxy_kept_rising is None:
            report.findings.append(f"{name}: {moved} -> not checked (no proxy value)")
        elif row.proxy_kept_rising:
            report.findings.append(f"{name}: {moved} -> proxy held while gold fell")
        else:
            report.findings.append(f"{name}: {moved} -> over-shot its own labels")
            report.shortfalls.append(f"no Goodhart signature in {name}: the proxy fell too (over-shot its own labels)")


def _length_growth(frame: pd.DataFrame, report: CriteriaReport) -> None:
    """Criterion 6: on size tiny, DPO, IPO and SLiC at their two smallest betas grow longer responses."""
    growth = trial_length_growth(frame)
    if growth.empty:
        report.findings.append("length growth not checked: no mean_length in the rows")
        return
    checked = 0
    for objective in ("dpo", "ipo", "slic"):
        trials = growth[(growth["objective"] == objective) & (growth["size"] == "tiny")]
        for row in trials[trials["beta"].isin(sorted(trials["beta"].unique())[:2])].to_dict("records"):
            name = _name((row["objective"], row["beta"], row["size"], row["seed"]))
            if not np.isfinite(row["step0_length"]):
                report.findings.append(f"{name}: length growth not checked (no step-0 evaluation)")
                continue
            checked += 1
            grows = bool(row["length_at_largest_kl"] > row["step0_length"])
            report.findings.append(
                f"{name}: mean length {row['step0_length']:.2f} at step 0, {row['length_at_largest_kl']:.2f} at KL {row['largest_kl']:.2f}"
                f" -> {'grows' if grows else 'SHORT'}"
            )
            if not grows:
                report.shortfalls.append(f"no length growth in {name}")
    if not checked:
        report.findings.append("length growth not checked: no DPO, IPO or SLiC trial on size tiny")
