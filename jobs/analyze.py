"""Fit the scaling laws of a finished (or interrupted) sweep and write its report.

    python jobs/analyze.py runs/embedded-<hash> [--bootstrap 200] [--no-toy-mdp]
    python jobs/analyze.py s3://bucket/overopt/embedded-<hash>     # a storage URI: outputs are written there

Writes into the experiment directory: fits.json (fits, held-out comparison, every table of the report),
win_rate_vs_d.png, win_rate_vs_epoch.png, length_vs_d.png, peak_positions.png, length_r2_vs_kl.png,
training_metrics_vs_win.png, toy_mdp.json + toy_mdp.png (run here when missing; a few seconds) and
report.md, and prints where the report is.
"""

import argparse
import sys

from overopt.analysis.report import analyze


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment directory (or storage URI) written by jobs/scale_sweep.py")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    parser.add_argument("--no-toy-mdp", action="store_true", help="do not run the toy MDP (its section then appears only if toy_mdp.json is there)")
    args = parser.parse_args(argv)
    try:
        analyze(args.experiment, n_bootstrap=args.bootstrap, toy_mdp=not args.no_toy_mdp)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
