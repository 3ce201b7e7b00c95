"""Fit the scaling laws of a finished (or interrupted) sweep and write its report; or, given several
experiments, write one report that sets them side by side.

    python jobs/analyze.py runs/embedded-<hash> [--bootstrap 200] [--no-toy-mdp]
    python jobs/analyze.py s3://bucket/overopt/embedded-<hash>     # a storage URI: outputs are written there
    python jobs/analyze.py runs/smoke-<hashA> runs/smoke-<hashB> [--out DIR]   # side by side

One experiment: writes into the experiment directory: fits.json (fits, held-out comparison, every table of
the report), win_rate_vs_d.png, win_rate_vs_epoch.png, length_vs_d.png, peak_positions.png,
length_r2_vs_kl.png, training_metrics_vs_win.png, gold_and_proxy_pooled_vs_d.png (and gold_and_proxy_vs_d.png
where the rows carry a proxy win rate), toy_mdp.json + toy_mdp.png (run here when missing; a few seconds) and
report.md, and prints where the report is. If the experiment has an MLflow run (tracking.mlflow), the report,
plots and tables go there too (sweep/tracking.py).

Several experiments (paths or URIs): comparison.md (each experiment's config differences as dotted keys,
per objective and size a summary of each), win_rate_vs_d_compare.png (their curves overlaid) and
comparison.json, written into --out, by default comparisons/<name A>--<name B>... beside the first
experiment (analysis/compare.py). Each experiment's own report is left as it is.
"""

import sys

from overopt.analysis.report import analyze
from overopt.cli import job, parser_for


@job(FileNotFoundError)  # not an experiment (analysis.results.NotAnExperiment), or nothing there
def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument(
        "experiments",
        nargs="+",
        metavar="experiment",
        help="experiment directory (or storage URI) written by jobs/scale_sweep.py; two or more: side by side",
    )
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    parser.add_argument(
        "--no-toy-mdp", action="store_true", help="do not run the toy MDP (its section then appears only if toy_mdp.json is there)"
    )
    parser.add_argument("--out", help="several experiments: where the comparison goes (default: comparisons/<names> beside the first)")
    args = parser.parse_args(argv)
    if len(args.experiments) == 1:
        if args.out:
            parser.error("--out is for comparisons (two experiments or more): one experiment's report goes into its directory")
        analyze(args.experiments[0], n_bootstrap=args.bootstrap, toy_mdp=not args.no_toy_mdp)
        from overopt.sweep.tracking import publish_analysis

        publish_analysis(args.experiments[0])  # to the experiment's MLflow run, if it has one
    else:
        from overopt.analysis.compare import compare

        compare(args.experiments, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
