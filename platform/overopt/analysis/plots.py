"""The report's figures (matplotlib, Agg backend: files only).

win_rate_vs_d.png              per size (rows) and objective (columns), one colour per beta: win rate vs
                               d = sqrt(KL), with the fitted RL (solid) and best-of-n (dashed) curves drawn
                               from the step-0 baseline
win_rate_vs_epoch.png          win rate vs epoch fraction (when the peak comes)
length_vs_d.png                mean response length vs d (verbosity as KL grows)
peak_positions.png             per objective: epoch fraction and d of the seed-averaged peak vs beta, per size
length_r2_vs_kl.png            per size: length_r2 (R^2 of log-ratio on length) vs KL, one colour per objective
training_metrics_vs_win.png    per size: implicit reward accuracy and training loss vs win rate
gold_and_proxy_vs_d.png        per size (rows) and objective (columns), one colour per beta: gold win rate
                               (solid) and proxy win rate (dashed) vs d, each trial; only with a proxy
gold_and_proxy_pooled_vs_d.png per size: each objective's pooled curves at matched d (analysis/matched.py),
                               gold solid and proxy dashed on the same axes (Gao et al.'s figure)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node or in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from overopt.analysis.matched import has_metric, pooled_curves
from overopt.analysis.summary import REFERENCE_WIN_RATE


def _grid(results: pd.DataFrame):
    sizes = list(dict.fromkeys(results["size"]))
    objectives = list(dict.fromkeys(results["objective"]))
    fig, axes = plt.subplots(len(sizes), len(objectives), figsize=(4.2 * len(objectives), 3.4 * len(sizes)), squeeze=False)
    return fig, axes, sizes, objectives


def _panels_by_size_and_objective(results: pd.DataFrame):
    """A (size x objective) grid of axes: the figure, then each panel with data as (ax, size, objective,
    its rows, a colour per beta); panels without rows are hidden."""
    fig, axes, sizes, objectives = _grid(results)
    betas = sorted(results["beta"].unique())
    colours = dict(zip(betas, plt.cm.viridis(np.linspace(0, 0.9, len(betas)))))
    panels = []
    for i, size in enumerate(sizes):
        for j, objective in enumerate(objectives):
            rows = results[(results["size"] == size) & (results["objective"] == objective)]
            if rows.empty:
                axes[i][j].set_visible(False)
            else:
                panels.append((axes[i][j], size, objective, rows, colours))
    return fig, panels


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _objective_colours(results: pd.DataFrame) -> dict:
    objectives = list(dict.fromkeys(results["objective"]))
    return dict(zip(objectives, plt.cm.tab10(np.arange(len(objectives)) % 10)))


def _panels(results: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, path: Path, fits=None, baselines=None) -> Path:
    fig, panels = _panels_by_size_and_objective(results)
    for ax, size, objective, rows, colours in panels:
        for (beta, seed), trial in rows.groupby(["beta", "seed"]):
            trial = trial.sort_values("step")
            ax.plot(
                trial[x],
                trial[y],
                "o-",
                ms=3,
                lw=1,
                color=colours[beta],
                alpha=0.8,
                label=f"beta={beta:g}" if seed == rows["seed"].min() else None,
            )
        baseline = baselines[(objective, size)].value if baselines and (objective, size) in baselines else REFERENCE_WIN_RATE
        if fits and (objective, size) in fits:
            grid = np.linspace(0, np.nanmax(rows["d"]) * 1.05, 200)
            for form, style in (("rl", "-"), ("bon", "--")):
                fit = fits[(objective, size)][form]
                ax.plot(grid, baseline + fit.predict(grid), style, color="black", lw=1.2, label=f"{form} fit (R2={fit.r2:.2f})")
        if y == "win_rate":
            ax.axhline(baseline, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{objective} - {size}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        _legend(ax)
    return _save(fig, path)


def peak_positions_plot(peaks: pd.DataFrame, path: Path) -> Path:
    """Epoch fraction (top) and d (bottom) of the seed-averaged peak against beta; open markers: peak at the
    last evaluation (no decline seen)."""
    objectives = list(dict.fromkeys(peaks["objective"]))
    sizes = list(dict.fromkeys(peaks["size"]))
    markers = dict(zip(sizes, "osD^v<>"))
    fig, axes = plt.subplots(2, len(objectives), figsize=(4.2 * len(objectives), 6.4), squeeze=False)
    for j, objective in enumerate(objectives):
        for size in sizes:
            rows = peaks[(peaks["objective"] == objective) & (peaks["size"] == size)].sort_values("beta")
            if rows.empty:
                continue
            for i, column in enumerate(("peak_epoch", "peak_d")):
                ax = axes[i][j]
                (line,) = ax.plot(rows["beta"], rows[column], "-", lw=1, label=size)
                end = rows["peak_at_end"].to_numpy(bool)
                ax.scatter(rows["beta"][~end], rows[column][~end], marker=markers[size], color=line.get_color(), zorder=3)
                ax.scatter(
                    rows["beta"][end], rows[column][end], marker=markers[size], facecolors="none", edgecolors=line.get_color(), zorder=3
                )
        for i, label in enumerate(("epoch fraction at peak", "d at peak")):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.set_xlabel("beta")
            ax.set_ylabel(label)
            ax.set_title(f"{objective}")
            _legend(ax)
    return _save(fig, path)


def length_r2_plot(results: pd.DataFrame, path: Path) -> Path:
    """length_r2 against KL per size (trained evaluations), one colour per objective."""
    rows = results[(results["step"] > 0) & np.isfinite(results["length_r2"].astype(float))] if "length_r2" in results else results.iloc[0:0]
    sizes = list(dict.fromkeys(results["size"]))
    colours = _objective_colours(results)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.4 * len(sizes), 3.6), squeeze=False)
    for j, size in enumerate(sizes):
        ax = axes[0][j]
        for objective, group in rows[rows["size"] == size].groupby("objective", sort=False):
            ax.scatter(group["kl"], group["length_r2"], s=10, alpha=0.7, color=colours[objective], label=objective)
        ax.set_xlabel("KL(pi || pi_ref)")
        ax.set_ylabel("length R^2 of the log-ratio")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{size}")
        _legend(ax)
    return _save(fig, path)


def training_metrics_plot(results: pd.DataFrame, correlations: pd.DataFrame, path: Path) -> Path:
    """Implicit reward accuracy and training loss (columns) against win rate, per size (rows)."""
    sizes = list(dict.fromkeys(results["size"]))
    metrics = ("implicit_accuracy", "loss")
    colours = _objective_colours(results)
    fig, axes = plt.subplots(len(sizes), len(metrics), figsize=(4.4 * len(metrics), 3.4 * len(sizes)), squeeze=False)
    for i, size in enumerate(sizes):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            if metric not in results:
                ax.set_visible(False)
                continue
            rows = results[(results["size"] == size) & (results["step"] > 0)]
            for objective, group in rows.groupby("objective", sort=False):
                ax.scatter(group[metric], group["win_rate"], s=10, alpha=0.7, color=colours[objective], label=objective)
            match = correlations[(correlations["size"] == size) & (correlations["metric"] == metric)]
            text = f"Spearman {match['spearman'].iloc[0].text()}" if len(match) else ""
            ax.set_title(f"{size}: {metric}\n{text}", fontsize=9)
            ax.set_xlabel(metric)
            ax.set_ylabel("win rate")
            _legend(ax)
    return _save(fig, path)


GOLD_AND_PROXY_STYLES = [Line2D([], [], color="black", ls="-", label="gold"), Line2D([], [], color="black", ls="--", label="proxy")]


def gold_and_proxy_per_trial_plot(results: pd.DataFrame, path: Path) -> Path:
    """Gold win rate (solid) and proxy win rate (dashed) against d, every trial, one colour per beta."""
    fig, panels = _panels_by_size_and_objective(results)
    for ax, size, objective, rows, colours in panels:
        for (beta, seed), trial in rows.groupby(["beta", "seed"]):
            trial = trial.sort_values("step")
            label = f"beta={beta:g}" if seed == rows["seed"].min() else None
            ax.plot(trial["d"], trial["win_rate"], "o-", ms=3, lw=1, color=colours[beta], alpha=0.8, label=label)
            ax.plot(trial["d"], trial["proxy_win_rate"], "x--", ms=3, lw=1, color=colours[beta], alpha=0.8)
        ax.set_title(f"{objective} - {size}")
        ax.set_xlabel("d = sqrt(KL)")
        ax.set_ylabel("win rate vs baseline")
        handles = ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles + GOLD_AND_PROXY_STYLES, fontsize=7)
    return _save(fig, path)


def gold_and_proxy_pooled_plot(results: pd.DataFrame, path: Path) -> Path:
    """Per size, each objective's pooled curves at matched d: gold solid, proxy dashed (where there is one)."""
    sizes = list(dict.fromkeys(results["size"]))
    colours = _objective_colours(results)
    curves = {metric: pooled_curves(results, metric) for metric in ("win_rate", "proxy_win_rate") if has_metric(results, metric)}
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.8 * len(sizes), 3.8), squeeze=False)
    for j, size in enumerate(sizes):
        ax = axes[0][j]
        for metric, style in (("win_rate", "-"), ("proxy_win_rate", "--")):
            if metric not in curves:
                continue
            for objective, curve in curves[metric][curves[metric]["size"] == size].groupby("objective", sort=False):
                label = objective if metric == "win_rate" else None
                ax.plot(curve["d"], curve[metric], style, lw=1.5, color=colours[objective], label=label)
        ax.set_title(f"{size}: pooled over trials at matched d" + ("" if "proxy_win_rate" in curves else " (no proxy)"), fontsize=9)
        ax.set_xlabel("d = sqrt(KL)")
        ax.set_ylabel("win rate vs baseline")
        handles = ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles + (GOLD_AND_PROXY_STYLES if "proxy_win_rate" in curves else []), fontsize=7)
    return _save(fig, path)


def draw_all(
    results: pd.DataFrame,
    fits: dict,
    out_dir: Path,
    baselines: dict | None = None,
    peaks: pd.DataFrame | None = None,
    training_correlations: pd.DataFrame | None = None,
) -> list[Path]:
    """Every figure of the report that the given tables allow; returns their paths."""
    paths = [
        _panels(results, "d", "win_rate", "d = sqrt(KL)", "win rate vs reference", out_dir / "win_rate_vs_d.png", fits, baselines),
        _panels(
            results, "epoch_fraction", "win_rate", "epoch", "win rate vs reference", out_dir / "win_rate_vs_epoch.png", baselines=baselines
        ),
        _panels(results, "d", "mean_length", "d = sqrt(KL)", "mean response length (tokens)", out_dir / "length_vs_d.png"),
    ]
    if peaks is not None and not peaks.empty:
        paths.append(peak_positions_plot(peaks, out_dir / "peak_positions.png"))
    if "length_r2" in results:
        paths.append(length_r2_plot(results, out_dir / "length_r2_vs_kl.png"))
    if training_correlations is not None and not training_correlations.empty:
        paths.append(training_metrics_plot(results, training_correlations, out_dir / "training_metrics_vs_win.png"))
    if has_metric(results, "proxy_win_rate"):
        paths.append(gold_and_proxy_per_trial_plot(results, out_dir / "gold_and_proxy_vs_d.png"))
    if has_metric(results, "win_rate"):
        paths.append(gold_and_proxy_pooled_plot(results, out_dir / "gold_and_proxy_pooled_vs_d.png"))
    return paths
