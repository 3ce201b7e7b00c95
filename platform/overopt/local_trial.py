"""One trial in one process: a sweep trial's step maths, optimizer, schedule and evaluation, no Ray.

For screening training recipes quickly on a laptop (docs/calibration.md records what the screens of
the embedded default measured). It trains one (objective, beta, seed) on the stages a sweep prepared
(the reference model, the pairs with their cached reference log-probs, the eval set) and evaluates at
the sweep's epoch fractions, with the code a sweep trial runs:

    loss         train/steps.py preference_loss (the objective registry)
    optimizer    train/steps.py optimizer_and_schedule (train.optimizer, train.lr, train.warmup_steps),
                 gradients clipped to train.max_grad_norm (DeepSpeed's gradient_clipping)
    evaluation   evaluate/scoring.py score_samples + summarize (sample -> policy and reference
                 log-probs of the sampled ids -> judge -> one row)

The training steps are the sweep's own loop (train/loop.py's ``AlignmentLoop``, here over a plain
torch optimizer instead of the DeepSpeed engine): the same seeds give the same data order and the same
evaluation samples as a sweep trial. What differs, on purpose: one process holds the whole batch (a
sweep splits it over its ZeRO-3 workers; the mean gradient is the same) and the evaluation is one
block of prompts (a sweep scores ``evaluation.tasks`` blocks, each with its own seed). Each row also
breaks the samples down in the task's terms where the judge is the synthetic task's (missing salient
words, junk words, repeats) and splits the KL estimate into the end-of-sequence token and the others.

    python jobs/screen.py --config configs/embedded.yaml --trials dpo:0.03 slic:0.1 --set train.lr=2e-4
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from overopt.config import EvaluationConfig, LoadOptions, TrainConfig
from overopt.evaluate.generation import HFGenerator, Sample
from overopt.evaluate.judges import Judge
from overopt.evaluate.proxy import Proxy
from overopt.evaluate.scoring import models_scorer, score_samples, summarize
from overopt.logprobs import pack_prompt_response, token_logprobs
from overopt.models import load_model, load_tokenizer
from overopt.schedule import evaluation_steps
from overopt.streams import block_seed, evaluation_seed, trial_key
from overopt.train.loop import DIAGNOSTICS, AlignmentLoop, PlainEngine, enable_gradient_checkpointing
from overopt.train.steps import optimizer_and_schedule


@dataclass(frozen=True)
class LocalTrial:
    """One trial's identity: what its rows carry (the same keys as a sweep's rows)."""

    objective: str
    beta: float
    size: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.objective}_{self.beta:g}_{self.size}_{self.seed}"


def run_local_trial(
    trial: LocalTrial,
    train: TrainConfig,
    evaluation: EvaluationConfig,
    eval_fractions: list[float],
    reference: str,
    tokenizer: str,
    pairs: pa.Table,
    eval_set: pa.Table,
    judge: Judge,
    load_options: LoadOptions | None = None,  # None: LoadOptions() (safe loading)
    task=None,
    threads: int = 2,
    experiment_seed: int = 0,
    log: Callable[[str], None] = print,
    proxy: Proxy | None = None,
) -> list[dict]:
    """Train ``trial`` from ``reference`` on ``pairs`` and evaluate at ``eval_fractions``; one row per evaluation.

    ``pairs``: prompt_ids, chosen_ids, rejected_ids, reference_chosen_logps, reference_rejected_logps
    (the pairs stage's table). ``eval_set``: prompt, prompt_ids, reference_response, reference_finished
    (the eval stage's table). ``task``: the SyntheticTask, for the per-sample breakdown (None: skipped).
    ``experiment_seed``: the config's master seed; with the trial's seed it fixes the data order and
    the evaluation samples, as in the sweep. ``proxy``: the reward behind the training labels
    (evaluate/proxy.py), for the rows' proxy_win_rate (None: NaN).
    """
    load_options = load_options or LoadOptions()
    torch.set_num_threads(threads)
    torch.manual_seed(trial.seed)
    tok = load_tokenizer(tokenizer, load_options)
    policy = load_model(reference, options=load_options).train()
    frozen = load_model(reference, options=load_options).eval().requires_grad_(False)
    optimizer, scheduler = optimizer_and_schedule(policy.parameters(), train.optimizer, train.lr, train.warmup_steps)
    loop = AlignmentLoop(
        # train.micro_batch_size and train.gradient_checkpointing as on the sweep's workers (one process: its share is the whole batch)
        PlainEngine(
            enable_gradient_checkpointing(policy) if train.gradient_checkpointing else policy,
            optimizer,
            scheduler,
            train.max_grad_norm,
            train.batch_size // (train.micro_batch_size or train.batch_size),
        ),
        pairs,
        objective=trial.objective,
        beta=trial.beta,
        objective_kwargs=train.objective_kwargs.get(trial.objective),
        batch_size=train.batch_size,
        pad_token_id=tok.pad_token_id,
        experiment_seed=experiment_seed,
        trial_seed=trial.seed,
        micro_batch_size=train.micro_batch_size,
    )
    steps_per_epoch = loop.steps_per_epoch
    total_steps = max(1, round(train.epochs * steps_per_epoch))
    schedule = evaluation_steps(eval_fractions, steps_per_epoch)
    backend = HFGenerator(evaluation.generation.max_new_tokens, batch_size=evaluation.generation.batch_size)
    prompts = eval_set.column("prompt").to_pylist()
    eval_prompt_ids = eval_set.column("prompt_ids").to_pylist()
    baselines = eval_set.column("reference_response").to_pylist()
    baselines_finished = eval_set.column("reference_finished").to_pylist()
    stream_name = trial_key(trial.objective, trial.beta, trial.size, trial.seed)

    rows: list[dict] = []
    started, interval_start = time.time(), time.time()

    def evaluate(step: int) -> None:
        nonlocal interval_start
        interval = loop.take_interval()
        policy.eval()
        sampler = _Recording(backend)
        scorer = models_scorer(policy, frozen, tok.pad_token_id, evaluation.scoring_batch_size)
        # The sweep's stream for this evaluation, and the same blocks: one block here, the sweep's first.
        seed = block_seed(evaluation_seed(experiment_seed, stream_name, step), 0)
        records = score_samples(
            policy, scorer, tok, sampler, judge, eval_prompt_ids, prompts, baselines, baselines_finished, seed=seed, proxy=proxy
        )
        policy.train()
        row = {
            "objective": trial.objective,
            "beta": trial.beta,
            "size": trial.size,
            "seed": trial.seed,
            "trial_name": trial.name,
            "step": step,
            "epoch_fraction": step / steps_per_epoch,
            "samples_seen": step * train.batch_size,
            **{name: interval[name] for name in DIAGNOSTICS},
            "lr": scheduler.get_last_lr()[0],
            **summarize(records),
            **eos_split(policy, frozen, tok, sampler.samples),
            "interval_seconds": time.time() - interval_start,
        }
        if task is not None:
            errors = [task.response_errors(p, r) for p, r in zip(prompts, records["response"])]
            row.update({f"mean_{key}": float(np.mean([e[key] for e in errors])) for key in errors[0]})
        rows.append(row)
        log(
            f"  {trial.name} step {step:4d} ({row['epoch_fraction']:.3f} ep): KL {row['kl']:.2f} win {row['win_rate']:.3f} "
            f"proxy {row['proxy_win_rate']:.3f} length {row['mean_length']:.2f} loss {row['loss']:.3f}"
            + (f" missing {row['mean_missing']:.2f} junk {row['mean_junk']:.2f}" if task is not None else "")
        )
        interval_start = time.time()

    evaluate(0)
    while loop.step < total_steps:
        loop.train_step()
        if loop.step in schedule:
            evaluate(loop.step)
    log(f"  {trial.name}: {total_steps} steps, {len(rows)} evaluations in {time.time() - started:.0f} s")
    return rows


class _Recording:
    """A generation backend that keeps what it sampled (the ids themselves, for ``eos_split``)."""

    def __init__(self, backend: HFGenerator):
        self.backend = backend
        self.samples: list[Sample] = []

    def generate(self, model, tokenizer, prompt_ids, seed: int):
        self.samples = self.backend.generate(model, tokenizer, prompt_ids, seed=seed)
        return self.samples


@torch.no_grad()
def eos_split(policy, reference, tokenizer, samples) -> dict[str, float]:
    """The KL estimate's two parts: the mean log-ratio of the end-of-sequence token of finished samples
    (when to stop) and of every other response token (what to say); they add up to the row's ``kl``."""
    packed = pack_prompt_response([s.prompt_ids for s in samples], [s.response_ids for s in samples], tokenizer.pad_token_id)
    policy_logps, mask = token_logprobs(policy, **packed)
    reference_logps, _ = token_logprobs(reference, **packed)
    ratio = (policy_logps - reference_logps) * mask
    is_eos = (packed["input_ids"][:, 1:] == tokenizer.eos_token_id).to(ratio.dtype) * mask
    n = ratio.shape[0]
    return {"kl_eos": float((ratio * is_eos).sum() / n), "kl_words": float((ratio * (1 - is_eos)).sum() / n)}
