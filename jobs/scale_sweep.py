"""Run the over-optimization sweep, then the analysis.

    python jobs/scale_sweep.py --config configs/embedded.yaml [--set key=value ...]
    python jobs/scale_sweep.py --config configs/pythia_tldr.yaml --dry-run   # check inputs, print the plan
    ray job submit --working-dir . -- python jobs/scale_sweep.py --config configs/embedded.yaml

Without a cluster address (RAY_ADDRESS) it starts a local Ray instance. Relative model, data and
storage paths in the config or --set resolve against the directory the command runs in (under
`ray job submit`: the uploaded working directory) and are saved resolved in the experiment's
config.yaml. It prints the experiment directory and where its logs go first, a line per stage and per
evaluation, then a summary table and the report. What Ray, Tune, DeepSpeed and the workers print goes to
<experiment>/logs/<run>/ (workers.log, driver.log); --verbose prints it on the console too.
"""

import sys

from overopt.cli import add_config_arguments, job, job_config, parser_for
from overopt.config import ConfigError


@job(ConfigError)  # a bad config, or storage not writable or too small: exit 2 before anything starts
def main(argv=None) -> int:
    parser = parser_for(__doc__)
    add_config_arguments(parser)
    parser.add_argument("--no-analysis", action="store_true", help="stop after the sweep; run jobs/analyze.py later")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print what Ray, Ray Train, Tune, DeepSpeed and every worker print here too (always in <experiment>/logs/)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="resolve the config, check every data source and model path, print the plan; train nothing"
    )
    args = parser.parse_args(argv)
    # Relative paths name files under the directory this command runs in, wherever Ray runs its
    # workers; the experiment's config.yaml records them resolved.
    cfg = job_config(args)
    from overopt.sweep.plan import check_inputs, describe_costs, describe_plan, plan_sweep

    # Every model path, tokenizer, data source, the memory plan and vLLM, checked before anything
    # starts: a bad input stops here with what is wrong and where, and nothing is written.
    found = check_inputs(cfg)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        pairs = found.counts.get("pairs") if cfg.data.pairs.source != "synthetic" else None
        plan = plan_sweep(cfg, pairs)
        print(describe_plan(cfg, plan, found.counts))
        # What it will cost: counts, and seconds where an earlier experiment of the config family measured them.
        print(describe_costs(cfg, plan))
    for problem in found.problems:
        print(f"error: {problem}", file=sys.stderr)
    if args.dry_run or found.problems:
        return (1 if args.dry_run else 2) if found.problems else 0

    from overopt.sweep.run import SweepFailed, experiment_location, run_sweep  # Ray is slow to import

    failed = None
    try:
        experiment = run_sweep(cfg, invocation={"config": args.config, "overrides": args.overrides}, verbose=args.verbose)
    except SweepFailed as error:
        failed, experiment = error, experiment_location(cfg)
    if not args.no_analysis:
        from overopt.analysis.report import analyze
        from overopt.sweep.tracking import publish_analysis

        analyze(experiment)  # on what finished, even when some trials failed
        publish_analysis(experiment)  # to the experiment's MLflow run, if it has one (docs/tracking.md)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
