"""Goodhart's law in an experiment's rows: the proxy against gold, length growth, and model size against
the DAA paper's finding. Pure pandas/numpy; no Ray. The report renders these tables (report_sections.py); the
demo's criteria (criteria.py) read the same per-trial tables.

Proxy and gold (``proxy_and_gold``, one row per trial)
    gold = ``win_rate`` (the judge's win rate against the baseline); proxy = ``proxy_win_rate`` (the
    labeller that made the training pairs: its probability of preferring the policy's sample, averaged
    over prompts, with a 95 % interval ``proxy_win_rate_low`` / ``_high``). Read at gold's peak (the
    trial's best win rate, its first evaluation at that value) and at the trial's last evaluation:
      gold_fell            gold's fall (peak - last) is at least ``gold_fall`` (0.08, the criteria's hump)
      proxy_kept_rising    the proxy at the last evaluation is not below its value at gold's peak: the
                           policy kept climbing its training signal while gold fell (Goodhart's law)
      overshot_own_labels  the proxy's own best is above its last value by more than the half-width of the
                           last evaluation's proxy interval: the policy moved past what even its labeller prefers
    Without a proxy (column absent, as in experiments written before it, or all NaN) the table is empty;
    a comparison that needs a missing value is None.

Length growth (``trial_length_growth`` per trial, ``length_growth`` seed-averaged per objective, size, beta)
    mean_length (response tokens, EOS included) at step 0 and at the trial's largest-KL evaluation, and
    their difference. Where R-DPO's length penalty acts, its growth is smaller than DPO's at equal beta.

Model size against the paper (``size_vs_paper``)
    The DAA over-optimization paper (Rafailov et al. 2024, "Scaling Laws for Reward Model Overoptimization
    in Direct Alignment Algorithms") reports that larger models reach higher peak win rates and degrade
    less and later. Per objective: the median over trials of the peak win rate, of the fall (peak - last)
    and of d at the peak, for the smallest and the largest size; each stated as this experiment has it,
    beside the paper's direction. Sizes are ordered by parameter count: the built-in sizes' own, or a
    count in the name (``pythia-410m``, ``pythia-2.8b``); sizes without either are not ordered.

``goodhart_tables(results)`` computes all of them, with the objectives compared at matched d
(analysis/matched.py) for gold and, where there is one, the proxy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from overopt.analysis.matched import compare_at_matched_d, has_metric
from overopt.analysis.summary import trial_peaks

TRIAL_KEYS = ["objective", "beta", "size", "seed"]
GOLD_FALL = 0.08  # a fall of gold this large counts as gold falling (the criteria's hump size)
BUILTIN_PARAMETERS = {"tiny": 0.11e6, "small": 0.81e6, "medium": 2.7e6}  # models.py's built-in sizes (vocab 45)
_COUNT_IN_NAME = re.compile(r"(?<![0-9a-z.])(\d+(?:\.\d+)?)([mb])(?![0-9a-z])", re.IGNORECASE)

PROXY_COLUMNS = [
    *TRIAL_KEYS,
    "gold_peak",
    "gold_peak_step",
    "d_at_gold_peak",
    "gold_last",
    "gold_fall",
    "gold_fell",
    "proxy_at_gold_peak",
    "proxy_last",
    "proxy_best",
    "proxy_half_width",
    "proxy_kept_rising",
    "overshot_own_labels",
]


def _number(value) -> float:
    return float(value) if value is not None and pd.notna(value) else math.nan


def _at_least(a: float, b: float) -> bool | None:
    return None if not (math.isfinite(a) and math.isfinite(b)) else bool(a >= b)


def proxy_and_gold(results: pd.DataFrame, gold_fall: float = GOLD_FALL) -> pd.DataFrame:
    """One row per trial with columns PROXY_COLUMNS (module docstring); empty without a proxy."""
    if not has_metric(results, "proxy_win_rate"):
        return pd.DataFrame(columns=PROXY_COLUMNS)
    rows = []
    gold = results[np.isfinite(results["win_rate"].astype(float))]
    for key, trial in gold.groupby(TRIAL_KEYS, sort=True):
        trial = trial.sort_values("step")
        peak, last = trial.iloc[trial["win_rate"].argmax()], trial.iloc[-1]  # peak: the first best row, as idxmax
        proxy = trial["proxy_win_rate"].astype(float)
        proxy_peak, proxy_last, proxy_best = _number(peak["proxy_win_rate"]), _number(last["proxy_win_rate"]), _number(proxy.max())
        half_width = (_number(last.get("proxy_win_rate_high")) - _number(last.get("proxy_win_rate_low"))) / 2
        fall = float(peak["win_rate"] - last["win_rate"])
        rows.append(
            {
                **dict(zip(TRIAL_KEYS, key)),
                "gold_peak": float(peak["win_rate"]),
                "gold_peak_step": int(peak["step"]),
                "d_at_gold_peak": _number(peak["d"]),
                "gold_last": float(last["win_rate"]),
                "gold_fall": fall,
                "gold_fell": bool(fall >= gold_fall),
                "proxy_at_gold_peak": proxy_peak,
                "proxy_last": proxy_last,
                "proxy_best": proxy_best,
                "proxy_half_width": half_width,
                "proxy_kept_rising": _at_least(proxy_last, proxy_peak),
                "overshot_own_labels": None if not math.isfinite(half_width) else bool(proxy_best - proxy_last > half_width),
            }
        )
    # True, False or None (a value missing): kept as Python objects, not cast to bool
    table = pd.DataFrame(rows, columns=PROXY_COLUMNS).astype({"proxy_kept_rising": object, "overshot_own_labels": object})
    return table.sort_values(["objective", "size", "beta", "seed"], kind="stable").reset_index(drop=True)


def proxy_and_gold_lines(table: pd.DataFrame) -> list[str]:
    """Counts read off ``proxy_and_gold``'s table, one plain-text line each."""
    if table.empty:
        return ["No proxy in this experiment: the rows carry no proxy win rate."]
    fell = table[table["gold_fell"]]
    rising = fell["proxy_kept_rising"].eq(True).sum()
    unread = fell["proxy_kept_rising"].isna().sum()
    overshot = table["overshot_own_labels"].eq(True).sum()
    return [
        f"Gold fell by at least {GOLD_FALL:g} from its peak in {len(fell)} of {len(table)} trials; in {rising} of them the proxy at "
        f"the last evaluation is at least its value at gold's peak" + (f" ({unread} without a proxy value to compare)." if unread else "."),
        f"{overshot} of {len(table)} trials end more than the proxy interval's half-width below the proxy's own best "
        "(over-shot their own labels).",
    ]


def trial_length_growth(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: mean_length at step 0 (NaN without a step-0 row) and at the largest-KL evaluation,
    that evaluation's KL and d, and growth = the difference. Empty without a mean_length column."""
    columns = [*TRIAL_KEYS, "step0_length", "largest_kl", "d_at_largest_kl", "length_at_largest_kl", "growth"]
    if not has_metric(results, "mean_length"):
        return pd.DataFrame(columns=columns)
    rows = []
    for key, trial in results[np.isfinite(results["kl"].astype(float))].groupby(TRIAL_KEYS, sort=True):
        step0 = trial.loc[trial["step"] == 0, "mean_length"].astype(float)
        furthest = trial.iloc[trial["kl"].astype(float).argmax()]  # the first row of the largest KL, as idxmax
        start = float(step0.mean()) if len(step0) else math.nan
        end = _number(furthest["mean_length"])
        rows.append(
            {
                **dict(zip(TRIAL_KEYS, key)),
                "step0_length": start,
                "largest_kl": float(furthest["kl"]),
                "d_at_largest_kl": _number(furthest.get("d")),
                "length_at_largest_kl": end,
                "growth": end - start,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def length_growth(results: pd.DataFrame) -> pd.DataFrame:
    """``trial_length_growth`` averaged over seeds, per (objective, size, beta), with the number of trials."""
    per_trial = trial_length_growth(results)
    columns = ["objective", "size", "beta", "trials", "step0_length", "largest_kl", "length_at_largest_kl", "growth"]
    if per_trial.empty:
        return pd.DataFrame(columns=columns)
    grouped = per_trial.groupby(["objective", "size", "beta"], sort=True)
    table = grouped[["step0_length", "largest_kl", "length_at_largest_kl", "growth"]].mean().reset_index()
    table["trials"] = grouped.size().to_numpy()
    return table[columns]


def length_growth_lines(table: pd.DataFrame, against: str = "dpo", curbed: str = "rdpo") -> list[str]:
    """Per size and beta that both ``curbed`` and ``against`` ran: their length growth side by side."""
    if table.empty:
        return ["No mean_length in the rows."]
    lines = []
    for (size, beta), rows in table.groupby(["size", "beta"], sort=True):
        both = rows.set_index("objective")
        if curbed in both.index and against in both.index:
            a, b = both.loc[curbed], both.loc[against]
            lines.append(
                f"{size}, beta {beta:g}: {curbed} {a['growth']:+.2f} tokens (step 0 to KL {a['largest_kl']:.2f}), "
                f"{against} {b['growth']:+.2f} tokens (to KL {b['largest_kl']:.2f})."
            )
    return lines or [f"No size and beta on which both {curbed} and {against} ran."]


def parameter_count(size: str) -> float | None:
    """A size's parameter count: a built-in size's, or the count in its name (``410m``, ``2.8b``); else None."""
    if size in BUILTIN_PARAMETERS:
        return BUILTIN_PARAMETERS[size]
    found = _COUNT_IN_NAME.findall(str(size).rsplit("/", 1)[-1])
    if not found:
        return None
    number, unit = found[-1]
    return float(number) * (1e6 if unit.lower() == "m" else 1e9)


def _compare(larger: float, smaller: float, digits: int, more: str, less: str) -> str:
    """Compared as printed (rounded to ``digits``), so that the words agree with the numbers beside them."""
    larger, smaller = round(larger, digits), round(smaller, digits)
    return "equal" if larger == smaller else more if larger > smaller else less


def size_vs_paper(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per (objective, size): trials and the medians over trials of peak win rate, fall (peak - last) and
    d at the peak, sizes smallest first; and per objective with two ordered sizes or more a line that
    states the largest size against the smallest beside the paper's finding (module docstring)."""
    peaks = trial_peaks(results)
    columns = ["objective", "size", "parameters", "trials", "median_peak_win_rate", "median_fall", "median_d_at_peak"]
    if peaks.empty:
        return pd.DataFrame(columns=columns), ["No trials."]
    peaks = peaks.assign(fall=peaks["peak_win_rate"] - peaks["final_win_rate"])
    grouped = peaks.groupby(["objective", "size"], sort=False)
    table = grouped.agg(
        trials=("seed", "size"),
        median_peak_win_rate=("peak_win_rate", "median"),
        median_fall=("fall", "median"),
        median_d_at_peak=("d_at_peak", "median"),
    ).reset_index()
    table["parameters"] = table["size"].map(parameter_count)
    sizes = list(dict.fromkeys(results["size"]))
    if len(sizes) < 2:
        return table[columns], ["One size only: no size comparison."]
    unordered = [s for s in sizes if parameter_count(s) is None]
    if unordered:
        return table[columns], [f"Sizes not ordered by parameter count (no count known for {', '.join(unordered)}): no size comparison."]
    table = table.sort_values(["objective", "parameters"], kind="stable").reset_index(drop=True)
    lines = []
    for objective, rows in table.groupby("objective", sort=False):
        if len(rows) < 2:
            continue
        small, large = rows.iloc[0], rows.iloc[-1]
        peak = _compare(large["median_peak_win_rate"], small["median_peak_win_rate"], 3, "higher", "lower")
        fall = _compare(large["median_fall"], small["median_fall"], 3, "larger", "smaller")
        where = _compare(large["median_d_at_peak"], small["median_d_at_peak"], 2, "at a larger d", "at a smaller d")
        lines.append(
            f"{objective}: {large['size']} against {small['size']}: median peak win rate {large['median_peak_win_rate']:.3f} vs "
            f"{small['median_peak_win_rate']:.3f} ({peak}; the paper: higher), median fall {large['median_fall']:.3f} vs "
            f"{small['median_fall']:.3f} ({fall}; the paper: smaller), median peak at d {large['median_d_at_peak']:.2f} vs "
            f"{small['median_d_at_peak']:.2f} ({where}; the paper: at a larger d)."
        )
    return table[columns], lines or ["No objective ran on two sizes: no size comparison."]


@dataclass
class GoodhartTables:
    matched: dict[str, pd.DataFrame]  # metric (win_rate, proxy_win_rate where present) -> compare_at_matched_d's table
    proxy: pd.DataFrame  # proxy_and_gold
    length: pd.DataFrame  # length_growth
    sizes: pd.DataFrame  # size_vs_paper's table
    size_lines: list[str]  # size_vs_paper's statements


def goodhart_tables(results: pd.DataFrame) -> GoodhartTables:
    """Every table of the module docstring for ``results``, and the objectives at matched d."""
    matched = {metric: compare_at_matched_d(results, metric) for metric in ("win_rate", "proxy_win_rate") if has_metric(results, metric)}
    sizes, size_lines = size_vs_paper(results)
    return GoodhartTables(matched, proxy_and_gold(results), length_growth(results), sizes, size_lines)
