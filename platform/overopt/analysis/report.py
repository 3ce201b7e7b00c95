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
    size effect          per objective and size: KL reached, peak position (summary.size_effect)
    gold reward fits     as the win-rate fits, where the rows carry a gold reward (gold_reward: the gold
                         judge's; a reward model's scores are reward_model_score, a proxy, never fitted as gold)
    toy MDP              the DAA paper's out-of-distribution example (toy_mdp.py): it does not depend on
                         the experiment and takes seconds, so it is run into the experiment directory
                         when toy_mdp.json is not there yet (``toy_mdp=False`` / --no-toy-mdp skips it)

The baseline of every gain is the measured step-0 win rate of the same objective and size (see
summary.py); claims in the report are worded from the intervals (a peak is only called identified when
beta_f's interval excludes 0 and the bootstrap resamples turn over).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from overopt.analysis.correlations import length_exploitation, training_metrics_vs_win
from overopt.analysis.fits import ScalingFit
from overopt.analysis.plots import draw_all
from overopt.analysis.summary import (
    binned_curve,
    fit_curves,
    held_out_comparisons,
    peak_positions,
    reference_baselines,
    size_effect,
    trial_peaks,
)

BASELINE_TEXT = (
    "gain = win rate - the measured step-0 win rate of the same objective and size (the reference model "
    "judged on this eval set; 0.5 only where a (objective, size) has no step-0 evaluation)"
)
BOOTSTRAP_TEXT = (
    "95 % percentile bootstrap intervals; a resample draws whole trials (objective, beta, size, seed) and re-measures the step-0 baseline"
)
FORM_NAMES = {"rl": "RL d(a - b ln d)", "bon": "best-of-n d(a - b d)", "quadratic": "quadratic in KL (c1, c2)"}


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


def _f(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ci(interval, digits=2) -> str:
    low, high = interval
    if low is None or not math.isfinite(low):
        return "-"
    if max(abs(low), abs(high)) >= 1000:  # a bootstrap resample whose curve barely turns over
        return f"[{low:.3g}, {high:.3g}]"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-safe records; objects with to_dict() (correlations) become dicts, nan becomes None."""

    def plain(value):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        if isinstance(value, (np.floating, float)):
            return None if not math.isfinite(float(value)) else float(value)
        if isinstance(value, (np.integer,)):
            return int(value)
        if isinstance(value, np.bool_):
            return bool(value)
        return value

    return [{k: plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


# ----------------------------------------------------------------------------------------------
# Claims worded from the intervals


def peak_claim(fit: ScalingFit, d_max: float) -> str:
    """What the fit says about a peak, without contradicting its intervals."""
    name = FORM_NAMES[fit.form].split(" ")[0]
    coefficient = "c2" if fit.form == "quadratic" else "beta_f"
    if not fit.peak_identified():
        if fit.n_bootstrap == 0:
            why = f"{fit.n_groups} trial(s) are too few to resample" if fit.bootstrap_unit == "group" else "no bootstrap"
            return f"{name}: peak not assessed ({why}; d* = {_f(fit.d_star, 2)} is a point estimate only)."
        share = f"{100 * fit.peak_fraction:.0f} %" if math.isfinite(fit.peak_fraction) else "-"
        return f"{name}: peak not identified ({coefficient} = {_f(fit.beta_f)} {_ci(fit.beta_f_ci)}; {share} of the resamples turn over)."
    low, high = fit.d_star_ci
    where = f"d* = {_f(fit.d_star, 2)} {_ci(fit.d_star_ci)}"
    if high <= d_max:
        return f"{name}: peak identified inside the observed range, {where} (observed d up to {d_max:.2f})."
    if low > d_max:
        return f"{name}: the curve turns over only beyond the observed range, {where} (observed d up to {d_max:.2f})."
    return f"{name}: peak identified but not located: {where} reaches past the observed d (up to {d_max:.2f})."


def rise_claim(fit: ScalingFit) -> str:
    low, _ = fit.alpha_ci
    if fit.n_bootstrap == 0:
        return f"initial rise not assessed without intervals (alpha = {_f(fit.alpha)})."
    if math.isfinite(low) and low > 0:
        return f"initial rise: alpha = {_f(fit.alpha)} {_ci(fit.alpha_ci)} > 0."
    return f"initial rise not established (alpha = {_f(fit.alpha)} {_ci(fit.alpha_ci)})."


def binned_claim(curve) -> str:
    """Rise and fall of the pooled bins, worded from their trial-bootstrap intervals."""

    def part(name, value, interval, present, absent):
        if not math.isfinite(interval[0]):
            return f"{name} {_f(value)} (no interval)"
        return f"{name} {_f(value)} {_ci(interval, 3)}: " + (present if interval[0] > 0 else absent)

    return (
        f"{curve.objective}: "
        + "; ".join(
            [
                part("rise", curve.rise, curve.rise_ci, "a gain over the reference", "no gain established"),
                part("fall", curve.fall, curve.fall_ci, "a decline at the largest d", "no decline established"),
            ]
        )
        + "."
    )


def form_claim(comparison) -> str:
    if comparison is None or not comparison.preferred:
        return "Preferred form: not determined (needs at least two betas with fits)."
    rmse = comparison.rmse
    verdict = (
        "its held-out error is lower than the runner-up's (interval below 0)"
        if comparison.distinguishable
        else f"not distinguishable from {FORM_NAMES[comparison.runner_up].split(' ')[0]} (interval includes 0)"
    )
    others = ", ".join(f"{FORM_NAMES[f].split(' ')[0]} {_f(v)}" for f, v in rmse.items() if f != comparison.preferred)
    return (
        f"Preferred form by leave-one-beta-out error: **{FORM_NAMES[comparison.preferred].split(' ')[0]}** "
        f"(held-out RMSE {_f(rmse[comparison.preferred])} vs {others}; difference to the runner-up "
        f"{_f(comparison.difference)} {_ci(comparison.difference_ci, 3)}: {verdict}; {comparison.n_points} points, "
        f"{comparison.n_folds} betas)."
    )


def _claims(fits: dict, comparisons: dict, results: pd.DataFrame) -> dict[str, list[str]]:
    claims = {}
    for (objective, size), forms in fits.items():
        d_max = float(results.loc[(results["objective"] == objective) & (results["size"] == size), "d"].max())
        claims[f"{objective}/{size}"] = [
            rise_claim(forms["rl"]),
            peak_claim(forms["rl"], d_max),
            peak_claim(forms["bon"], d_max),
            form_claim(comparisons.get((objective, size))),
        ]
    return claims


# ----------------------------------------------------------------------------------------------
# The analysis


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
    if not remote:
        return _analyze_into(Path(store.path()), results, n_bootstrap, log, toy_mdp, Path(store.path()).name, inputs)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        for name in ("toy_mdp.json", "toy_mdp.png"):  # reuse a toy MDP run already stored there
            if store.exists(name):
                (out / name).write_bytes(store.read_bytes(name))
        _analyze_into(out, results, n_bootstrap, log, toy_mdp, location.split("?")[0].rstrip("/").rsplit("/", 1)[-1], inputs)
        for path in sorted(out.iterdir()):
            store.write_bytes(path.name, path.read_bytes())
    return store.uri("report.md")


def _analyze_into(
    experiment: Path, results: pd.DataFrame, n_bootstrap: int, log, toy_mdp: bool, title: str, inputs: list[str] = ()
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
    claims = _claims(fits, comparisons, results)

    (experiment / "fits.json").write_text(
        json.dumps(
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
            },
            indent=2,
        )
    )
    plots = draw_all(results, fits, experiment, baselines=baselines, peaks=positions, training_correlations=training)
    if toy and (experiment / "toy_mdp.png").exists():
        plots.append(experiment / "toy_mdp.png")
    report = experiment / "report.md"
    report.write_text(
        _report_text(title, results, peaks, fits, comparisons, claims, curves, positions, sizes, lengths, training, gold_fits, toy, plots)
        + "\n".join(inputs)
    )
    _print_summary(peaks, curves, comparisons, log)
    log(f"report: {report}")
    return report


def inputs_sections(store, results: pd.DataFrame, examples_per_trial: int = 2) -> list[str]:
    """The report's last sections: what the data stages read and skipped, and judged examples per trial
    (from the audit files: the policy's and the baseline's responses, the judge's raw answer)."""
    lines = []
    if store.exists("data_summary.json"):
        summary = json.loads(store.read_text("data_summary.json"))
        lines += [
            "## Data",
            "",
            "What each stage read and kept per size; skipped rows are listed (data.on_invalid: skip), never dropped "
            "silently. Rows whose prompt is an evaluation prompt are removed from the SFT and pairs tables.",
            "",
        ]
        for size, stats in summary.items():
            for kind in ("sft", "pairs", "eval"):
                if kind not in stats:  # a summary from before the SFT stage recorded its table
                    continue
                if stats[kind] is None:
                    lines.append(f"- {size} / sft: no SFT table (the reference model {stats.get('reference')} is given, not trained here)")
                    continue
                lines.append(f"- {size} / {kind}: " + _table_line(stats[kind]))
        lines.append("")
    failed = {path.rsplit("/", 1)[1][: -len(".json")]: json.loads(store.read_text(path)) for path in store.list("errors", ".json")}
    if failed:
        # Listed from errors/, so a trial that failed before its first evaluation (no row) shows too.
        reported = set(results["trial_name"]) if "trial_name" in results else set()
        lines += ["## Failed trials", "", "Each failed with this error (its evaluations before the failure are in the tables above).", ""]
        lines += [
            f"- `{name}` ({'has rows' if name in reported else 'no evaluation reported'}): {_clip(error.get('message', ''), 300)}"
            for name, error in sorted(failed.items())
        ] + [""]
    trials = list(dict.fromkeys(results["trial_name"])) if "trial_name" in results else []
    examples = []
    for trial in trials:
        files = store.list(f"audit/{trial}", ".parquet")
        if not files:
            continue
        audit = store.read_parquet(files[-1]).to_pandas()
        picked = pd.concat([audit[audit["outcome"] == 1.0].head(1), audit[audit["outcome"] != 1.0].head(examples_per_trial - 1)]).head(
            examples_per_trial
        )
        for row in picked.itertuples(index=False):
            verdict = {1.0: "win", 0.5: "tie", 0.0: "loss"}.get(row.outcome, "invalid")
            raw = str(row.raw_judgement).strip().replace("\n", " ")
            examples.append(
                f"- `{trial}` step {row.step}, prompt {row.index}: **{verdict}**. Policy: `{_clip(row.response)}` / "
                f"baseline: `{_clip(row.reference_response)}`" + (f" / judge: _{_clip(raw, 160)}_" if raw else "")
            )
    if examples:
        lines += ["## Judged examples", "", "From each trial's last evaluation (`audit/<trial>/step_*.parquet` holds every judgement).", ""]
        lines += examples + [""]
    return lines


def _table_line(stats: dict) -> str:
    """One table of a stage's stats.json: rows kept, source, the limit's sample, skipped rows, and the
    evaluation prompts removed (sft and pairs)."""
    read, tokenized = stats.get("read"), stats.get("tokenized") or {}
    source = read["source"] if read else "the synthetic task"
    line = f"{tokenized.get('rows_kept', '?')} rows from {source}"
    sampled = (read or {}).get("sampled")
    if sampled and sampled["limit"] < sampled["from_rows"]:
        line += f" (a seeded sample of {sampled['limit']} of {sampled['from_rows']} valid rows, data.seed {sampled['seed']})"
    skipped = (read or {}).get("defect_count", 0) + tokenized.get("defect_count", 0)
    line += f"; {skipped} skipped"
    first = ((read or {}).get("defects") or []) + (tokenized.get("defects") or [])
    line += f" (first: `{first[0]}`)" if first else ""
    if (read or {}).get("held_out_removed") is not None:
        line += f"; {read['held_out_prompts']} evaluation prompts removed ({read['held_out_removed']} rows)"
    return line


def _clip(text, n: int = 100) -> str:
    text = str(text).replace("`", "'")
    return text if len(text) <= n else text[: n - 3] + "..."


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


# ----------------------------------------------------------------------------------------------
# report.md


def _report_text(
    title, results, peaks, fits, comparisons, claims, curves, positions, sizes, lengths, training, gold_fits, toy, plots
) -> str:
    lines = [
        f"# Over-optimization report: {title}",
        "",
        f"{len(results)} evaluations of {len(peaks)} trials. Win rate = the policy's sample judged against the "
        f"comparison response for the same held-out prompt (ties 0.5); {BASELINE_TEXT}; d = sqrt(KL).",
        f"Intervals: {BOOTSTRAP_TEXT}.",
        "Config: `config.yaml`; every evaluation: `results.parquet`; fits and every table below: `fits.json`.",
        "",
        "## Over-optimization, pooled per objective (all betas and sizes, 6 equal-count bins of d over trained evaluations)",
        "",
        "rise = the best bin's mean gain; fall = the best bin's mean gain - the highest-d bin's (95 % trial-bootstrap "
        "intervals, simultaneous over the bins: a maximum over bins is positive on a flat curve by selection alone). This is the model-free reading of the hump; the fits below "
        "say where a fitted form turns over, which a plateau can also produce.",
        "",
    ]
    if curves:
        table = pd.DataFrame(
            [
                {
                    "objective": c.objective,
                    "step-0 win": _f(c.step0_win_rate),
                    "bins (win @ d)": " ".join(f"{w:.2f}@{d:.2f}" for w, d in zip(c.bin_win_rate, c.bin_d)),
                    "rise": f"{_f(c.rise)} {_ci(c.rise_ci, 3)}",
                    "fall": f"{_f(c.fall)} {_ci(c.fall_ci, 3)}",
                    "max KL smallest beta": _f(c.max_kl_smallest_beta, 2),
                    "max KL largest beta": _f(c.max_kl_largest_beta, 2),
                }
                for c in curves.values()
            ]
        )
        lines += [_markdown_table(table), ""]
        lines += [f"- {binned_claim(c)}" for c in curves.values()] + [""]

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
            comparison = comparisons.get((objective, size))
            lines += [
                f"Fits for {objective} / {size} (gain vs d, {forms['rl'].n_points} points, "
                f"{forms['rl'].n_groups or forms['rl'].n_points} {'trials' if forms['rl'].n_groups else 'points'} resampled):",
                "",
                "| form | alpha | beta_f | d* | predicted peak gain | in-sample RMSE | R^2 | leave-one-beta-out RMSE |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for form in ("rl", "bon", "quadratic"):
                fit = forms[form]
                held = _f(comparison.rmse[form]) if comparison else "-"
                lines.append(
                    f"| {FORM_NAMES[form]} | {_f(fit.alpha)} {_ci(fit.alpha_ci)} | {_f(fit.beta_f)} {_ci(fit.beta_f_ci)} | "
                    f"{_f(fit.d_star, 2)} {_ci(fit.d_star_ci)} | {_f(fit.peak)} | {_f(fit.rmse)} | {_f(fit.r2, 2)} | {held} |"
                )
            rl, quad = forms["rl"], forms["quadratic"]
            ratio = rl.rmse / quad.rmse if quad.rmse else float("nan")
            lines += ["", f"In-sample RMSE of the RL form is {_f(ratio, 2)} x the quadratic baseline's.", ""]
            lines += [f"- {claim}" for claim in claims[f"{objective}/{size}"]] + [""]

    lines += _intra_epoch_section(positions)
    lines += _length_section(lengths)
    lines += _training_section(training)
    lines += _size_section(sizes)
    if gold_fits:
        lines += _gold_section(gold_fits)
    if toy:
        lines += _toy_section(toy)
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def _intra_epoch_section(positions: pd.DataFrame) -> list[str]:
    lines = ["## Intra-epoch over-optimization: where each beta peaks", ""]
    if positions.empty:
        return lines + ["No evaluations with a win rate.", ""]
    lines += [
        "Seed-averaged win rate per evaluated epoch fraction; the peak is its maximum. 'clear decline': the last "
        "evaluation's interval lies below the peak's (seed-averaged Wilson bounds, conservative). "
        "Figure: `peak_positions.png` (open markers: the peak is the last evaluation).",
        "",
    ]
    table = pd.DataFrame(
        {
            "objective": positions["objective"],
            "size": positions["size"],
            "beta": positions["beta"].map(lambda v: f"{v:g}"),
            "seeds": positions["seeds"],
            "peak epoch": positions["peak_epoch"].map(lambda v: _f(v, 3)),
            "peak d": positions["peak_d"].map(lambda v: _f(v, 2)),
            "peak win": positions["peak_win_rate"].map(_f),
            "last epoch": positions["last_epoch"].map(lambda v: _f(v, 3)),
            "last win": positions["last_win_rate"].map(_f),
            "clear decline": positions["clear_decline"].map(lambda v: "yes" if v else "no"),
        }
    )
    within = positions[(positions["peak_epoch"] <= 1.0) & positions["clear_decline"]]
    lines += [
        _markdown_table(table),
        "",
        f"{len(within)} of {len(positions)} (objective, size, beta) curves peak within the first epoch and then "
        f"decline clearly; {int(positions['peak_at_end'].sum())} peak at their last evaluation (no decline seen).",
        "",
    ]
    return lines


def _length_section(lengths: pd.DataFrame) -> list[str]:
    lines = ["## Length exploitation", ""]
    if lengths.empty:
        return lines + ["No length columns in the rows.", ""]
    lines += [
        "length_r2 = R^2 of the per-sample log-ratio regressed on response length, one value per trained evaluation. "
        "Spearman correlations with 95 % intervals. The paper: higher for smaller models and smaller KL. "
        "Figures: `length_r2_vs_kl.png`, `length_vs_d.png`.",
        "",
    ]
    table = pd.DataFrame(
        {
            "size": lengths["size"],
            "evaluations": lengths["evaluations"],
            "mean length_r2": lengths["mean_length_r2"].map(_f),
            "median KL": lengths["median_kl"].map(lambda v: _f(v, 2)),
            "Spearman(length_r2, KL)": lengths["r2_vs_kl"].map(lambda c: c.text()),
            "Spearman(mean length, d)": lengths["length_vs_d"].map(lambda c: c.text()),
            "interval": lengths["r2_vs_kl"].map(lambda c: c.interval),
        }
    )
    lines += [_markdown_table(table), ""]
    for row in lengths.itertuples(index=False):
        c = row.r2_vs_kl
        if not math.isfinite(c.r):
            lines.append(f"- {row.size}: length_r2 vs KL undefined (too few evaluations or no variation).")
        elif c.excludes_zero():
            direction = "smaller" if c.r < 0 else "larger"
            lines.append(f"- {row.size}: length explains more of the log-ratio at {direction} KL (Spearman {c.text()}).")
        else:
            lines.append(f"- {row.size}: no clear trend of length_r2 with KL (Spearman {c.text()}, interval includes 0).")
    return lines + [""]


def _training_section(training: pd.DataFrame) -> list[str]:
    lines = ["## Do implicit reward accuracy and training loss predict win rate?", ""]
    if training.empty:
        return lines + ["No training metrics in the rows.", ""]
    lines += ["Within each size, over trained evaluations; 95 % intervals. Figure: `training_metrics_vs_win.png`.", ""]
    table = pd.DataFrame(
        {
            "size": training["size"],
            "metric": training["metric"],
            "evaluations": training["evaluations"],
            "Spearman": training["spearman"].map(lambda c: c.text()),
            "Pearson": training["pearson"].map(lambda c: c.text()),
            "interval": training["spearman"].map(lambda c: c.interval),
        }
    )
    lines += [_markdown_table(table), ""]
    for row in training.itertuples(index=False):
        c = row.spearman
        if not math.isfinite(c.r):
            lines.append(f"- {row.size} / {row.metric}: undefined.")
        elif c.excludes_zero():
            lines.append(
                f"- {row.size} / {row.metric}: correlated with win rate (Spearman {c.text()}); rho^2 = {c.r**2:.2f} of the rank variance."
            )
        else:
            lines.append(f"- {row.size} / {row.metric}: no evidence that it predicts win rate (Spearman {c.text()}, interval includes 0).")
    return lines + [""]


def _size_section(sizes: pd.DataFrame) -> list[str]:
    lines = ["## Size effect", ""]
    if sizes.empty:
        return lines + ["No trials.", ""]
    lines += ["Per objective and size: KL reached and where the trials peak (medians over trials).", ""]
    table = pd.DataFrame(
        {
            "objective": sizes["objective"],
            "size": sizes["size"],
            "trials": sizes["trials"],
            "max KL": sizes["max_kl"].map(lambda v: _f(v, 2)),
            "median max KL": sizes["median_max_kl"].map(lambda v: _f(v, 2)),
            "median peak epoch": sizes["median_peak_epoch"].map(lambda v: _f(v, 3)),
            "median peak d": sizes["median_peak_d"].map(lambda v: _f(v, 2)),
            "smallest beta": sizes["smallest_beta"].map(lambda v: f"{v:g}"),
            "its max KL": sizes["smallest_beta_max_kl"].map(lambda v: _f(v, 2)),
            "its peak epoch": sizes["smallest_beta_peak_epoch"].map(lambda v: _f(v, 3)),
        }
    )
    return lines + [_markdown_table(table), ""]


def _gold_section(gold_fits: dict) -> list[str]:
    lines = [
        "## Gold reward (the synthetic task's gold judge)",
        "",
        "The same fits with gain = gold reward - its step-0 mean (same objective and size).",
        "",
        "| objective / size | RL alpha | RL beta_f | d* | R^2 | peak |",
        "|---|---|---|---|---|---|",
    ]
    for (objective, size), forms in gold_fits.items():
        rl = forms["rl"]
        lines.append(
            f"| {objective} / {size} | {_f(rl.alpha)} {_ci(rl.alpha_ci)} | {_f(rl.beta_f)} {_ci(rl.beta_f_ci)} | "
            f"{_f(rl.d_star, 2)} {_ci(rl.d_star_ci)} | {_f(rl.r2, 2)} | {'identified' if rl.peak_identified() else 'not identified'} |"
        )
    return lines + [""]


def _toy_section(toy: dict) -> list[str]:
    from overopt.analysis.toy_mdp import summary_rows

    lines = [
        "## Toy MDP: probability moving outside the preference data",
        "",
        f"A tree MDP over tokens (a, b) up to 3 tokens with an absorbing end state (15 trajectories); the preference "
        f"pairs {', '.join(f'{c} > {r}' for c, r in toy['pairs'])} mention only {', '.join(toy['in_data'])}. "
        f"{toy['optimizer']}. Numbers: `toy_mdp.json`; method: `platform/overopt/analysis/toy_mdp.py`.",
        "",
        "| policy | objective | beta | mass outside the data: start | end | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary_rows(toy):
        lines.append(
            f"| {row['parametrisation']} | {row['objective']} | {row['beta']:g} | {row['outside_start']:.3f} | "
            f"{row['outside_end']:.3f} | {row['loss_end']:.4f} |"
        )
    example = toy["three_response"]
    policies = [(f"{part} {label}", v) for part in ("constructed", "trained") for label, v in example[part].items()]
    lines += [
        "",
        f"Three responses, {example['data']} (beta {example['beta']:g}): the DPO loss is minimal "
        f"({example['minimal_loss']:.6f}, at beta*h = {example['beta_h_at_minimum']:.4f}) for every policy with the "
        f"right y1/y2 ratio, whatever it gives y3:",
        "",
    ]
    lines += [f"- {label}: pi = ({', '.join(f'{p:.3f}' for p in v['policy'])}), loss {v['loss']:.6f}" for label, v in policies]
    return lines + [""]


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
