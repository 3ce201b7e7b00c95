"""The memory plan's activation term against one measured training step, on CPU.

    python benchmarks/memory_plan.py                       # Pythia-160M and -410M shapes, 1 and 2 pairs, checkpointing off/on
    python benchmarks/memory_plan.py --sizes 160m --micro-batches 1 --prompt-tokens 64 --response-tokens 16   # a quick look

For each setting (size, pairs per micro-batch, gradient checkpointing) a fresh subprocess loads a
GPT-NeoX model of the size's shape (random weights, built from its config once and saved under
--work), and runs one DPO optimizer step of the alignment loop (train/loop.py ``AlignmentLoop`` on a
``PlainEngine``: fp32, RMSprop, the step the screen takes) on synthetic pairs: prompts of
--prompt-tokens random ids, chosen and rejected responses of --response-tokens, so that 2 x pairs
sequences of prompt + response tokens go through the policy, as in the plan.

What is measured: torch's profiler (profile_memory, record_shapes, with_stack) records every tensor
allocation and free of the step, and its memory timeline puts each tensor in a category; the number is
the peak, over the forward and backward passes (up to the optimizer step, whose state RMSprop creates
first), of the bytes of live tensors that are not parameters, gradients or optimizer state (the
categories INPUT, TEMPORARY, ACTIVATION, AUTOGRAD_DETAIL and uncategorised). That is what the plan's
activation term (overopt.worker_memory.activation_memory: kept activations, the recomputed layer, the
logits and the log-softmax's temporaries) predicts; model states, and the optimizer step's temporaries
(one parameter tensor's worth), are the plan's other columns. Process RSS would mix in the allocator's
caching and the interpreter, so it is not used.

Prints a markdown table (predicted, measured, measured / predicted) and the seconds each step took
(profiled: slower than training). The largest setting (410M, 2 pairs) needs about 10 GiB of free RAM:
5.1 GiB of activations beside 4.9 GiB of fp32 weights, gradients and RMSprop state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Pythia's shapes (EleutherAI/pythia-160m and -410m config.json): layers, hidden, heads, MLP width, vocabulary.
SHAPES = {"160m": (12, 768, 12, 3072, 50304), "410m": (24, 1024, 16, 4096, 50304)}
# Profiler memory categories that are not model states (torch.profiler._memory_profiler.Category names; None = uncategorised)
ACTIVATION_CATEGORIES = ("INPUT", "TEMPORARY", "ACTIVATION", "AUTOGRAD_DETAIL", None)
GIB = 2**30


def saved_model(work: Path, size: str, max_positions: int) -> Path:
    """A GPT-NeoX model of ``size``'s shape with random weights, saved once under ``work``."""
    from overopt.models import save_neox_shaped

    return save_neox_shaped(work / f"pythia-{size}-shape", SHAPES[size], max_positions)


def measure(model_dir: str, pairs: int, checkpointing: bool, prompt_tokens: int, response_tokens: int, threads: int) -> dict:
    """One profiled training step in this process: peak activation bytes and the step's seconds."""
    import tempfile

    import numpy as np
    import pyarrow as pa
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX

    from overopt.models import load_model
    from overopt.train.loop import AlignmentLoop, PlainEngine, enable_gradient_checkpointing
    from overopt.train.steps import optimizer_and_schedule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_model(model_dir).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)

    def ids(length: int) -> list[list[int]]:
        return rng.integers(2, vocab, size=(pairs, length)).tolist()  # 0 and 1 are EOS and pad

    table = pa.table(
        {
            "prompt_ids": ids(prompt_tokens),
            "chosen_ids": ids(response_tokens),
            "rejected_ids": ids(response_tokens),
            "reference_chosen_logps": np.full(pairs, -500.0),
            "reference_rejected_logps": np.full(pairs, -500.0),
        }
    )
    optimizer, scheduler = optimizer_and_schedule(model.parameters(), "rmsprop", lr=1e-6, warmup_steps=0)
    loop = AlignmentLoop(
        PlainEngine(model, optimizer, scheduler, 1.0),
        table,
        objective="dpo",
        beta=0.1,
        batch_size=pairs,
        pad_token_id=1,
        experiment_seed=0,
        trial_seed=0,
    )
    started = time.time()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        loop.train_step()
    seconds = time.time() - started
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")  # [times, sizes]: column 1 + _CATEGORY_TO_INDEX[category]
        _, sizes = json.loads(Path(path).read_text())
    sizes = np.asarray(sizes, dtype=np.int64)
    name = {(category.name if category else None): 1 + index for category, index in _CATEGORY_TO_INDEX.items()}
    live = sizes[:, [name[category] for category in ACTIVATION_CATEGORIES]].sum(axis=1)
    # The forward and backward passes end where the optimizer step starts: RMSprop creates its state
    # first. The step's own temporaries (one parameter tensor's worth) belong with the model states.
    step_starts = np.flatnonzero(sizes[:, name["OPTIMIZER_STATE"]] > 0)
    passes = live[: step_starts[0]] if len(step_starts) else live
    return {"measured": int(passes.max()), "seconds": seconds}


def predicted(size: str, pairs: int, checkpointing: bool, tokens: int) -> int:
    from overopt.model_shapes import ModelShape
    from overopt.worker_memory import activation_memory

    layers, hidden, heads, mlp, vocab = SHAPES[size]
    shape = ModelShape(
        total_params=0,
        largest_layer_params=0,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads,
        intermediate_size=mlp,
        vocab_size=vocab,
        max_positions=tokens,
    )
    return activation_memory(shape, sequences=2 * pairs, tokens=tokens, precision="fp32", gradient_checkpointing=checkpointing).total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["160m", "410m"], choices=sorted(SHAPES))
    parser.add_argument("--micro-batches", nargs="+", type=int, default=[1, 2], help="pairs per forward/backward pass")
    parser.add_argument("--prompt-tokens", type=int, default=512)  # configs/pythia_tldr.yaml's data.max_prompt_tokens
    parser.add_argument("--response-tokens", type=int, default=64)  # and data.max_response_tokens
    parser.add_argument("--threads", type=int, default=2)  # the development machine's cores
    parser.add_argument("--work", default="runs/benchmarks/memory_plan", help="where the random-weight models are saved")
    parser.add_argument("--measure", nargs=3, metavar=("MODEL_DIR", "PAIRS", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the subprocess of one setting
        model_dir, pairs, checkpointing = args.measure
        result = measure(model_dir, int(pairs), checkpointing == "1", args.prompt_tokens, args.response_tokens, args.threads)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    tokens = args.prompt_tokens + args.response_tokens
    work = Path(args.work).resolve()
    rows, started = [], time.time()
    for size in args.sizes:
        model_dir = saved_model(work, size, max_positions=max(2048, tokens))
        for pairs in args.micro_batches:
            for checkpointing in (False, True):
                command = [
                    sys.executable,
                    __file__,
                    "--measure",
                    str(model_dir),
                    str(pairs),
                    "1" if checkpointing else "0",
                    "--prompt-tokens",
                    str(args.prompt_tokens),
                    "--response-tokens",
                    str(args.response_tokens),
                    "--threads",
                    str(args.threads),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"the measurement of {size}, {pairs} pairs, checkpointing {checkpointing} failed")
                result = json.loads(lines[-1].removeprefix("RESULT "))
                plan = predicted(size, pairs, checkpointing, tokens)
                rows.append((size, pairs, checkpointing, plan, result["measured"], result["seconds"]))
                print(
                    f"  {size} {pairs} pairs checkpointing {'on' if checkpointing else 'off'}: predicted {plan / GIB:.3f} GiB, "
                    f"measured {result['measured'] / GIB:.3f} GiB in a {result['seconds']:.0f} s step",
                    flush=True,
                )
    print(
        f"\n{len(rows)} settings in {time.time() - started:.0f} s; sequences of {args.prompt_tokens} + {args.response_tokens} tokens, fp32\n"
    )
    print("| model shape | pairs per micro-batch (sequences) | gradient checkpointing | predicted | measured | measured / predicted |")
    print("|---|---|---|---|---|---|")
    for size, pairs, checkpointing, plan, measured, _ in rows:
        print(
            f"| Pythia-{size.upper()} | {pairs} ({2 * pairs}) | {'on' if checkpointing else 'off'} | {plan / GIB:.3f} GiB | "
            f"{measured / GIB:.3f} GiB | {measured / plan:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
