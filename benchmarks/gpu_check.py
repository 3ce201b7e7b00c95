"""One prepared GPU check: ZeRO-3 DPO steps, peak memory against the plan, vLLM sampling, log-prob agreement.

    python benchmarks/gpu_check.py                 # one GPU: a Pythia-1B-shaped model, bf16, nccl (sized for < 10 min)
    python benchmarks/gpu_check.py --cpu           # the same code on CPU: a tiny shape, fp32, gloo (what tests/unit/test_gpu_check.py runs)

Nothing is downloaded: the model is a GPT-NeoX of Pythia-1B's shape with random weights, built from its
config and saved under --work; the batches are synthetic TL;DR-shaped pairs (prompts of 512 random
token ids, chosen and rejected responses of 64). What it runs, in order:

1. DPO steps of the sweep's own loop (train/loop.py ``AlignmentLoop``) on a DeepSpeed ZeRO-3 engine
   (train/engine.py: ``partitioned_loading``, ``initialize_engine``, RMSprop) in a process group of 1
   (nccl on the GPU, gloo on CPU), each step --batch pairs in micro-batches of --micro-batch with
   gradient accumulation: seconds per step (after --warmup-steps), tokens/s, and MFU = model FLOPs
   per second / the device's peak (6 x parameters + 12 x layers x hidden x sequence FLOPs per token,
   H100/H200 bf16 dense 989 TFLOP/s; left out where the peak is unknown, as on CPU).
2. Peak GPU memory over those steps (torch.cuda.max_memory_allocated) against the memory plan's
   prediction for the same setting (overopt/worker_memory.py: model states + one micro-batch's activations).
3. The trained policy consolidated to a Hugging Face directory, and vLLM (when it imports, and on a
   GPU) sampling --prompts prompts in a fresh subprocess: generated tokens/s.
4. The same samples scored by Hugging Face (overopt/logprobs.py ``token_logprobs``, the scoring path)
   against vLLM's own log-probs of the tokens it sampled: the largest and the mean per-token difference
   and the largest per-sequence difference.

Prints one table (a line ``GPU CHECK`` and then markdown rows); a part that cannot run says why in
its row. docs/gpu-validation.md records what it printed.
One script: its parts run in order on one model and the policy the first part trains, so one run on
a GPU checks them all.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 2**30
# GPT-NeoX shapes: layers, hidden size, heads, MLP width, vocabulary
PYTHIA_1B = (16, 2048, 8, 8192, 50304)  # EleutherAI/pythia-1b config.json
TINY = (2, 64, 2, 256, 512)  # the CPU run: seconds, not minutes
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peak by device name (NVIDIA data sheets)


def saved_model(directory: Path, shape: tuple[int, int, int, int, int], max_positions: int) -> Path:
    from overopt.models import save_neox_shaped

    return save_neox_shaped(directory, shape, max_positions)


def synthetic_pairs(pairs: int, prompt_tokens: int, response_tokens: int, vocab: int, seed: int = 0):
    """TL;DR-shaped pairs of random ids (0 and 1 are EOS and pad), with placeholder reference log-probs."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)

    def ids(length: int) -> list[list[int]]:
        return rng.integers(2, vocab, size=(pairs, length)).tolist()

    return pa.table(
        {
            "prompt_ids": ids(prompt_tokens),
            "chosen_ids": ids(response_tokens),
            "rejected_ids": ids(response_tokens),
            "reference_chosen_logps": np.full(pairs, -600.0),
            "reference_rejected_logps": np.full(pairs, -600.0),
        }
    )


def train_steps(args, model_dir: Path, policy_dir: Path) -> dict:
    """ZeRO-3 DPO steps in a process group of one; the trained policy saved to ``policy_dir``."""
    import torch
    import torch.distributed as dist

    from overopt.config import LoadOptions
    from overopt.model_shapes import shape_of_config
    from overopt.models import load_model
    from overopt.train.engine import deepspeed_config, initialize_engine, partitioned_loading, save_hf_checkpoint
    from overopt.train.loop import AlignmentLoop, enable_gradient_checkpointing
    from overopt.worker_memory import activation_memory, estimate_worker_memory

    gpu = not args.cpu
    precision = "fp32" if args.cpu else "bf16"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if gpu:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if gpu else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    accumulation = args.batch // args.micro_batch
    ds_config = deepspeed_config(args.micro_batch, 1, 3, precision, 1.0, accumulation)
    options = LoadOptions(dtype="float32" if args.cpu else "bfloat16", attn_implementation="sdpa")
    with partitioned_loading(ds_config):
        model = load_model(str(model_dir), options=options)
    shape = shape_of_config(model.config)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    engine, _ = initialize_engine(model, lr=1e-6, warmup_steps=0, ds_config=ds_config, optimizer="rmsprop")
    steps = args.warmup_steps + args.steps
    pairs = synthetic_pairs(args.batch * steps, args.prompt_tokens, args.response_tokens, shape.vocab_size)
    loop = AlignmentLoop(
        engine,
        pairs,
        objective="dpo",
        beta=0.1,
        batch_size=args.batch,
        pad_token_id=1,
        experiment_seed=0,
        trial_seed=0,
        micro_batch_size=args.micro_batch,
    )
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        values = loop.train_step()
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    seconds = sorted(times[args.warmup_steps :])[len(times[args.warmup_steps :]) // 2]  # the median step
    tokens = args.batch * 2 * (args.prompt_tokens + args.response_tokens)  # chosen and rejected sequences per step
    flops_per_token = 6 * shape.total_params + 12 * shape.num_layers * shape.hidden_size * (args.prompt_tokens + args.response_tokens)
    activations = activation_memory(
        shape,
        sequences=2 * args.micro_batch,
        tokens=args.prompt_tokens + args.response_tokens,
        precision=precision,
        gradient_checkpointing=args.gradient_checkpointing,
        attn_implementation="sdpa",
    )
    plan = estimate_worker_memory(
        shape, num_workers=1, zero_stage=3, precision=precision, optimizer="rmsprop", load_dtype=options.dtype, activations=activations
    )
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    peak_flops = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in device), None)
    result = {
        "device": device,
        "params": shape.total_params,
        "precision": precision,
        "loss": values["loss"],
        "grad_norm": values["grad_norm"],
        "seconds_per_step": seconds,
        "tokens_per_second": tokens / seconds,
        "flops_per_token": flops_per_token,
        "mfu": tokens / seconds * flops_per_token / peak_flops if peak_flops else None,
        "peak_memory": torch.cuda.max_memory_allocated() if gpu else None,
        "planned_memory": plan.total,
        "planned_states": plan.model_states,
        "planned_activations": activations.total,
        "backend": dist.get_backend(),
    }
    save_hf_checkpoint(engine, str(policy_dir))
    del loop, engine, model
    if gpu:
        torch.cuda.empty_cache()
    dist.destroy_process_group()
    return result


def vllm_samples(args, policy_dir: Path, out: Path) -> None:
    """(Run in a fresh subprocess.) Sample --prompts prompts with vLLM; write the samples, their
    per-token log-probs as vLLM computed them, and the generated tokens per second."""
    from transformers import AutoConfig
    from vllm import LLM, SamplingParams

    vocab = AutoConfig.from_pretrained(policy_dir).vocab_size
    prompts = synthetic_pairs(args.prompts, args.prompt_tokens, 1, vocab, seed=1).column("prompt_ids").to_pylist()
    # Half the GPU: the parent process may still hold what DeepSpeed did not give back, and vLLM refuses to
    # start when the share it asks for is not free; 1B's weights and 256 sequences' KV cache need far less.
    llm = LLM(
        model=str(policy_dir),
        dtype="bfloat16",
        gpu_memory_utilization=0.5,
        seed=0,
        skip_tokenizer_init=True,
        logprobs_mode="processed_logprobs",
        max_model_len=args.prompt_tokens + args.response_tokens,
    )
    params = SamplingParams(temperature=1.0, max_tokens=args.response_tokens, logprobs=0, seed=0, detokenize=False, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params)
    seconds = time.perf_counter() - started
    samples = []
    for prompt, output in zip(prompts, outputs):
        completion = output.outputs[0]
        token_logps = [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs)]
        samples.append({"prompt_ids": prompt, "response_ids": list(completion.token_ids), "logps": token_logps})
    generated = sum(len(s["response_ids"]) for s in samples)
    out.write_text(json.dumps({"samples": samples, "tokens_per_second": generated / seconds, "seconds": seconds}))


def compare_logprobs(policy_dir: Path, samples: list[dict], gpu: bool) -> dict:
    """Hugging Face's per-token log-probs of vLLM's samples (the scoring path) against vLLM's own."""
    import torch

    from overopt.config import LoadOptions
    from overopt.logprobs import pack_prompt_response, token_logprobs
    from overopt.models import load_model

    model = load_model(str(policy_dir), options=LoadOptions(dtype="bfloat16", attn_implementation="sdpa")).eval()
    if gpu:
        model = model.cuda()
    token_gaps, sequence_gaps = [], []
    with torch.no_grad():
        for start in range(0, len(samples), 16):
            chunk = samples[start : start + 16]
            packed = pack_prompt_response([s["prompt_ids"] for s in chunk], [s["response_ids"] for s in chunk], pad_token_id=1)
            logps, mask = token_logprobs(model, **packed)
            for row, sample in enumerate(chunk):
                hf = logps[row][mask[row].bool()].double().cpu()
                vllm = torch.tensor(sample["logps"], dtype=torch.float64)
                token_gaps.append((hf - vllm).abs())
                sequence_gaps.append(abs(float(hf.sum() - vllm.sum())))
    gaps = torch.cat(token_gaps)
    return {
        "max_token_gap": float(gaps.max()),
        "mean_token_gap": float(gaps.mean()),
        "max_sequence_gap": max(sequence_gaps),
        "tokens": int(gaps.numel()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the tiny CPU run: fp32, gloo, no vLLM (the test's)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 512 (configs/pythia_tldr.yaml); 24 with --cpu")
    parser.add_argument("--response-tokens", type=int, default=None, help="default 64; 8 with --cpu")
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")  # a few micro-batches, seconds per step
    parser.add_argument("--micro-batch", type=int, default=4, help="pairs per forward/backward pass")  # configs/pythia_tldr.yaml's
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--warmup-steps", type=int, default=2)  # DeepSpeed's and CUDA's first-step costs stay out of the timing
    parser.add_argument("--steps", type=int, default=5)  # timed steps: the median is reported
    parser.add_argument("--prompts", type=int, default=256, help="vLLM: prompts sampled")  # configs/pythia_tldr.yaml's eval set
    parser.add_argument(
        "--work", default=None, help="where the random-weight model and the trained policy go (default: a temporary directory)"
    )
    parser.add_argument("--vllm-part", nargs=2, metavar=("POLICY_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.prompt_tokens = args.prompt_tokens or (24 if args.cpu else 512)
    args.response_tokens = args.response_tokens or (8 if args.cpu else 64)
    if args.batch % args.micro_batch:
        parser.error("--micro-batch must divide --batch")
    if args.cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would look for an accelerator
        args.warmup_steps, args.steps = min(args.warmup_steps, 1), min(args.steps, 2)
    os.environ.setdefault("LOCAL_RANK", "0")
    if args.vllm_part:
        vllm_samples(args, Path(args.vllm_part[0]), Path(args.vllm_part[1]))
        return 0

    with tempfile.TemporaryDirectory(prefix="overopt-gpu-check-") as scratch:
        work = Path(args.work or scratch)
        started = time.time()
        model_dir = saved_model(
            work / ("tiny" if args.cpu else "pythia-1b-shape"),
            TINY if args.cpu else PYTHIA_1B,
            max_positions=max(2048, args.prompt_tokens + args.response_tokens),
        )
        train = train_steps(args, model_dir, work / "policy")
        rows = [
            ("device", f"{train['device']} ({train['backend']}, process group of 1)"),
            (
                "model",
                (
                    f"GPT-NeoX, {train['params'] / 1e6:.1f}M parameters ({'tiny shape' if args.cpu else 'Pythia-1B shape'}), "
                    f"random weights, {train['precision']}, ZeRO-3, RMSprop"
                ),
            ),
            (
                "DPO step",
                (
                    f"{args.batch} pairs of {args.prompt_tokens} + {args.response_tokens} tokens in micro-batches of {args.micro_batch}, "
                    f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}: {train['seconds_per_step']:.3f} s "
                    f"(median of {args.steps} after {args.warmup_steps}); loss {train['loss']:.4f}"
                ),
            ),
            ("training tokens/s", f"{train['tokens_per_second']:.0f}"),
            (
                "MFU",
                f"{100 * train['mfu']:.1f} % ({train['flops_per_token'] / 1e9:.2f} GFLOP per token)"
                if train["mfu"] is not None
                else "not computed: no peak FLOP/s known for this device",
            ),
        ]
        if train["peak_memory"] is not None:
            rows.append(
                (
                    "peak memory (max_memory_allocated)",
                    (
                        f"{train['peak_memory'] / GIB:.2f} GiB measured; the plan: {train['planned_memory'] / GIB:.2f} GiB "
                        f"({train['planned_states'] / GIB:.2f} model states + {train['planned_activations'] / GIB:.2f} activations); "
                        f"measured / planned {train['peak_memory'] / train['planned_memory']:.2f}"
                    ),
                )
            )
        else:
            rows.append(("peak memory", f"not measured on CPU (the plan: {train['planned_memory'] / GIB:.3f} GiB)"))
        if args.cpu:
            reason = "skipped: the CPU run (vLLM's GPU engine)"
        elif importlib.util.find_spec("vllm") is None:
            reason = "skipped: vllm is not importable in this Python"
        else:
            reason = None
        if reason:
            rows += [("vLLM generation", reason), ("HF vs vLLM log-probs", reason)]
        else:
            out = work / "vllm_samples.json"
            command = [
                sys.executable,
                __file__,
                "--vllm-part",
                str(work / "policy"),
                str(out),
                "--prompts",
                str(args.prompts),
                "--prompt-tokens",
                str(args.prompt_tokens),
                "--response-tokens",
                str(args.response_tokens),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode or not out.exists():
                failure = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows += [("vLLM generation", f"FAILED: {failure}"), ("HF vs vLLM log-probs", "skipped: no vLLM samples")]
            else:
                sampled = json.loads(out.read_text())
                gaps = compare_logprobs(work / "policy", sampled["samples"], gpu=True)
                rows.append(
                    (
                        "vLLM generation",
                        (
                            f"{sampled['tokens_per_second']:.0f} generated tokens/s ({args.prompts} prompts of "
                            f"{args.prompt_tokens} tokens, {args.response_tokens} new each, {sampled['seconds']:.1f} s)"
                        ),
                    )
                )
                rows.append(
                    (
                        "HF vs vLLM log-probs",
                        (
                            f"per token: max |diff| {gaps['max_token_gap']:.4f}, mean {gaps['mean_token_gap']:.5f} "
                            f"over {gaps['tokens']} tokens; per sequence: max |diff| {gaps['max_sequence_gap']:.3f}"
                        ),
                    )
                )
        rows.append(("total time", f"{time.time() - started:.0f} s"))
    print("GPU CHECK")
    print("| check | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
