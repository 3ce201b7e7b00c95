"""jobs/analyze.py with several experiments: one report overlaying their curves, with their config
differences as dotted keys, from results tables and configs written to temporary experiment directories."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd

from overopt.config import load_config

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("analyze_job", ROOT / "jobs" / "analyze.py")
analyze_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(analyze_job)


def _experiment(directory: Path, overrides: list[str], peak: float, betas: list[float]) -> Path:
    """An experiment directory as a sweep leaves it: config.yaml and results.parquet (rows of a hump in d)."""
    directory.mkdir(parents=True)
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"storage={directory.parent}", *overrides])
    (directory / "config.yaml").write_text(cfg.to_yaml())
    rows = []
    for beta in betas:
        for step, d in enumerate([0.0, 0.5, 1.0, 1.5, 2.0]):
            rows.append(
                {
                    "trial_name": f"t_{beta}",
                    "objective": "dpo",
                    "beta": beta,
                    "size": "tiny",
                    "seed": 0,
                    "step": step,
                    "epoch_fraction": step / 4,
                    "d": d,
                    "kl": d * d,
                    "win_rate": 0.5 + peak * d * (2 - d) / (1 + beta),
                    "stop_reason": "completed",
                }
            )
    pd.DataFrame(rows).to_parquet(directory / "results.parquet")
    return directory


def test_two_experiments_side_by_side(tmp_path, capsys):
    a = _experiment(tmp_path / "runs/smoke-aaaa", [], peak=0.2, betas=[0.1, 1.0])
    b = _experiment(tmp_path / "runs/smoke-bbbb", ["train.betas={dpo: [0.3]}", "train.lr=3e-4", "seed=1"], peak=0.1, betas=[0.3])
    assert analyze_job.main([str(a), str(b)]) == 0
    out = tmp_path / "runs/comparisons/smoke-aaaa--smoke-bbbb"  # the default: beside the first
    report = (out / "comparison.md").read_text()
    assert f"| A | smoke-aaaa | `{a}` | 2 | 10 |" in report and f"| B | smoke-bbbb | `{b}` | 1 | 5 |" in report
    assert "| train.betas.dpo | [0.1, 1.0] | [0.3] |" in report
    assert "| train.lr | 0.001 | 0.0003 |" in report and "| seed | 0 | 1 |" in report
    assert "train.epochs" not in report  # equal keys are not listed
    summary = json.loads((out / "comparison.json").read_text())
    curves = {c["experiment"]: c for c in summary["curves"]}
    # A's trials peak at d = 1: 0.5 + 0.2 / 1.1 and 0.5 + 0.2 / 2, averaged over its two trials
    assert np.isclose(curves["A"]["mean_peak_win_rate"], 0.5 + (0.2 / 1.1 + 0.2 / 2) / 2)
    assert curves["A"]["mean_d_at_peak"] == 1.0 and curves["B"]["max_kl"] == 4.0 and curves["B"]["betas"] == [0.3]
    assert {d["key"] for d in summary["config_differences"]} == {"train.betas.dpo", "train.lr", "seed"}
    assert (out / "win_rate_vs_d_compare.png").stat().st_size > 10_000
    assert str(out / "comparison.md") in capsys.readouterr().out


def test_an_explicit_output_directory_and_a_missing_experiment(tmp_path, capsys):
    a = _experiment(tmp_path / "runs/smoke-aaaa", [], peak=0.2, betas=[0.1])
    b = _experiment(tmp_path / "other/smoke-aaaa", [], peak=0.2, betas=[0.1])  # same config, another storage
    assert analyze_job.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp/comparison.md").read_text()
    assert "| storage |" in report and "train." not in report.split("## Win rate")[0]
    assert analyze_job.main([str(a), str(tmp_path / "runs/nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err
