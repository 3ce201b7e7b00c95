"""One sweep trial: a Tune function trainable that runs a Ray Train ``TorchTrainer`` to completion.

Ray Train V2 (the default in Ray 2.60) does not let ``Tuner`` wrap a trainer; the pattern is a Tune
function trainable that builds the ``TorchTrainer`` and calls ``fit()``, with metrics forwarded to
Tune by ``TuneReportCallback``. Tune's stopper then sees every evaluation row as it is reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
import ray
from ray import tune

from overopt.config import EvaluationConfig, LoadOptions, SyntheticTaskConfig, TrainConfig
from overopt.evaluate.pipeline import EvaluationSpec
from overopt.storage import Storage
from overopt.sweep.stages import SizeData
from overopt.train.worker import AlignmentSpec


def _alignment_entry(config: dict[str, Any]) -> None:  # module-level: pickled by reference
    from overopt.train.worker import alignment_worker

    alignment_worker(config["spec"])


def _stream(trial: dict[str, Any]) -> int:
    key = f"{trial['objective']}|{trial['beta']}|{trial['size']}|{trial['seed']}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


@dataclass(frozen=True)
class SweepSettings:
    """What every trial of a sweep shares, typed (Tune hands it to each trial unchanged)."""

    train: TrainConfig
    evaluation: EvaluationConfig
    load_options: LoadOptions
    synthetic_task: SyntheticTaskConfig | None  # the gold judge's task
    eval_fractions: list[float]
    sizes: dict[str, SizeData]
    experiment: str  # the experiment's location (path or URI): rows/ and audit/ go there
    train_storage: str  # where Ray Train keeps checkpoints (a path or URI)
    collective_timeout_s: int = 4 * 3600  # ranks other than 0 wait in a collective while rank 0 evaluates


def alignment_trial(params: dict[str, Any], settings: SweepSettings) -> None:
    """``params["trial"]`` = {objective, beta, size, seed}; ``settings`` = what every trial shares."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    ray.data.DataContext.get_current().enable_progress_bars = False  # inherited by the data split coordinator
    trial = params["trial"]
    name = tune.get_context().get_trial_name()
    size = settings.sizes[trial["size"]]
    train = settings.train
    spec = AlignmentSpec(
        objective=trial["objective"],
        beta=trial["beta"],
        objective_kwargs=train.objective_kwargs.get(trial["objective"], {}),
        seed=trial["seed"],
        train=train,
        load_options=settings.load_options,
        eval_fractions=settings.eval_fractions,
        n_pairs=size.n_pairs,
        eval_path=size.eval_path,
        evaluation=EvaluationSpec(
            reference=size.reference,
            tokenizer=size.tokenizer,
            generation=settings.evaluation.generation,
            judge=settings.evaluation.judge,
            load_options=settings.load_options,
            synthetic_task=settings.synthetic_task,
            # Each trial samples its evaluations from its own stream (the same one at every step of the
            # trial), so the step-0 evaluations of different trials are independent estimates.
            seed=_stream(trial),
            use_gpu=train.use_gpu,
        ),
        trial_params={**trial, "trial_name": name},
        experiment=settings.experiment,
    )
    resources = {"GPU": 1} if train.use_gpu else {"CPU": 1}
    trainer = TorchTrainer(
        _alignment_entry,
        train_loop_config={"spec": spec},
        # Ranks other than 0 wait in a collective while rank 0 evaluates: allow long evaluations.
        torch_config=TorchConfig(timeout_s=settings.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            **Storage(settings.train_storage).ray_storage(),
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # the latest consolidated checkpoint
            callbacks=[TuneReportCallback()],
        ),
        # A few thousand pairs: read them here once rather than through Ray Data read tasks.
        datasets={"train": ray.data.from_arrow(pq.read_table(size.pairs_path))},
    )
    trainer.fit()
