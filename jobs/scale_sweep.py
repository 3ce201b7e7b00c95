"""Run the over-optimization sweep, then the analysis.

    python jobs/scale_sweep.py --config configs/embedded.yaml [--set key=value ...]
    python jobs/scale_sweep.py --config configs/pythia_tldr.yaml --dry-run   # check inputs, print the plan
    ray job submit --working-dir . -- python jobs/scale_sweep.py --config configs/embedded.yaml

Without a cluster address (RAY_ADDRESS) it starts a local Ray instance. Relative model, data and
storage paths in the config or --set resolve against the directory the command runs in (under
`ray job submit`: the uploaded working directory) and are saved resolved in the experiment's
config.yaml. The experiment directory, the report and a summary table are printed at the end.
"""

import argparse
import sys

from overopt.config import ConfigError, load_config
from overopt.paths import resolve_paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/embedded.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value with a dotted key, e.g. --set train.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--no-analysis", action="store_true", help="stop after the sweep; run jobs/analyze.py later")
    parser.add_argument(
        "--dry-run", action="store_true", help="resolve the config, check every data source and model path, print the plan; train nothing"
    )
    args = parser.parse_args(argv)
    try:
        # Relative paths name files under the directory this command runs in, wherever Ray runs its
        # workers; the experiment's config.yaml records them resolved.
        cfg = resolve_paths(load_config(args.config, args.overrides))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from overopt.sweep.plan import check_inputs, describe_plan, plan_sweep

    # Every model path, tokenizer, data source, the memory plan and vLLM, checked before anything
    # starts: a bad input stops here with what is wrong and where, and nothing is written.
    found = check_inputs(cfg)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        pairs = found.counts.get("pairs") if cfg.data.pairs.source != "synthetic" else None
        print(describe_plan(cfg, plan_sweep(cfg, pairs), found.counts))
    for problem in found.problems:
        print(f"error: {problem}", file=sys.stderr)
    if args.dry_run or found.problems:
        return (1 if args.dry_run else 2) if found.problems else 0

    from overopt.sweep.run import SweepFailed, experiment_location, run_sweep  # Ray is slow to import

    failed = None
    try:
        experiment = run_sweep(cfg, invocation={"config": args.config, "overrides": args.overrides})
    except ConfigError as error:  # storage not writable or too small: nothing has started
        print(f"error: {error}", file=sys.stderr)
        return 2
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
