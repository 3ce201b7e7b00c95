"""Fit the scaling laws of a finished (or interrupted) sweep and write its report.

    python jobs/analyze.py runs/embedded-<hash> [--bootstrap 200]

Writes fits.json, win_rate_vs_d.png, win_rate_vs_epoch.png, length_vs_d.png and report.md into the
experiment directory and prints where the report is.
"""

import argparse
import sys

from overopt.analysis.report import analyze


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment directory written by jobs/scale_sweep.py")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the fit intervals")
    args = parser.parse_args(argv)
    try:
        analyze(args.experiment, n_bootstrap=args.bootstrap)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
