"""DPO training throughput: overopt's step beside a plain PyTorch loop and TRL's DPOTrainer, in one run.

    python benchmarks/peers.py                                  # both shapes (embedded `small`, Pythia-160M at TL;DR lengths)
    python benchmarks/peers.py --shapes pythia-160m --prompt-len 128 --response-len 32 --batch 2   # a shorter CPU run
    python benchmarks/peers.py --quick                          # a tiny shape, a few steps (tests/unit/test_peers_benchmark.py)

One DPO training configuration (beta 0.1, sigmoid loss, the config's optimizer and learning rate,
gradient clipping at 1.0, fp32, no gradient checkpointing) is run by:

- plain:  a PyTorch loop written as a user would (the DPO paper's reference implementation's log-probs):
          policy forward and backward, frozen reference forward, DPO loss, clipping, optimizer step;
          one process with --threads torch threads.
- TRL:    trl.DPOTrainer (optional: pip install -e '.[bench]'), the same models, optimizer and pairs
          (as text over a word-level tokenizer of the ids), reference forward in each step (its default),
          bf16 and gradient checkpointing (TRL's defaults) switched off; one process, --threads threads.
- overopt: the sweep's own step (train/loop.py ``AlignmentLoop.train_step`` on a DeepSpeed engine from
          train/engine.py) on Ray Train CPU workers (gloo), ZeRO-0 and ZeRO-3, 1 and 2 workers holding
          --threads / workers threads each. Its reference forward is in the step too, as with
          reference.mode sharded (train/worker.py ``with_reference_logprobs``): under ZeRO-3 the frozen
          reference is a ZeRO-3 engine, under ZeRO-0 a frozen replica on each worker. (The default
          reference.mode cache runs the same forward once per pair before training instead.)

All use the same pairs (random token ids of fixed prompt/response lengths, drawn once from --seed),
the same global batch, and the same policy and reference weights (GPT-NeoX with random weights built
from a config and saved under --work, nothing downloaded; the reference has other weights than the
policy, so the first-step loss checks the loss definitions against each other, not only log 2).
Configurations run alternately: each of --repeats rounds runs every configuration once (fresh model,
--warmup untimed steps, then --steps timed ones), in an order rotated every round. The table gives
per-step pairs/s: the median and the interquartile range over all timed steps of all rounds, and the
median's ratio to the plain loop's (the plain loop is unsharded: the one baseline for every row).

Before the table, the first-step DPO loss of every configuration on the same batch and weights, and its
difference from the plain loop's (overopt's must agree to 1e-5).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

BETA = 0.1
MAX_GRAD_NORM = 1.0
LOSS_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Shape:
    """A model shape, its sequence lengths and the training configuration run on it."""

    name: str
    layers: int
    hidden: int
    heads: int
    mlp: int
    vocab: int
    prompt_len: int  # tokens, BOS included where the tokenizer adds one
    response_len: int  # tokens, EOS included
    batch: int  # pairs per optimizer step (global)
    optimizer: str
    lr: float
    bos: int | None
    eos: int
    pad: int
    warmup: int
    steps: int
    repeats: int
    description: str


def _builtin(size: str, **kwargs) -> dict:
    from overopt.models import BUILTIN_SIZES

    s = BUILTIN_SIZES[size]
    return dict(layers=s.num_layers, hidden=s.hidden_size, heads=s.num_heads, mlp=4 * s.hidden_size, bos=1, eos=2, pad=0, **kwargs)


def shapes() -> dict[str, Shape]:
    # small: the embedded config (configs/embedded.yaml): synthetic vocabulary of 45, RMSprop lr 1e-4, batch 32;
    # prompts of 17 tokens (<bos>, 15 words, <sep>: the synthetic task's median) and responses of 3 (its
    # median demonstration, EOS included). pythia-160m: EleutherAI/pythia-160m's config.json shape at
    # configs/pythia_tldr.yaml's lengths and optimizer (512 + 64 tokens, RMSprop lr 5e-7); a batch of 4 pairs
    # fits a CPU's memory (about 1.5 GiB of activations per pair: docs/benchmarks.md).
    return {
        "small": Shape(
            "small",
            **_builtin("small"),
            vocab=45,
            prompt_len=17,
            response_len=3,
            batch=32,
            optimizer="rmsprop",
            lr=1e-4,
            warmup=3,
            steps=20,
            repeats=5,
            description="embedded `small` (GPT-NeoX 4 x 128)",
        ),
        "pythia-160m": Shape(
            "pythia-160m",
            layers=12,
            hidden=768,
            heads=12,
            mlp=3072,
            vocab=50304,
            prompt_len=512,
            response_len=64,
            batch=4,
            optimizer="rmsprop",
            lr=5e-7,
            bos=None,
            eos=0,
            pad=1,
            warmup=1,
            steps=3,
            repeats=3,
            description="Pythia-160M-shaped GPT-NeoX (12 x 768, vocabulary 50304)",
        ),
        "tiny": Shape(  # --quick
            "tiny",
            **_builtin("tiny"),
            vocab=45,
            prompt_len=8,
            response_len=4,
            batch=4,
            optimizer="rmsprop",
            lr=1e-4,
            warmup=1,
            steps=3,
            repeats=1,
            description="built-in `tiny` (GPT-NeoX 2 x 64)",
        ),
    }


# --- models and data ------------------------------------------------------------------------------


def saved_models(work: Path, shape: Shape) -> tuple[str, str]:
    """The policy (seed 0) and reference (seed 1) of ``shape``, random weights, saved once under ``work``."""
    from overopt.models import save_neox_shaped

    positions = max(64, shape.prompt_len + shape.response_len)
    token_ids = (shape.bos if shape.bos is not None else shape.eos, shape.eos, shape.pad)
    directories = []
    for role, seed in (("policy", 0), ("reference", 1)):
        directory = work / f"{shape.name}-{shape.layers}x{shape.hidden}-v{shape.vocab}-p{positions}-{role}"
        dims = (shape.layers, shape.hidden, shape.heads, shape.mlp, shape.vocab)
        directories.append(str(save_neox_shaped(directory, dims, positions, seed=seed, token_ids=token_ids)))
    return directories[0], directories[1]


def make_pairs(shape: Shape, seed: int) -> dict[str, list[list[int]]]:
    """One global batch of pairs: random ids of fixed lengths (responses end with EOS), drawn once."""
    rng = np.random.default_rng(seed)
    low = max(shape.bos or 0, shape.eos, shape.pad) + 1  # no special token inside a prompt or response
    body = shape.prompt_len - (shape.bos is not None)

    def ids(length: int) -> list[list[int]]:
        return rng.integers(low, shape.vocab, size=(shape.batch, length)).tolist()

    prompts = [([shape.bos] if shape.bos is not None else []) + row for row in ids(body)]
    return {
        "prompt_ids": prompts,
        "chosen_ids": [row + [shape.eos] for row in ids(shape.response_len - 1)],
        "rejected_ids": [row + [shape.eos] for row in ids(shape.response_len - 1)],
    }


# --- (a) the plain PyTorch loop -------------------------------------------------------------------


def plain_loop(policy_dir: str, reference_dir: str, pairs: dict, shape: Shape, threads: int) -> dict:
    """Per-step seconds after the warm-up and the first step's loss."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from overopt.train.steps import OPTIMIZERS

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).train()
    reference = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval().requires_grad_(False)
    optimizer = OPTIMIZERS[shape.optimizer](policy.parameters(), lr=shape.lr)

    def response_logps(model, input_ids, loss_mask):
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[:, :-1]
        per_token = torch.gather(logits.log_softmax(-1), 2, input_ids[:, 1:].unsqueeze(2)).squeeze(2)
        return (per_token * loss_mask).sum(-1)

    times, first_loss = [], None
    for step in range(shape.warmup + shape.steps):
        started = time.perf_counter()
        prompts = torch.tensor(pairs["prompt_ids"])
        input_ids = torch.cat(
            [torch.cat([prompts, torch.tensor(pairs["chosen_ids"])], 1), torch.cat([prompts, torch.tensor(pairs["rejected_ids"])], 1)]
        )
        loss_mask = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1)
        loss_mask[:, prompts.shape[1] - 1 :] = 1.0  # the response tokens, each predicted from its prefix
        policy_chosen, policy_rejected = response_logps(policy, input_ids, loss_mask).chunk(2)
        with torch.no_grad():
            reference_chosen, reference_rejected = response_logps(reference, input_ids, loss_mask).chunk(2)
        logits = BETA * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
        loss = -F.logsigmoid(logits).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        times.append(time.perf_counter() - started)
        if step == 0:
            first_loss = float(loss.detach())
    return {"times": times[shape.warmup :], "first_loss": first_loss}


# --- (b) TRL's DPOTrainer -------------------------------------------------------------------------


def trl_status() -> str | None:
    """None when TRL can run, else why not (the row's note)."""
    if importlib.util.find_spec("trl") is None:
        return "not installed (pip install -e '.[bench]')"
    try:
        from trl import DPOConfig, DPOTrainer  # noqa: F401
    except Exception as error:  # an installed TRL that does not import with these transformers/torch
        return f"not available: import failed ({type(error).__name__}: {error})"
    return None


def word_tokenizer(shape: Shape):
    """A word-level tokenizer whose word i is token id i ("t17"; specials "<pad>", "<bos>", "<eos>"), so
    TRL tokenizes the pairs' text back to exactly their ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {shape.pad: "<pad>", shape.eos: "<eos>", **({shape.bos: "<bos>"} if shape.bos is not None else {})}
    vocab = {specials.get(i, f"t{i}"): i for i in range(shape.vocab)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = {"bos_token": "<bos>"} if shape.bos is not None else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", **kwargs)


def trl_run(policy_dir: str, reference_dir: str, pairs: dict, shape: Shape, threads: int, work: Path) -> dict:
    """TRL's DPOTrainer on the same pairs: per-step seconds (between consecutive step ends, so data
    loading and collation count, as in the other rows) and the first step's loss (TRL's compute_loss on
    the whole batch before training)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from overopt.train.steps import optimizer_and_schedule

    torch.set_num_threads(threads)
    tokenizer = word_tokenizer(shape)
    words = tokenizer.convert_ids_to_tokens

    def text(ids: list[int]) -> str:
        return " ".join(words(ids))

    dataset = Dataset.from_dict(
        {
            "prompt": [text(ids) for ids in pairs["prompt_ids"]],
            "chosen": [" " + text(ids) for ids in pairs["chosen_ids"]],
            "rejected": [" " + text(ids) for ids in pairs["rejected_ids"]],
        }
    )
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32)
    optimizer, scheduler = optimizer_and_schedule(policy.parameters(), shape.optimizer, shape.lr, 0)
    args = DPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=shape.batch,
        gradient_accumulation_steps=1,
        max_steps=shape.warmup + shape.steps,
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=None,
        max_grad_norm=MAX_GRAD_NORM,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    callback = StepEnds()
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        optimizers=(optimizer, scheduler),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # its end-of-training metrics would go into the table's output
    prepared = trainer.train_dataset
    if [list(prepared["prompt_ids"]), list(prepared["chosen_ids"])] != [pairs["prompt_ids"], pairs["chosen_ids"]]:
        raise RuntimeError("TRL's tokenization of the pairs' text does not give back their ids")
    batch = trainer.data_collator([prepared[i] for i in range(len(prepared))])
    with torch.no_grad():
        first_loss = float(trainer.compute_loss(trainer.model, batch))
    trainer.train()
    times = np.diff(callback.ends).tolist()  # steps 1..n-1, each from the previous step's end
    return {"times": times[-shape.steps :], "first_loss": first_loss}


# --- (c) overopt's step on Ray Train --------------------------------------------------------------


def _overopt_worker(config: dict) -> None:
    """On every Ray Train worker: for each ZeRO stage, the engine, the reference and the alignment loop;
    --warmup then --steps train_step calls timed on each rank. Reports rank 0's seconds and the first
    step's loss (all ranks' mean: the global batch's)."""
    import ray.train
    import torch
    import torch.distributed as dist
    from pyarrow import table as arrow_table

    from overopt.models import load_model
    from overopt.train.engine import deepspeed_config, initialize_engine, partitioned_loading, reference_engine
    from overopt.train.loop import AlignmentLoop
    from overopt.train.worker import _quiet_worker_logs, with_reference_logprobs

    _quiet_worker_logs()
    shape = Shape(**config["shape"])
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    torch.set_num_threads(config["threads"])
    pairs = arrow_table(config["pairs"])

    def all_ranks_sum(sums: np.ndarray) -> np.ndarray:
        tensor = torch.tensor(sums, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.numpy()

    results = {}
    for stage in config["stages"]:
        torch.manual_seed(0)
        ds_config = deepspeed_config(shape.batch // world, world, stage, "fp32", MAX_GRAD_NORM)
        with partitioned_loading(ds_config):  # ZeRO-3: each worker builds only its shard
            policy = load_model(config["policy"])
        engine, _ = initialize_engine(policy, shape.lr, 0, ds_config, shape.optimizer)
        if stage == 3:
            with partitioned_loading(ds_config):
                reference = reference_engine(load_model(config["reference"]), ds_config)
        else:
            reference = load_model(config["reference"]).eval().requires_grad_(False)
        loop = AlignmentLoop(
            engine,
            pairs,
            objective="dpo",
            beta=BETA,
            batch_size=shape.batch,
            pad_token_id=shape.pad,
            experiment_seed=0,
            trial_seed=0,
            rank=rank,
            world=world,
            reduce=all_ranks_sum,
            prepare_batch=lambda batch, reference=reference: with_reference_logprobs(reference, batch, shape.pad),
        )
        times, first_loss = [], None
        for step in range(shape.warmup + shape.steps):
            started = time.perf_counter()
            loop.train_step()
            times.append(time.perf_counter() - started)
            if step == 0:
                first_loss = loop.take_interval()["loss"]  # collective, after the step's clock stopped
        results[str(stage)] = {"times": times[shape.warmup :], "first_loss": first_loss}
        del loop, engine, reference, policy
        gc.collect()
    # Train V2 keeps the metrics of reports with a checkpoint: rank 0's carries one (its results, again).
    metrics = {"results": json.dumps(results)}
    if rank == 0:
        with tempfile.TemporaryDirectory(prefix="overopt_peers_") as local:
            Path(local, "results.json").write_text(metrics["results"])
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(local))
    else:
        ray.train.report(metrics)


def overopt_run(
    policy_dir: str, reference_dir: str, pairs: dict, shape: Shape, threads: int, workers: int, stages, storage: Path, name: str
):
    """One Ray Train fit of ``workers`` workers running each of ``stages``: {stage: result}."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = {
        "shape": shape.__dict__,
        "threads": threads // workers,
        "pairs": pairs,
        "policy": policy_dir,
        "reference": reference_dir,
        "stages": list(stages),
    }
    result = TorchTrainer(
        _overopt_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": threads // workers}),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    ).fit()
    return {int(stage): value for stage, value in json.loads(result.metrics["results"]).items()}


# --- the run --------------------------------------------------------------------------------------


def parameters(shape: Shape) -> int:
    h, f, v = shape.hidden, shape.mlp, shape.vocab
    return 2 * v * h + shape.layers * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h) + 2 * h


def run_shape(shape: Shape, args, work: Path) -> tuple[list[dict], dict[str, float | None]]:
    """Every configuration, round-robin over the rounds: (rows, first-step losses)."""
    policy_dir, reference_dir = saved_models(work, shape)
    pairs = make_pairs(shape, args.seed)
    threads = args.threads
    trl_problem = trl_status() if not args.no_trl else "skipped (--no-trl)"
    configs: list[tuple[str, str]] = [("plain", "plain PyTorch loop"), ("trl", "TRL DPOTrainer")]
    for workers in args.workers:
        for stage in args.stages:
            configs.append((f"overopt-{workers}-{stage}", f"overopt ZeRO-{stage}, {workers} worker{'s' * (workers > 1)}"))
    times: dict[str, list[float]] = {key: [] for key, _ in configs}
    losses: dict[str, float | None] = {key: None for key, _ in configs}
    units = ["plain"] + (["trl"] if trl_problem is None else []) + [f"ray-{workers}" for workers in args.workers]
    for round_ in range(shape.repeats):
        for unit in units[round_ % len(units) :] + units[: round_ % len(units)]:
            started = time.time()
            if unit == "plain":
                results = {"plain": plain_loop(policy_dir, reference_dir, pairs, shape, threads)}
            elif unit == "trl":
                results = {"trl": trl_run(policy_dir, reference_dir, pairs, shape, threads, work)}
            else:
                workers = int(unit.split("-")[1])
                stages = args.stages if round_ % 2 == 0 else list(reversed(args.stages))
                by_stage = overopt_run(
                    policy_dir,
                    reference_dir,
                    pairs,
                    shape,
                    threads,
                    workers,
                    stages,
                    work / "ray",
                    f"peers-{shape.name}-{workers}w-r{round_}",
                )
                results = {f"overopt-{workers}-{stage}": value for stage, value in by_stage.items()}
            for key, value in results.items():
                times[key] += value["times"]
                if losses[key] is None:
                    losses[key] = value["first_loss"]
            gc.collect()
            print(
                f"  {shape.name} round {round_ + 1}/{shape.repeats}: {unit} in {time.time() - started:.1f} s", file=sys.stderr, flush=True
            )
    plain = float(np.median([shape.batch / t for t in times["plain"]]))
    rows = []
    for key, label in configs:
        if key == "trl" and trl_problem is not None:
            rows.append({"config": label, "median": None, "spread": trl_problem, "ratio": "", "notes": ""})
            continue
        rate = np.array([shape.batch / t for t in times[key]])
        q1, median, q3 = np.percentile(rate, [25, 50, 75])
        rows.append(
            {
                "config": label,
                "median": float(median),
                "spread": f"{q1:.3g}-{q3:.3g} (IQR of {len(rate)} steps)",
                "ratio": f"{median / plain:.2f}",
                "notes": notes(key, threads),
            }
        )
    return rows, losses


def notes(key: str, threads: int) -> str:
    if key == "plain":
        return f"1 process, {threads} threads"
    if key == "trl":
        import trl

        return f"TRL {trl.__version__}, 1 process, {threads} threads; bf16 and gradient checkpointing off; reference forward in the step"
    workers, stage = (int(part) for part in key.split("-")[1:])
    reference = "ZeRO-3 reference engine" if stage == 3 else "frozen reference replica per worker"
    return f"{workers} Ray Train worker{'s' * (workers > 1)} x {threads // workers} threads, gloo; {reference}"


def print_results(shape: Shape, rows: list[dict], losses: dict, args, threads: int) -> bool:
    """The loss check and the table; returns whether overopt's first-step losses match the plain loop's."""
    print(
        f"\nPEERS {shape.name}: {shape.description}, {parameters(shape) / 1e6:.2f} M parameters; "
        f"{shape.batch} pairs a step of {shape.prompt_len} prompt + {shape.response_len} response tokens; fp32, "
        f"{shape.optimizer} lr {shape.lr:g}, DPO beta {BETA}; {threads} threads in all; "
        f"{shape.repeats} rounds x ({shape.warmup} warm-up + {shape.steps} timed steps)"
    )
    plain = losses["plain"]
    agree = True
    print("first-step DPO loss on the same batch and weights:")
    for key, loss in losses.items():
        if loss is None:
            continue
        difference = abs(loss - plain)
        if key.startswith("overopt"):
            agree &= difference <= LOSS_TOLERANCE
        print(f"LOSS {key}: {loss:.8f} |diff from plain| {difference:.2e}")
    print()
    print("| config | pairs/s (median) | spread | ratio to plain loop | notes |")
    print("|---|---|---|---|---|")
    for row in rows:
        median = f"{row['median']:.3g}" if row["median"] is not None else "-"
        print(f"| {row['config']} | {median} | {row['spread']} | {row['ratio']} | {row['notes']} |")
    return agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=["small", "pythia-160m", "tiny"], default=["small", "pythia-160m"])
    parser.add_argument("--prompt-len", type=int, help="prompt tokens (every shape run; default: the shape's)")
    parser.add_argument("--response-len", type=int, help="response tokens, EOS included (default: the shape's)")
    parser.add_argument("--batch", type=int, help="pairs per optimizer step (default: the shape's: small 32, pythia-160m 4)")
    parser.add_argument("--steps", type=int, help="timed steps per configuration and round (default: the shape's)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (at least 1; default: the shape's)")
    parser.add_argument("--repeats", type=int, help="rounds over all configurations (default: the shape's)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 3])
    parser.add_argument(
        "--threads", type=int, help="torch threads in all, split over the workers (default: the cores, at most 16; --quick: 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the pairs' random ids")
    parser.add_argument("--no-trl", action="store_true", help="leave TRL's row out")
    parser.add_argument("--work", default="runs/benchmarks/peers", help="models and Ray Train's run directories")
    parser.add_argument("--quick", action="store_true", help="the tiny shape, 1 worker, ZeRO-0 and ZeRO-3, 1 round of 1 + 3 steps")
    args = parser.parse_args()
    if args.quick:
        # One Ray Train fit (1 worker, both stages) keeps the run to about a minute; 2 workers need a second
        # fit. One thread: on a busy machine two threads wait for each other at every operation.
        args.shapes, args.workers = ["tiny"], [1]
        args.threads = args.threads or 1
    args.threads = args.threads or min(os.cpu_count() or 1, 16)
    for workers in args.workers:
        if args.threads % workers:
            parser.error(f"--threads {args.threads} does not split evenly over {workers} workers")
    overrides = {
        field: value
        for field, value in (
            ("prompt_len", args.prompt_len),
            ("response_len", args.response_len),
            ("batch", args.batch),
            ("steps", args.steps),
            ("warmup", args.warmup),
            ("repeats", args.repeats),
        )
        if value is not None
    }
    selected = [replace(shapes()[name], **overrides) for name in args.shapes]
    for shape in selected:
        if shape.warmup < 1 or any(shape.batch % workers for workers in args.workers):
            parser.error(f"{shape.name}: --warmup must be >= 1 and --batch a multiple of every --workers")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()

    import ray

    from overopt.config import ExperimentConfig
    from overopt.sweep.run import start_ray

    start_ray(ExperimentConfig(), log=lambda line: print(line, file=sys.stderr))
    agree = True
    try:
        for shape in selected:
            rows, losses = run_shape(shape, args, work)
            agree &= print_results(shape, rows, losses, args, args.threads)
    finally:
        ray.shutdown()
    print("\ncommand: python benchmarks/peers.py " + " ".join(sys.argv[1:]))
    if not agree:
        sys.exit(f"overopt's first-step loss differs from the plain loop's by more than {LOSS_TOLERANCE}")


if __name__ == "__main__":
    main()
