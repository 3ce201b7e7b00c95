"""Experiments side by side: their win-rate curves overlaid and what differs in their configs.

    python jobs/analyze.py runs/smoke-<hashA> runs/smoke-<hashB> [--out DIR]
    compare(["runs/smoke-<hashA>", "s3://bucket/overopt/smoke-<hashB>"], out=None)

Each experiment (a directory or a storage URI written by jobs/scale_sweep.py) is read as the single
analysis reads it (its rows: analysis/results.py) with its config.yaml. Written into ``out`` (default:
``comparisons/<name A>--<name B>...`` beside the first experiment, in its storage):

    comparison.md                 the experiments (labelled A, B, ...: location, trials, evaluations), the
                                  config keys whose values differ (dotted keys, one column per experiment;
                                  keys only one of them has show "-"), and per objective and size each
                                  experiment's trials, step-0 win rate, mean peak win rate and d there, max KL
    win_rate_vs_d_compare.png     per size (rows) and objective (columns): every trial's win rate vs
                                  d = sqrt(KL), one colour per experiment, one marker per beta
    comparison.json               the same tables as JSON

Nothing is fitted here (each experiment's own report has its fits); nothing re-runs a model.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node or in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from overopt.analysis.summary import trial_peaks
from overopt.config import dotted_items
from overopt.storage import Storage, is_uri

MARKERS = "osD^v<>px*h"  # one per beta (cycled past 11 betas)


def config_differences(configs: dict[str, dict]) -> pd.DataFrame:
    """The dotted keys whose values differ between ``configs`` (label -> config as loaded from YAML):
    one row per key, one column per label; a key a config lacks holds None."""
    flat = {label: dotted_items(config) for label, config in configs.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values())))
    missing = object()
    rows = []
    for key in keys:
        values = [flat[label].get(key, missing) for label in configs]
        if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str) for v in values):
            rows.append({"key": key, **{label: (None if v is missing else v) for label, v in zip(configs, values)}})
    return pd.DataFrame(rows, columns=["key", *configs])


def experiment_name_of(location: str) -> str:
    return location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def default_output(locations: list[str]) -> str:
    """comparisons/<name A>--<name B>... beside the first experiment (same storage)."""
    first = locations[0].split("?", 1)
    parent = first[0].rstrip("/").rsplit("/", 1)[0]
    folder = f"{parent}/comparisons/{'--'.join(experiment_name_of(location) for location in locations)}"
    return f"{folder}?{first[1]}" if len(first) > 1 else folder


def _load(location: str) -> tuple[pd.DataFrame, dict]:
    from overopt.analysis.report import load_results

    store = Storage(location)
    if not store.exists(""):
        raise FileNotFoundError(f"experiment directory {location} does not exist")
    config = yaml.safe_load(store.read_text("config.yaml")) if store.exists("config.yaml") else {}
    return load_results(location), config


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:g}"
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|")


def curve_summary(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per objective, size and experiment: trials, evaluations, step-0 win rate, the mean over trials of
    each trial's peak win rate and of d at it, and the largest KL reached."""
    rows = []
    for label, frame in results.items():
        peaks = trial_peaks(frame)
        for (objective, size), group in frame.groupby(["objective", "size"], sort=True):
            trial_rows = peaks[(peaks["objective"] == objective) & (peaks["size"] == size)]
            step0 = group[group["step"] == 0]["win_rate"]
            rows.append(
                {
                    "objective": objective,
                    "size": size,
                    "experiment": label,
                    "trials": int(group.groupby(["beta", "seed"]).ngroups),
                    "evaluations": len(group),
                    "betas": sorted(float(b) for b in group["beta"].unique()),
                    "step0_win_rate": float(step0.mean()) if len(step0) else float("nan"),
                    "mean_peak_win_rate": float(trial_rows["peak_win_rate"].mean()) if len(trial_rows) else float("nan"),
                    "mean_d_at_peak": float(trial_rows["d_at_peak"].mean()) if len(trial_rows) else float("nan"),
                    "max_kl": float(group["kl"].max()),
                }
            )
    return pd.DataFrame(rows)


def overlay_plot(results: dict[str, pd.DataFrame], path: Path) -> Path:
    sizes = list(dict.fromkeys(s for frame in results.values() for s in frame["size"]))
    objectives = list(dict.fromkeys(o for frame in results.values() for o in frame["objective"]))
    fig, axes = plt.subplots(len(sizes), len(objectives), figsize=(4.6 * len(objectives), 3.6 * len(sizes)), squeeze=False)
    colours = dict(zip(results, plt.cm.tab10(np.arange(len(results)) % 10)))
    betas = sorted({float(b) for frame in results.values() for b in frame["beta"]})
    markers = {beta: MARKERS[i % len(MARKERS)] for i, beta in enumerate(betas)}
    for i, size in enumerate(sizes):
        for j, objective in enumerate(objectives):
            ax = axes[i][j]
            drawn = False
            for label, frame in results.items():
                rows = frame[(frame["size"] == size) & (frame["objective"] == objective)]
                for (beta, seed), trial in rows.groupby(["beta", "seed"]):
                    trial = trial.sort_values("step")
                    ax.plot(
                        trial["d"],
                        trial["win_rate"],
                        "-",
                        marker=markers[float(beta)],
                        ms=4,
                        lw=1,
                        alpha=0.8,
                        color=colours[label],
                        label=f"{label} beta={beta:g}" if seed == rows["seed"].min() else None,
                    )
                    drawn = True
            if not drawn:
                ax.set_visible(False)
                continue
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{objective} - {size}")
            ax.set_xlabel("d = sqrt(KL)")
            ax.set_ylabel("win rate")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def _report(locations: dict[str, str], results: dict[str, pd.DataFrame], differences: pd.DataFrame, curves: pd.DataFrame) -> str:
    lines = ["# Experiments side by side", ""]
    lines += ["| label | experiment | location | trials | evaluations |", "|---|---|---|---|---|"]
    for label, location in locations.items():
        frame = results[label]
        lines.append(
            f"| {label} | {experiment_name_of(location)} | `{location}` | {frame.groupby(['objective', 'beta', 'size', 'seed']).ngroups} "
            f"| {len(frame)} |"
        )
    lines += ["", "## Config differences", ""]
    if differences.empty:
        lines += ["Their config.yaml files agree on every key (runs of one config: compare their seeds).", ""]
    else:
        lines += [
            f'{len(differences)} dotted keys of config.yaml differ ("-": the key is not in that config).',
            "",
            _markdown(differences),
            "",
        ]
    lines += [
        "## Win rate vs d",
        "",
        "![win rate vs d](win_rate_vs_d_compare.png)",
        "",
        "Every trial's curve, one colour per experiment and one marker per beta; the dotted line is 0.5 (the reference "
        "judged against its own samples). Each experiment's fits are in its own report.md.",
        "",
    ]
    table = curves.assign(
        betas=curves["betas"].map(lambda b: ", ".join(f"{x:g}" for x in b)),
        step0_win_rate=curves["step0_win_rate"].map(lambda v: f"{v:.3f}" if math.isfinite(v) else "-"),
        mean_peak_win_rate=curves["mean_peak_win_rate"].map(lambda v: f"{v:.3f}" if math.isfinite(v) else "-"),
        mean_d_at_peak=curves["mean_d_at_peak"].map(lambda v: f"{v:.2f}" if math.isfinite(v) else "-"),
        max_kl=curves["max_kl"].map(lambda v: f"{v:.2f}" if math.isfinite(v) else "-"),
    ).rename(
        columns={
            "step0_win_rate": "step-0 win rate",
            "mean_peak_win_rate": "mean peak win rate",
            "mean_d_at_peak": "mean d at peak",
            "max_kl": "max KL",
        }
    )
    lines += ["Per objective and size (peaks: each trial's best evaluation, averaged over its trials):", "", _markdown(table), ""]
    return "\n".join(lines)


def compare(locations: list[str], out: str | None = None, log=print) -> str:
    """Write the comparison of the experiments at ``locations`` into ``out`` (default: default_output);
    returns the location of comparison.md."""
    if len(locations) < 2:
        raise ValueError("a comparison needs two experiments or more")
    labels = [chr(ord("A") + i) if i < 26 else f"E{i}" for i in range(len(locations))]
    located = dict(zip(labels, map(str, locations)))
    loaded = {label: _load(location) for label, location in located.items()}
    results = {label: frame for label, (frame, _) in loaded.items()}
    differences = config_differences({label: config for label, (_, config) in loaded.items()})
    curves = curve_summary(results)
    target = out or default_output(list(located.values()))
    store = Storage(target)
    with tempfile.TemporaryDirectory(prefix="overopt-compare-") as scratch:
        folder = Path(store.path()) if store.local else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        overlay_plot(results, folder / "win_rate_vs_d_compare.png")
        (folder / "comparison.md").write_text(_report(located, results, differences, curves))
        (folder / "comparison.json").write_text(
            json.dumps(
                {
                    "experiments": located,
                    "config_differences": json.loads(differences.to_json(orient="records")),
                    "curves": json.loads(curves.to_json(orient="records")),
                },
                indent=2,
            )
        )
        if not store.local:
            for path in sorted(folder.iterdir()):
                store.write_bytes(path.name, path.read_bytes())
    report = store.uri("comparison.md")
    log(f"comparison of {', '.join(f'{label}={experiment_name_of(loc)}' for label, loc in located.items())}: {report}")
    if not differences.empty:
        log(f"  config differences: {', '.join(differences['key'])}")
    return report if is_uri(target) else str(Path(report))
