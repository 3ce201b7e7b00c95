"""Screen a training recipe in one process: trials of a config trained and evaluated without Ray Train/Tune.

    python jobs/screen.py --config configs/embedded.yaml --set seed=100 --seeds 100 101   # every (objective, beta), first size
    python jobs/screen.py --config configs/embedded.yaml --set seed=100 --seeds 100 --trials dpo:0.03 dpo:0.1 --set train.lr=2e-4
    python jobs/check_criteria.py runs/screens/<name>-<hash>/results.parquet

The stages (reference, pairs, eval set) come from the sweep's cache under ``storage`` (built with a
local Ray instance if missing); each trial then runs in this process with the sweep's loss,
optimizer, schedule and evaluation (overopt/local_trial.py says what differs). Rows land in
``<storage>/screens/<name>-<hash>/results.parquet`` with the resolved config beside them; the same
command again reuses them. A screen is for choosing a recipe; the numbers a report quotes come from
the sweep itself (jobs/scale_sweep.py).

Recipes are chosen on screening seeds only: the master seed (``--set seed=``) and the trial seeds
(``--seeds``) must be SCREENING_SEEDS_FROM or above, because results are reported on the seeds below
it (docs/results.md), which no screen may have seen. ``--allow-reported-seeds`` lifts the rule for a
screen that chooses nothing (say, reproducing a reported trial in one process).
"""

import argparse
import sys

from overopt.cli import add_config_arguments, job, job_config, parser_for
from overopt.config import ConfigError
from overopt.paths import resolve_model_name

SCREENING_SEEDS_FROM = 100  # seeds below this are for reported runs only


def reported_seeds_problem(master_seed: int, trial_seeds: list[int]) -> str | None:
    """Why this screen would look at seeds that results are reported on, or None."""
    low = [f"seed={master_seed}"] if master_seed < SCREENING_SEEDS_FROM else []
    low += [f"trial seed {seed}" for seed in trial_seeds if seed < SCREENING_SEEDS_FROM]
    if not low:
        return None
    return (
        f"a screen chooses a recipe, so it runs on seeds {SCREENING_SEEDS_FROM} and above; results are reported on the seeds below, "
        f"which no screen may see ({', '.join(low)}): add --set seed={SCREENING_SEEDS_FROM} --seeds {SCREENING_SEEDS_FROM}, "
        "or --allow-reported-seeds for a screen that chooses nothing"
    )


def parse_trial(text: str) -> tuple[str, float]:
    objective, sep, beta = text.partition(":")
    try:
        return objective, float(beta)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not objective:beta (e.g. dpo:0.1)") from None


@job(ConfigError)
def main(argv=None) -> int:
    parser = parser_for(__doc__)
    add_config_arguments(parser)
    parser.add_argument(
        "--trials", nargs="+", type=parse_trial, metavar="OBJECTIVE:BETA", help="default: every objective and beta of the config"
    )
    parser.add_argument("--size", help="model size (default: the config's first)")
    parser.add_argument("--seeds", nargs="+", type=int, help="trial seeds (default: sweep.seeds)")
    parser.add_argument(
        "--allow-reported-seeds", action="store_true", help=f"allow seeds below {SCREENING_SEEDS_FROM} (a screen that chooses nothing)"
    )
    args = parser.parse_args(argv)
    # Relative paths name files under this directory, as in jobs/scale_sweep.py (the same stage caches).
    cfg = job_config(args)
    size = resolve_model_name(args.size) if args.size else cfg.models.sizes[0]  # --size as models.sizes names it
    if size not in cfg.models.sizes:
        print(f"error: --size {size!r} is not in models.sizes {cfg.models.sizes}", file=sys.stderr)
        return 2
    trials = args.trials or [(o, b) for o in cfg.train.objectives for b in cfg.train.betas[o]]
    for objective, _ in trials:
        if objective not in cfg.train.objectives:
            print(f"error: --trials names {objective!r}, not in train.objectives {cfg.train.objectives}", file=sys.stderr)
            return 2
    seeds = args.seeds or cfg.sweep.seeds
    problem = None if args.allow_reported_seeds else reported_seeds_problem(cfg.seed, seeds)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    import pandas as pd
    import pyarrow as pa

    from overopt.data.sources import synthetic_task
    from overopt.evaluate.judges import build_judge
    from overopt.evaluate.proxy import build_proxy, proxy_spec
    from overopt.local_trial import LocalTrial, run_local_trial
    from overopt.storage import Storage
    from overopt.sweep.run import experiment_name, start_ray
    from overopt.sweep.stage_keys import content_key
    from overopt.sweep.stages import prepare_size
    from overopt.trial_plan import planned_fractions

    store = Storage(cfg.storage)
    name = f"screens/{experiment_name(cfg)}-{content_key(size, trials, seeds)}"
    if store.exists(f"{name}/results.parquet"):
        print(f"already screened: {store.uri(name)}/results.parquet")
        return 0
    import ray

    start_ray(cfg)
    try:
        data, _ = prepare_size(cfg, size, store, store.uri(f"{name}/ray"))
    finally:
        ray.shutdown()
    task = synthetic_task(cfg.data) if cfg.evaluation.judge.type == "gold" else None
    judge = build_judge(cfg.evaluation.judge, task, cfg.models)
    proxy = build_proxy(proxy_spec(cfg), cfg.models)
    fractions = planned_fractions(cfg)  # the schedule sweep/run.py hands every trial
    pairs, eval_set = Storage(data.pairs_path).read_parquet(""), Storage(data.eval_path).read_parquet("")
    rows = []
    for seed in seeds:
        for objective, beta in trials:
            rows += run_local_trial(
                LocalTrial(objective, beta, size, seed),
                cfg.train,
                cfg.evaluation,
                fractions,
                data.reference,
                data.tokenizer,
                pairs,
                eval_set,
                judge,
                cfg.models,
                task,
                experiment_seed=cfg.seed,
                proxy=proxy,
            )
    store.write_text(f"{name}/config.yaml", cfg.to_yaml())
    store.write_parquet(f"{name}/results.parquet", pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False))
    print(f"screen written: {store.uri(name)}/results.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
