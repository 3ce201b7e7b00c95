"""Inline vs async evaluation: wall time per trial and how long training waits for its evaluations.

    python benchmarks/evaluation_modes.py --config configs/embedded.yaml \
        --set "models.sizes=[tiny]" --set "train.objectives=[dpo]" --set "train.betas={dpo: [0.1]}"

Runs the same sweep once per ``evaluation.mode`` (experiments named ``<name>-inline`` / ``<name>-async``
in one storage, so the stages are prepared once and cached) with the real training, hand-over and
evaluation code, then prints per mode and trial (lines starting RESULT):

    wall_s       the trial's wall time: its start to its last row
    train_s      its training workers' time from the first to the last hand-over
    wait_share   the share of train_s that training spent waiting for evaluations
    eval_s       median seconds per evaluation (checkpoint taken -> row ready)
    interval_s   median training seconds between evaluations (waiting excluded)

Timings are of this machine at this moment: run it when nothing else runs.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from overopt.config import load_config
from overopt.trial_plan import evaluation_slots


def trial_figures(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, trial in frame.sort_values("step").groupby("trial_name"):
        trained = trial[trial["step"] > 0]
        train_s = float(trained["interval_seconds"].sum())
        waited = float(trained["evaluation_wait_seconds"].sum())
        rows.append(
            {
                "trial": name,
                "evaluations": len(trial),
                "wall_s": float(trial["reported_at"].max() - trial["trial_started_at"].iloc[0]),
                "train_s": train_s,
                "wait_share": waited / train_s if train_s else float("nan"),
                "eval_s": float(trial["evaluation_seconds"].median()),
                "interval_s": float((trained["interval_seconds"] - trained["evaluation_wait_seconds"]).median()),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--modes", nargs="+", default=["inline", "async"], choices=["inline", "async"])
    args = parser.parse_args(argv)

    from overopt.sweep.run import run_sweep, start_ray

    configs = {mode: load_config(args.config, [*args.overrides, f"evaluation.mode={mode}"]) for mode in args.modes}
    for mode, cfg in configs.items():
        configs[mode] = cfg.model_copy(update={"name": f"{cfg.name}-{mode}"})
    start_ray(max(configs.values(), key=lambda c: evaluation_slots(c.evaluation)))  # room for the larger of the two
    for mode, cfg in configs.items():
        frame = pd.read_parquet(f"{run_sweep(cfg)}/results.parquet")
        for _, row in trial_figures(frame).iterrows():
            print(
                f"RESULT mode={mode} " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
