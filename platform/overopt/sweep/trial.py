"""One sweep trial: a Tune function trainable that runs a Ray Train ``TorchTrainer`` to completion.

Ray Train V2 (the default in Ray 2.60) does not let ``Tuner`` wrap a trainer; the pattern is a Tune
function trainable that builds the ``TorchTrainer`` and calls ``fit()``, with metrics forwarded to
Tune by ``TuneReportCallback``. Tune's stopper then sees every evaluation row as it is reported.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow.parquet as pq
import ray
from ray import tune


def _alignment_entry(config: dict[str, Any]) -> None:  # module-level: pickled by reference
    from overopt.train.worker import alignment_worker

    alignment_worker(config)


def _stream(trial: dict[str, Any]) -> int:
    key = f"{trial['objective']}|{trial['beta']}|{trial['size']}|{trial['seed']}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def alignment_trial(params: dict[str, Any], settings: dict[str, Any]) -> None:
    """``params["trial"]`` = {objective, beta, size, seed}; ``settings`` = what every trial shares."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    ray.data.DataContext.get_current().enable_progress_bars = False  # inherited by the data split coordinator
    trial = params["trial"]
    name = tune.get_context().get_trial_name()
    size = settings["sizes"][trial["size"]]
    train = settings["train"]
    config = {
        **train,
        "objective": trial["objective"],
        "beta": trial["beta"],
        "objective_kwargs": train["objective_kwargs"].get(trial["objective"], {}),
        "seed": trial["seed"],
        "reference_dir": size["reference_dir"],
        "tokenizer_path": size["reference_dir"],
        "n_pairs": size["n_pairs"],
        "eval_path": size["eval_path"],
        # Each trial samples its evaluations from its own stream (the same one at every step of the
        # trial), so the step-0 evaluations of different trials are independent estimates.
        "eval_settings": {**settings["eval_settings"], "seed": _stream(trial)},
        "trial_params": {**trial, "trial_name": name},
        "rows_path": f"{settings['rows_dir']}/{name}.jsonl",
    }
    resources = {"GPU": 1} if train["use_gpu"] else {"CPU": 1}
    trainer = TorchTrainer(
        _alignment_entry,
        train_loop_config=config,
        # Ranks other than 0 wait in a collective while rank 0 evaluates: allow long evaluations.
        torch_config=TorchConfig(timeout_s=settings["collective_timeout_s"]),
        scaling_config=ScalingConfig(num_workers=train["num_workers"], use_gpu=train["use_gpu"], resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=settings["train_storage"],
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # the latest consolidated checkpoint
            callbacks=[TuneReportCallback()],
        ),
        # A few thousand pairs: read them here once rather than through Ray Data read tasks.
        datasets={"train": ray.data.from_arrow(pq.read_table(size["pairs_path"]))},
    )
    trainer.fit()
