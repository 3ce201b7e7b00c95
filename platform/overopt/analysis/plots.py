"""The report's figures: one row of panels per model size, one panel per objective, one colour per beta.

    win_rate_vs_d.png       win rate vs d = sqrt(KL), with the fitted RL (solid) and best-of-n (dashed) curves
    win_rate_vs_epoch.png   win rate vs epoch fraction (when the peak comes)
    length_vs_d.png         mean response length vs d (verbosity as KL grows)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node or in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from overopt.analysis.summary import REFERENCE_WIN_RATE


def _grid(results: pd.DataFrame):
    sizes = list(dict.fromkeys(results["size"]))
    objectives = list(dict.fromkeys(results["objective"]))
    fig, axes = plt.subplots(len(sizes), len(objectives), figsize=(4.2 * len(objectives), 3.4 * len(sizes)), squeeze=False)
    return fig, axes, sizes, objectives


def _panels(results: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, path: Path, fits=None) -> Path:
    fig, axes, sizes, objectives = _grid(results)
    betas = sorted(results["beta"].unique())
    colours = dict(zip(betas, plt.cm.viridis(np.linspace(0, 0.9, len(betas)))))
    for i, size in enumerate(sizes):
        for j, objective in enumerate(objectives):
            ax = axes[i][j]
            rows = results[(results["size"] == size) & (results["objective"] == objective)]
            if rows.empty:
                ax.set_visible(False)
                continue
            for (beta, seed), trial in rows.groupby(["beta", "seed"]):
                trial = trial.sort_values("step")
                ax.plot(trial[x], trial[y], "o-", ms=3, lw=1, color=colours[beta], alpha=0.8, label=f"beta={beta:g}" if seed == rows["seed"].min() else None)
            if fits and (objective, size) in fits:
                grid = np.linspace(0, rows["d"].max() * 1.05, 200)
                for form, style in (("rl", "-"), ("bon", "--")):
                    fit = fits[(objective, size)][form]
                    ax.plot(grid, REFERENCE_WIN_RATE + fit.predict(grid), style, color="black", lw=1.2, label=f"{form} fit (R2={fit.r2:.2f})")
            if y == "win_rate":
                ax.axhline(REFERENCE_WIN_RATE, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{objective} - {size}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(results: pd.DataFrame, fits: dict, out_dir: Path) -> list[Path]:
    return [
        _panels(results, "d", "win_rate", "d = sqrt(KL)", "win rate vs reference", out_dir / "win_rate_vs_d.png", fits),
        _panels(results, "epoch_fraction", "win_rate", "epoch", "win rate vs reference", out_dir / "win_rate_vs_epoch.png"),
        _panels(results, "d", "mean_length", "d = sqrt(KL)", "mean response length (tokens)", out_dir / "length_vs_d.png"),
    ]
