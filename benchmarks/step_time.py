"""Time one DAA optimizer step on Ray Train workers under each DeepSpeed ZeRO stage.

    python benchmarks/step_time.py --size tiny --workers 2 --stages 0 2 3 --steps 60 --batch 32

Prints (from rank 0, lines starting RESULT) milliseconds per step (median over the steps after a 10-step warm-up) for each stage, using
the real training code (overopt.train.steps.preference_loss on a DeepSpeed engine) on random pairs.
On a CPU the per-step collectives of ZeRO-3 dominate for tiny models: this is what it costs.
"""

import argparse
import os
import time

import numpy as np


def _worker(config):
    import ray.train
    import torch

    from overopt.models import load_model
    from overopt.train.engine import deepspeed_config, initialize_engine
    from overopt.train.steps import preference_loss

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    micro = config["batch"] // world
    model = load_model(config["size"], vocab_size=45, seed=0)
    engine, _ = initialize_engine(model, 1e-4, 0, deepspeed_config(micro, world, config["stage"], "fp32", 1.0))
    rng = np.random.default_rng(ctx.get_world_rank())

    def ids(n):
        return [list(rng.integers(5, 45, size=n)) + [2] for _ in range(micro)]

    batch = {
        "prompt_ids": [[1] + list(rng.integers(5, 45, size=15)) + [4] for _ in range(micro)],
        "chosen_ids": ids(4),
        "rejected_ids": ids(6),
        "reference_chosen_logps": np.full(micro, -20.0),
        "reference_rejected_logps": np.full(micro, -25.0),
    }
    times = []
    for _ in range(config["steps"]):
        started = time.perf_counter()
        out = preference_loss(engine, batch, 0, "dpo", 0.1)
        engine.backward(out.loss)
        engine.step()
        times.append(time.perf_counter() - started)
    if ctx.get_world_rank() == 0:
        print(
            f"RESULT size={config['size']} workers={world} batch={config['batch']} zero_stage={config['stage']}: "
            f"{1000 * float(np.median(times[10:])):.1f} ms/step",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from overopt.config import ExperimentConfig
    from overopt.sweep.run import start_ray

    start_ray(ExperimentConfig())
    storage = os.path.abspath("runs/benchmarks")
    for stage in args.stages:
        config = {"size": args.size, "stage": stage, "steps": args.steps, "batch": args.batch}
        TorchTrainer(
            _worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=False),
            run_config=RunConfig(name=f"step-time-{args.size}-stage{stage}", storage_path=storage),
        ).fit()
    ray.shutdown()


if __name__ == "__main__":
    main()
