"""Turn a finished experiment into fits.json, plots and report.md, and print a terminal summary.

    python jobs/analyze.py runs/embedded-<hash>

Reads only results.parquet (rebuilt from rows/*.jsonl when missing, e.g. after an interrupted
sweep) and config.yaml; nothing here re-runs a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from overopt.analysis.plots import draw_all
from overopt.analysis.summary import REFERENCE_WIN_RATE, binned_curve, fit_curves, trial_peaks


def load_results(experiment: Path) -> pd.DataFrame:
    for name in ("results.parquet", "results.partial.parquet"):
        if (experiment / name).exists():
            return pd.read_parquet(experiment / name)
    from overopt.sweep.run import collect_results  # rows written so far by an unfinished sweep

    return collect_results(experiment)


def _f(value, digits=3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(interval, digits=2) -> str:
    low, high = interval
    if low is None or math.isnan(low):
        return "-"
    if max(abs(low), abs(high)) >= 1000:  # a bootstrap resample whose curve barely turns over
        return f"[{low:.3g}, {high:.3g}]"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def analyze(experiment: str | Path, n_bootstrap: int = 200, log=print) -> Path:
    """Write fits.json, the PNG plots and report.md into ``experiment``; returns the report path."""
    experiment = Path(experiment)
    if not experiment.is_dir():
        raise FileNotFoundError(f"experiment directory {experiment} does not exist")
    results = load_results(experiment)
    peaks = trial_peaks(results)
    fits = fit_curves(results, n_bootstrap=n_bootstrap)
    curves = {o: binned_curve(results, o) for o in dict.fromkeys(results["objective"]) if (results["objective"] == o).sum() >= 6}
    (experiment / "fits.json").write_text(
        json.dumps(
            {
                "reference_win_rate": REFERENCE_WIN_RATE,
                "fits": {f"{o}/{s}": {form: fit.to_dict() for form, fit in forms.items()} for (o, s), forms in fits.items()},
                "binned": {o: c.to_dict() for o, c in curves.items()},
            },
            indent=2,
        )
    )
    plots = draw_all(results, fits, experiment)
    report = experiment / "report.md"
    report.write_text(_report_text(experiment, results, peaks, fits, curves, plots))
    _print_summary(peaks, curves, log)
    log(f"report: {report}")
    return report


def _report_text(experiment, results, peaks, fits, curves, plots) -> str:
    lines = [
        f"# Over-optimization report: {experiment.name}",
        "",
        f"{len(results)} evaluations of {len(peaks)} trials. Win rate = policy sample vs the reference model's "
        f"sample for the same held-out prompt (ties 0.5); gain = win rate - {REFERENCE_WIN_RATE}; d = sqrt(KL).",
        "Config: `config.yaml`; every evaluation: `results.parquet`; fits: `fits.json`.",
        "",
        "## Over-optimization, pooled per objective (all betas and sizes, 6 equal-count bins of d)",
        "",
    ]
    if curves:
        table = pd.DataFrame(
            [
                {
                    "objective": c.objective,
                    "step-0 win": _f(c.step0_win_rate),
                    "bins (win @ d)": " ".join(f"{w:.2f}@{d:.2f}" for w, d in zip(c.bin_win_rate, c.bin_d)),
                    "rise": _f(c.rise),
                    "fall": _f(c.fall),
                    "max KL smallest beta": _f(c.max_kl_smallest_beta, 2),
                    "max KL largest beta": _f(c.max_kl_largest_beta, 2),
                }
                for c in curves.values()
            ]
        )
        lines += [_markdown_table(table), ""]
    for objective in dict.fromkeys(results["objective"]):
        lines += [f"## {objective}", ""]
        rows = peaks[peaks["objective"] == objective]
        shown = rows.assign(
            peak_win_rate=rows["peak_win_rate"].map(_f),
            d_at_peak=rows["d_at_peak"].map(lambda v: _f(v, 2)),
            epoch_at_peak=rows["epoch_at_peak"].map(lambda v: _f(v, 3)),
            final_win_rate=rows["final_win_rate"].map(_f),
            max_kl=rows["max_kl"].map(lambda v: _f(v, 2)),
        )[["size", "beta", "seed", "peak_win_rate", "d_at_peak", "epoch_at_peak", "final_win_rate", "max_kl", "stop_reason"]]
        lines += [_markdown_table(shown), ""]
        for (fit_objective, size), forms in fits.items():
            if fit_objective != objective:
                continue
            rl, bon, quad = forms["rl"], forms["bon"], forms["quadratic"]
            lines += [
                f"Fits for {objective} / {size} (gain vs d, {rl.n_points} points, 95 % bootstrap intervals):",
                "",
                "| form | alpha | beta_f | d* | predicted peak gain | RMSE | R^2 |",
                "|---|---|---|---|---|---|---|",
            ]
            for name, fit in (("RL d(a - b ln d)", rl), ("best-of-n d(a - b d)", bon), ("quadratic in KL (c1, c2)", quad)):
                lines.append(
                    f"| {name} | {_f(fit.alpha)} {_ci(fit.alpha_ci)} | {_f(fit.beta_f)} {_ci(fit.beta_f_ci)} | "
                    f"{_f(fit.d_star, 2)} {_ci(fit.d_star_ci)} | {_f(fit.peak)} | {_f(fit.rmse)} | {_f(fit.r2, 2)} |"
                )
            ratio = rl.rmse / quad.rmse if quad.rmse else float("nan")
            lines += ["", f"RL-form RMSE is {_f(ratio, 2)} x the quadratic baseline's.", ""]
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def _print_summary(peaks: pd.DataFrame, curves: dict, log) -> None:
    log("")
    log(f"{'objective':<9} {'size':<7} {'beta':>6} {'peak win':>9} {'d@peak':>7} {'epoch@peak':>10} {'max KL':>7}  stop")
    for row in peaks.itertuples(index=False):
        log(
            f"{row.objective:<9} {row.size:<7} {row.beta:>6g} {row.peak_win_rate:>9.3f} {row.d_at_peak:>7.2f} "
            f"{row.epoch_at_peak:>10.3f} {row.max_kl:>7.2f}  {row.stop_reason}"
        )
    for c in curves.values():
        log(f"{c.objective}: step-0 win {c.step0_win_rate:.3f}, best bin {c.bin_win_rate[c.best_bin]:.3f} "
            f"(rise {c.rise:+.3f}), highest-d bin {c.bin_win_rate[-1]:.3f} (fall {c.fall:+.3f})")
