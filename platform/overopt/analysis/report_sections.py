"""The sections of report.md, in markdown: each a heading, what its numbers mean, a table (report_tables.py,
written by pandas' DataFrame.to_markdown) and the claims worded from it (claims.py, goodhart.py, matched.py).

    text = report_body(title, results, peaks, fits, ...) + "\\n".join(costs_section(sweep_costs))

report.py computes the analyses and calls these; nothing here reads or writes a file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from overopt.analysis import report_tables as tables
from overopt.analysis.claims import BASELINE_TEXT, BOOTSTRAP_TEXT, binned_claim, length_claim, training_claim
from overopt.analysis.costs import SweepCosts
from overopt.analysis.formatting import num, percent, whole
from overopt.analysis.goodhart import GoodhartTables, length_growth_lines, proxy_and_gold_lines
from overopt.analysis.matched import matched_verdict
from overopt.analysis.measured_costs import STARTUP_PHASES

SIZE_PAPER_TEXT = (
    "The DAA over-optimization paper (Rafailov et al. 2024) reports that larger models reach higher peak win rates and degrade "
    "less and later. Here, per objective, the largest size against the smallest (medians over trials; fall = peak - last):"
)


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a markdown table, every cell as its str(); empty for a table of no rows (it says nothing a
    sentence would not)."""
    if frame.empty:
        return ""
    return frame.astype(str).to_markdown(index=False, disable_numparse=True)


def section(
    heading: str, intro: str, table: pd.DataFrame | None = None, bullets: Sequence[str] | None = None, closing: str | None = None
) -> list[str]:
    """'## heading', the intro, the table, a closing paragraph and bullet points, each followed by a blank line."""
    lines = [f"## {heading}", "", intro, ""]
    if table is not None:
        lines += [markdown_table(table), ""]
    if closing is not None:
        lines += [closing, ""]
    if bullets is not None:
        lines += [f"- {line}" for line in bullets] + [""]
    return lines


def empty_section(heading: str, why: str) -> list[str]:
    """'## heading' and why the section has nothing to show."""
    return [f"## {heading}", "", why, ""]


def report_body(
    title, results, peaks, fits, comparisons, claims, curves, positions, sizes, lengths, training, gold_fits, toy, plots, goodhart
) -> str:
    """report.md up to its figures: the pooled hump, the Goodhart sections, per objective its trials and fits, then the
    intra-epoch peaks, length, training metrics, size, gold reward and toy MDP sections."""
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
        lines += [markdown_table(tables.binned_table(curves)), ""]
        lines += [f"- {binned_claim(c)}" for c in curves.values()] + [""]
    lines += goodhart_sections(goodhart)
    for objective in dict.fromkeys(results["objective"]):
        lines += [f"## {objective}", "", markdown_table(tables.peaks_table(peaks, objective)), ""]
        for (fit_objective, size), forms in fits.items():
            if fit_objective == objective:
                lines += _fits_part(objective, size, forms, comparisons.get((objective, size)), claims[f"{objective}/{size}"])
    lines += intra_epoch_section(positions)
    lines += length_section(lengths)
    growth = tables.shown(goodhart.length, tables.GROWTH_COLUMNS)
    lines += section(
        "Length growth", "Mean length (tokens) at step 0 and at the largest KL, seed means.", growth, length_growth_lines(goodhart.length)
    )
    lines += training_section(training)
    lines += size_section(sizes)
    lines += section("Model size against the paper", SIZE_PAPER_TEXT, bullets=goodhart.size_lines)
    if gold_fits:
        intro = "The same fits with gain = gold reward - its step-0 mean (same objective and size)."
        lines += section("Gold reward (the synthetic task's gold judge)", intro, tables.gold_fits_table(gold_fits))
    if toy:
        lines += toy_section(toy)
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def _fits_part(objective: str, size: str, forms: dict, comparison, claims: list[str]) -> list[str]:
    rl, quad = forms["rl"], forms["quadratic"]
    resampled = f"{rl.n_groups or rl.n_points} {'trials' if rl.n_groups else 'points'} resampled"
    ratio = rl.rmse / quad.rmse if quad.rmse else float("nan")
    return (
        [
            f"Fits for {objective} / {size} (gain vs d, {rl.n_points} points, {resampled}):",
            "",
            markdown_table(tables.fit_table(forms, comparison)),
            "",
            f"In-sample RMSE of the RL form is {num(ratio, 2)} x the quadratic baseline's.",
            "",
        ]
        + [f"- {claim}" for claim in claims]
        + [""]
    )


def goodhart_sections(goodhart: GoodhartTables) -> list[str]:
    """'Objectives at matched distance' (gold, and the proxy where there is one) and 'Proxy and gold'."""
    lines = [
        "## Objectives at matched distance",
        "",
        "At equal beta the objectives move the policy different distances, so their falls are compared at equal d: each trial's "
        "win rate interpolated along d inside its own range, averaged over the trials reaching each d, read over the d range every "
        "objective of the size reaches; drop = pooled peak - value at that range's end (analysis/matched.py). "
        "Figure: `gold_and_proxy_pooled_vs_d.png`.",
        "",
    ]
    for metric, table in goodhart.matched.items():
        shown = tables.shown(table, tables.MATCHED_COLUMNS)
        lines += [f"{'Gold' if metric == 'win_rate' else 'Proxy'} win rate:", "", markdown_table(shown), ""]
        lines += [f"- {line}" for line in matched_verdict(table).splitlines()] + [""]
    intro = (
        "Per trial: gold = the judge's win rate, proxy = the training pairs' labeller's; read at gold's peak and at the last "
        "evaluation. Proxy kept rising: proxy at the last evaluation >= at gold's peak. Over-shot own labels: the proxy's own best "
        "is above its last value by more than the last proxy interval's half-width. Figure: `gold_and_proxy_vs_d.png`."
    )
    if goodhart.proxy.empty:
        return lines + empty_section("Proxy and gold", "No proxy in this experiment: the rows carry no proxy win rate.")
    proxy = tables.shown(goodhart.proxy, tables.PROXY_COLUMNS)
    return lines + section("Proxy and gold", intro, proxy, proxy_and_gold_lines(goodhart.proxy))


def intra_epoch_section(positions: pd.DataFrame) -> list[str]:
    """Per (objective, size, beta): at which epoch fraction the seed-averaged win rate peaks, and whether it then declines."""
    intro = (
        "Seed-averaged win rate per evaluated epoch fraction; the peak is its maximum. 'clear decline': the last "
        "evaluation's interval lies below the peak's (seed-averaged Wilson bounds, conservative). "
        "Figure: `peak_positions.png` (open markers: the peak is the last evaluation)."
    )
    heading = "Intra-epoch over-optimization: where each beta peaks"
    if positions.empty:
        return empty_section(heading, "No evaluations with a win rate.")
    within = positions[(positions["peak_epoch"] <= 1.0) & positions["clear_decline"]]
    closing = (
        f"{len(within)} of {len(positions)} (objective, size, beta) curves peak within the first epoch and then "
        f"decline clearly; {int(positions['peak_at_end'].sum())} peak at their last evaluation (no decline seen)."
    )
    return section(heading, intro, tables.positions_table(positions), closing=closing)


def length_section(lengths: pd.DataFrame) -> list[str]:
    """Per size: how much of the log-ratio response length explains, against KL."""
    intro = (
        "length_r2 = R^2 of the per-sample log-ratio regressed on response length, one value per trained evaluation. "
        "Spearman correlations with 95 % intervals. The paper: higher for smaller models and smaller KL. "
        "Figures: `length_r2_vs_kl.png`, `length_vs_d.png`."
    )
    if lengths.empty:
        return empty_section("Length exploitation", "No length columns in the rows.")
    bullets = [length_claim(size, c) for size, c in zip(lengths["size"], lengths["r2_vs_kl"])]
    return section("Length exploitation", intro, tables.lengths_table(lengths), bullets)


def training_section(training: pd.DataFrame) -> list[str]:
    """Per size: whether implicit reward accuracy and training loss predict win rate."""
    intro = "Within each size, over trained evaluations; 95 % intervals. Figure: `training_metrics_vs_win.png`."
    heading = "Do implicit reward accuracy and training loss predict win rate?"
    if training.empty:
        return empty_section(heading, "No training metrics in the rows.")
    bullets = [training_claim(s, m, c) for s, m, c in zip(training["size"], training["metric"], training["spearman"])]
    return section(heading, intro, tables.training_table(training), bullets)


def size_section(sizes: pd.DataFrame) -> list[str]:
    """Per objective and size: KL reached and where the trials peak."""
    if sizes.empty:
        return empty_section("Size effect", "No trials.")
    intro = "Per objective and size: KL reached and where the trials peak (medians over trials)."
    return section("Size effect", intro, tables.sizes_table(sizes))


def toy_section(toy: dict) -> list[str]:
    """The toy MDP's numbers (toy_mdp.json): mass moving off the data, and a loss that is minimal whatever the
    policy gives a response outside the data."""
    intro = (
        f"A tree MDP over tokens (a, b) up to 3 tokens with an absorbing end state (15 trajectories); the preference "
        f"pairs {', '.join(f'{c} > {r}' for c, r in toy['pairs'])} mention only {', '.join(toy['in_data'])}. "
        f"{toy['optimizer']}. Numbers: `toy_mdp.json`; method: `platform/overopt/analysis/toy_mdp.py`."
    )
    example = toy["three_response"]
    closing = (
        f"Three responses, {example['data']} (beta {example['beta']:g}): the DPO loss is minimal "
        f"({example['minimal_loss']:.6f}, at beta*h = {example['beta_h_at_minimum']:.4f}) for every policy with the "
        f"right y1/y2 ratio, whatever it gives y3:"
    )
    policies = [(f"{part} {label}", v) for part in ("constructed", "trained") for label, v in example[part].items()]
    bullets = [f"{label}: pi = ({', '.join(f'{p:.3f}' for p in v['policy'])}), loss {v['loss']:.6f}" for label, v in policies]
    return section("Toy MDP: probability moving outside the preference data", intro, tables.toy_table(toy), bullets, closing=closing) + [
        "In a sweep the same mechanism shows as a policy that over-shoots its own labels: the proxy's win rate falls "
        "with gold's (the 'Proxy and gold' section). A labeller without bias separates it from a wrong target: for the "
        "embedded task, `configs/embedded_unbiased.yaml` is the same recipe with the labeller's length bias at 0, and "
        "`python jobs/analyze.py <this experiment> <the control's>` puts the two side by side; gold falling there is "
        "not the labeller's bias.",
        "",
    ]


def startup_phase_lines(costs: pd.DataFrame) -> list[str]:
    """Where a trial's start-up went: the first trial to start (cold processes and caches) and the
    median of the later ones; nothing when the rows carry no phase stamps."""
    timed = costs.dropna(subset=list(STARTUP_PHASES)).sort_values("started_at")
    if timed.empty:
        return []

    def phases(frame: pd.DataFrame) -> str:
        return ", ".join(f"{text} {num(float(frame[column].median()), 1)} s" for column, text in STARTUP_PHASES.items())

    later = timed.iloc[1:]
    return [
        f"- Where the start-up went, the first trial to start: {phases(timed.iloc[:1])}"
        + (f"; later trials (median of {len(later)}): {phases(later)}." if len(later) else ".")
    ]


def costs_section(sweep: SweepCosts) -> list[str]:
    """'## What the sweep cost': worker-seconds per trial and in all by phase, what the degradation stopper
    saved, and the dry-run's estimate against the outcome (computed in analysis/costs.py)."""
    lines = ["## What the sweep cost", ""]
    if sweep.missing:
        return lines + [f"Not computed: {sweep.missing}.", ""]
    held, totals, costs = sweep.held, sweep.totals, sweep.costs
    # experiment_costs fills every table whenever it leaves ``missing`` empty
    assert held is not None and totals is not None and costs is not None and sweep.outcome is not None, "costs without their tables"
    unit = f"{held.unit}-s"
    lines += [
        f"Worker-seconds ({unit}) = wall seconds x {held.text()}, from its driver's start to its last row. "
        "Held, not busy. A trial's wall time: its trial_started_at to its last row's reported_at. Start-up = to its first row, less "
        "that (step-0) evaluation's own seconds (the fixed cost: Ray Train's workers, loading the model, DeepSpeed, the step-0 "
        "checkpoint); training = the training workers' time between hand-overs (interval_seconds - evaluation_wait_seconds, steps "
        "and checkpoint writes); evaluation = the rest (training waiting for evaluations). Not counted: the stages, waiting for "
        "resources, what a trial did after its last row. Method: `platform/overopt/analysis/costs.py`; numbers: `fits.json` (costs).",
        "",
    ]
    phases = [("start-up", totals.startup_worker_seconds), ("training", totals.training_worker_seconds)]
    phases.append(("evaluation", totals.evaluation_worker_seconds))
    spent = totals.worker_seconds
    lines += [
        f"- In all: **{whole(spent)} {unit}** ({spent / 3600:,.1f} {held.unit}-hours) over {totals.trials} trials, {whole(totals.wall_seconds)} s "
        "of trial wall time: " + ", ".join(f"{name} {whole(v)} ({percent(v / spent if spent else math.nan)})" for name, v in phases) + ".",
        f"- Busy: the training workers worked {whole(totals.busy_training_worker_seconds)} of their {whole(totals.wall_seconds * held.training)} "
        f"{unit} held; the evaluation bundles {whole(totals.busy_evaluation_worker_seconds)} of {whole(totals.wall_seconds * held.evaluation)}.",
        f"- A trial's fixed cost (start-up): median {num(totals.median_startup_seconds, 1)} s. Seconds per evaluation (checkpoint taken "
        f"-> metrics ready): median {num(totals.median_seconds_per_evaluation, 2)} s. Share of a trial spent evaluating (the "
        f"evaluations' own seconds / wall): {percent(totals.evaluating_share)} over all trials, median {percent(totals.median_evaluating_share)} per trial.",
    ]
    lines += startup_phase_lines(costs)
    if totals.stopped:
        lines.append(
            f"- The degradation stopper stopped {totals.stopped} of {totals.trials} trials. Running those to their planned end would "
            f"have cost about **{whole(totals.saved_worker_seconds)} {unit} more**: {whole(totals.unstopped_worker_seconds)} instead of "
            f"{whole(spent)}, so stopping saved {percent(totals.saved_share)}. An estimate: per stopped trial, the steps it did not train x "
            "its own seconds per step + the scheduled evaluations it did not run x its median seconds per evaluation, x the devices "
            "held (in async mode, where evaluations overlap training, an upper bound)"
            + (f"; {totals.unmeasured_stops} stopped trial(s) lack planned_steps and are not counted." if totals.unmeasured_stops else ".")
        )
    else:
        lines.append("- The degradation stopper stopped no trial: nothing saved.")
    restarted = int((costs["drivers"] > 1).sum())
    if restarted:
        lines.append(
            f"- {restarted} trial(s) were run by more than one driver (restarted): each driver's span counts, steps trained again in start-up."
        )
    lines += ["", markdown_table(tables.trial_costs_table(costs, unit)), "", "### Estimate and outcome", ""]
    if sweep.estimate is None:
        return lines + [
            "No estimate: no earlier experiment of this config family (same settings but for how many trials, steps and evaluations "
            "run; `COUNT_ONLY` in costs.py) with timed rows had finished in the same storage before this one started, so "
            "`jobs/scale_sweep.py --dry-run` could print only the counts.",
            "",
        ]
    return lines + [
        f"What `--dry-run` would have printed before this sweep ran: counts from {sweep.counts_from}, seconds measured by "
        f"{', '.join(sweep.measurements)} (the latest earlier experiment of this config family to run each size; per size, medians over "
        "trials), every trial run to its planned end. Outcome: this sweep's own medians; 'had no trial stopped' adds the stopper's "
        "estimated saving to what was spent.",
        "",
        markdown_table(tables.estimate_table(sweep, unit)),
        "",
    ]
