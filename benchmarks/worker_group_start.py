"""How long Ray Train V2 takes to start a worker group, the fixed cost every trial pays before training.

    .venv/bin/python benchmarks/worker_group_start.py                      # all variants, alternating, 2 rounds
    .venv/bin/python benchmarks/worker_group_start.py --variants default no_preemption_watcher --rounds 3

Each run starts a local Ray instance the way the sweep does (sweep/run.py start_ray: logical CPUs for
a trial, the worker soft limit raised, Ray Train's 0.2 s health-check interval), waits for it to settle,
then runs ``--fits`` TorchTrainer.fit() calls one after another (as successive trials do), each with
``--workers`` CPU workers whose train function imports torch, transformers and DeepSpeed (what a
trial's workers import) and returns. Per fit it prints:

    to function   fit() called -> rank 0's train function entered (controller, placement group,
                  worker actors, torch process group)
    imports       the train function's imports of torch, transformers, DeepSpeed
    new process   whether rank 0 ran in a worker process started after fit() was called (not one
                  of the idle processes Ray already had)

Variants (each in its own Ray instance, run alternately so that they share the machine's state):
    default                  Ray Train's defaults (its preemption watcher on): the sweep's local instance
                             before it turned the watcher off
    no_preemption_watcher    RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0, as start_ray now sets it locally: Ray
                             Train's per-run actor that polls Ray Core's drain state for node preemption
    preload                  Ray's preload_python_modules (torch, transformers, deepspeed, ray.train.torch):
                             every worker process Ray starts imports them before taking work
Results: docs/benchmarks.md, "Where a trial's start-up goes".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = ("default", "no_preemption_watcher", "preload")
PRELOADED = ["torch", "transformers", "deepspeed", "ray.train.torch"]


def run_variant(variant: str, fits: int, workers: int, settle_s: float) -> list[dict]:
    """One Ray instance, ``fits`` successive fits; a dict per fit."""
    import psutil
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env_vars = {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # as start_ray sets it
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if variant == "no_preemption_watcher":
        env_vars["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    num_cpus = max(os.cpu_count() or 1, workers + 4)  # a trial's driver, workers and evaluation bundles
    system_config: dict = {"num_workers_soft_limit": 4 * num_cpus}  # as start_ray sets it
    if variant == "preload":
        system_config["preload_python_modules"] = PRELOADED
    ray.init(
        address="local",
        num_cpus=num_cpus,
        _system_config=system_config,
        include_dashboard=False,
        runtime_env={"env_vars": env_vars},
        log_to_driver=False,
    )
    time.sleep(settle_s)  # the instance's own start-up (dashboard agent, prestarted workers) out of the way
    out = tempfile.mkdtemp(prefix="wg-start-")

    def train_function(config):
        entered = time.time()
        import deepspeed  # noqa: F401
        import ray.train
        import torch  # noqa: F401
        import transformers  # noqa: F401

        if ray.train.get_context().get_world_rank() == 0:
            with open(os.path.join(config["out"], f"fit-{config['fit']}.json"), "w") as f:
                json.dump({"entered": entered, "imported": time.time(), "pid": os.getpid()}, f)

    measured = []
    for fit in range(fits):
        before = {p.pid for p in psutil.process_iter()}
        called = time.time()
        TorchTrainer(
            train_function,
            train_loop_config={"out": out, "fit": fit},
            scaling_config=ScalingConfig(num_workers=workers),
            run_config=RunConfig(storage_path=out, name=f"fit-{fit}"),
        ).fit()
        with open(os.path.join(out, f"fit-{fit}.json")) as f:
            stamps = json.load(f)
        measured.append(
            {
                "variant": variant,
                "fit": fit,
                "to_function_s": stamps["entered"] - called,
                "imports_s": stamps["imported"] - stamps["entered"],
                "whole_fit_s": time.time() - called,
                "new_process": stamps["pid"] not in before,
            }
        )
    ray.shutdown()
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant, alternating")
    parser.add_argument("--fits", type=int, default=3, help="successive fits per run (trials one after another)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers per fit (the embedded default's)")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds between ray.init and the first fit")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: a single run, as JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_variant(args.one, args.fits, args.workers, args.settle)))
        return
    rows = []
    for round_ in range(args.rounds):
        for variant in args.variants:  # each run in a fresh process: a Ray instance of its own
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    variant,
                    "--fits",
                    str(args.fits),
                    "--workers",
                    str(args.workers),
                    "--settle",
                    str(args.settle),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            for row in json.loads(done.stdout.strip().splitlines()[-1]):
                row["round"] = round_
                rows.append(row)
                print(
                    f"{variant:22s} round {round_} fit {row['fit']}: to function {row['to_function_s']:5.1f} s, "
                    f"imports {row['imports_s']:4.1f} s, whole fit {row['whole_fit_s']:5.1f} s, new process {row['new_process']}",
                    flush=True,
                )
    print("\nmedian over rounds and fits (first fit of a run excluded: it also pays the instance's first imports)")
    print(f"{'variant':22s} {'to function':>12s} {'imports':>8s} {'whole fit':>10s} {'min-max to function':>20s}")
    for variant in args.variants:
        later = [r for r in rows if r["variant"] == variant and r["fit"] > 0] or [r for r in rows if r["variant"] == variant]
        to_function = [r["to_function_s"] for r in later]
        print(
            f"{variant:22s} {statistics.median(to_function):11.1f}s {statistics.median(r['imports_s'] for r in later):7.1f}s "
            f"{statistics.median(r['whole_fit_s'] for r in later):9.1f}s {min(to_function):9.1f}-{max(to_function):.1f} s"
        )


if __name__ == "__main__":
    main()
