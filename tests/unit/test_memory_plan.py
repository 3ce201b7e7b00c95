"""The memory plan: parameters counted without weights, model states per training worker under each
ZeRO stage, one micro-batch's activations, evaluation's processes, the refusal of a config that cannot
fit train.device_memory_gb (naming what would fit), and the dry-run's table."""

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import GPTNeoXConfig

from overopt.config import ConfigError, load_config
from overopt.data import sources
from overopt.data.tokenizer import build_synthetic_tokenizer
from overopt.evaluation_memory import evaluation_task_bytes, scoring_task_parts, vllm_engine_bytes
from overopt.memory_plan import check_memory_plan, memory_plan
from overopt.model_shapes import ModelShape, model_shape, policy_shape
from overopt.models import load_model
from overopt.sweep.plan import describe_plan, plan_sweep
from overopt.worker_memory import GIB, activation_memory, estimate_worker_memory, worker_memory

ROOT = Path(__file__).resolve().parents[2]

# Pythia-1B's shape (EleutherAI/pythia-1b config.json)
V, H, LAYERS, HEADS, INTER = 50304, 2048, 16, 8, 8192
# The Pythia sizes of configs/pythia_tldr.yaml: layers, hidden size, heads, MLP width, vocabulary (their config.json)
PYTHIA_SHAPES = {
    "pythia-1b": (16, 2048, 8, 8192, 50304),
    "pythia-2.8b": (32, 2560, 32, 10240, 50304),
    "pythia-6.9b": (32, 4096, 32, 16384, 50432),
}
TLDR_LENGTHS = ["data.max_prompt_tokens=512", "data.max_response_tokens=64"]  # configs/pythia_tldr.yaml's


def _pythia_1b_params_by_hand() -> int:
    embeddings = 2 * V * H  # embed_in and embed_out (untied)
    per_layer = (
        2 * (2 * H)  # input and post-attention LayerNorm (weight + bias)
        + H * 3 * H
        + 3 * H  # query_key_value
        + H * H
        + H  # attention output dense
        + H * INTER
        + INTER  # dense_h_to_4h
        + INTER * H
        + H  # dense_4h_to_h
    )
    return embeddings + LAYERS * per_layer + 2 * H  # + final LayerNorm


@pytest.fixture(scope="module")
def pythia_1b_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pythia-1b")
    GPTNeoXConfig(
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    ).save_pretrained(directory)  # config.json only: no weights
    return str(directory)


@pytest.fixture(scope="module")
def pythia_dirs(tmp_path_factory):
    """Local stand-ins of the paper's three sizes: each model's config.json only (no weights)."""
    root = tmp_path_factory.mktemp("pythia")
    for name, (layers, hidden, heads, mlp, vocab) in PYTHIA_SHAPES.items():
        GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=mlp,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
        ).save_pretrained(root / name)
    return {name: str(root / name) for name in PYTHIA_SHAPES}


def test_a_builtin_size_counts_what_the_real_model_holds():
    cfg = load_config(None, ["models.sizes=[small]"])
    shape = policy_shape(cfg, "small")
    vocab = len(build_synthetic_tokenizer(sources.synthetic_task(cfg.data)))
    model = load_model("small", vocab_size=vocab)  # built for real: it is tiny
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.largest_layer_params == max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def test_pythia_1b_shape_is_counted_on_the_meta_device_and_matches_the_hand_estimate(pythia_1b_dir):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    shape = model_shape(pythia_1b_dir)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert grown_gib < 1.0  # its fp32 weights would take 3.8 GiB: nothing was allocated
    P, L = _pythia_1b_params_by_hand(), V * H
    assert P == 1_011_781_632  # Pythia-1B's published count
    assert shape == ModelShape(
        total_params=P,
        largest_layer_params=L,
        num_layers=LAYERS,
        hidden_size=H,
        num_heads=HEADS,
        num_kv_heads=HEADS,
        intermediate_size=INTER,
        vocab_size=V,
        max_positions=2048,
    )  # largest layer: an embedding

    # bf16 + AdamW, ZeRO-3 over 8 workers, by hand: bf16 weights 2 B/param, bf16 gradients 2 + their fp32
    # copy 4, fp32 master 4 + two fp32 moments 8, all over 8 workers; one layer gathered whole at 2 + 2 B.
    memory = estimate_worker_memory(shape, num_workers=8, zero_stage=3, precision="bf16", optimizer="adamw")
    assert memory.weights == pytest.approx(2 * P / 8 + 2 * L, abs=8)
    assert memory.gradients == pytest.approx(6 * P / 8 + 2 * L, abs=8)
    assert memory.optimizer_state == pytest.approx(12 * P / 8, abs=8)
    assert memory.reference == 0  # reference mode "cache": precomputed log-probs
    assert memory.total == pytest.approx(2_941_544_448, abs=32)  # 20 * P / 8 + 4 * L
    assert memory.total / GIB == pytest.approx(2.74, abs=0.01)
    # DeepSpeed's ZeRO-3 estimator (18 B/param over the workers + 4 B per largest-layer param) counts
    # 2 B/param fewer than its own ZeRO-2 one; ours keeps the bf16 weight partition.
    assert memory.deepspeed_estimate == int(4 * L + int(18 * P / 8))
    assert memory.total - memory.deepspeed_estimate == pytest.approx(2 * P / 8, abs=32)

    # ZeRO-2 with the same settings is exactly DeepSpeed's ZeRO-2 estimate: 2 P + 18 P / 8.
    zero2 = estimate_worker_memory(shape, num_workers=8, zero_stage=2, precision="bf16", optimizer="adamw")
    assert zero2.total == pytest.approx(zero2.deepspeed_estimate, abs=32) and zero2.deepspeed_estimate == 2 * P + int(18 * P / 8)

    # Our CPU defaults, fp32 + RMSprop under ZeRO-3: weights 4, gradients 4 + the step's flat copy 4,
    # one moment 4 and no separate master (the fp32 partition is the master), one layer at 4 + 4 B.
    fp32 = estimate_worker_memory(shape, num_workers=8, zero_stage=3, precision="fp32", optimizer="rmsprop")
    assert fp32.total == pytest.approx(16 * P / 8 + 8 * L, abs=32)
    # A sharded reference adds its frozen partition in the training dtype.
    sharded = estimate_worker_memory(shape, num_workers=8, zero_stage=3, precision="bf16", optimizer="adamw", reference="sharded")
    assert sharded.reference == pytest.approx(2 * P / 8, abs=1) and sharded.total == memory.total + sharded.reference


def test_zero3_over_8_workers_holds_an_eighth_of_stage_0():
    shape = ModelShape(total_params=1_011_781_632, largest_layer_params=V * H)
    for precision in ("bf16", "fp32"):
        for optimizer in ("adamw", "rmsprop"):
            stage0 = estimate_worker_memory(shape, num_workers=8, zero_stage=0, precision=precision, optimizer=optimizer)
            stage3 = estimate_worker_memory(shape, num_workers=8, zero_stage=3, precision=precision, optimizer=optimizer)
            gathered = 2 * (2 if precision == "bf16" else 4) * shape.largest_layer_params  # one layer's weights + grads
            assert stage0.deepspeed_estimate is None
            if precision == "bf16":  # fp32 ZeRO-3 steps on a flat gradient copy that stage 0 does not make
                assert (stage3.total - gathered) / stage0.total == pytest.approx(1 / 8, rel=1e-6)
            assert stage3.total < stage0.total / 4
    one = estimate_worker_memory(shape, num_workers=1, zero_stage=3, precision="bf16", optimizer="adamw")
    eight = estimate_worker_memory(shape, num_workers=8, zero_stage=3, precision="bf16", optimizer="adamw")
    assert (eight.total - 4 * shape.largest_layer_params) * 8 == pytest.approx(one.total - 4 * shape.largest_layer_params, abs=64)


def test_activations_by_hand_for_pythia_1b():
    shape = ModelShape(
        total_params=1,
        largest_layer_params=1,
        num_layers=LAYERS,
        hidden_size=H,
        num_heads=HEADS,
        num_kv_heads=HEADS,
        intermediate_size=INTER,
        vocab_size=V,
        max_positions=2048,
    )
    n = 8 * 576  # a micro-batch of 4 pairs: 8 sequences of 512 + 64 tokens
    bf16 = activation_memory(shape, sequences=8, tokens=576, precision="bf16", gradient_checkpointing=False)
    # per token: each layer keeps 8 h + 2 f values in bf16; the final norm's input and output; the bf16 logits,
    # their fp32 copy and logsumexp's three fp32 backward temporaries
    assert bf16.layers == LAYERS * n * (8 * H + 2 * INTER) * 2
    assert bf16.recomputed == 0 and bf16.logits == n * (2 * H * 2 + V * (2 + 4 + 12))
    assert bf16.total / GIB == pytest.approx(8.42, abs=0.01)
    # checkpointing: each layer's input only, and one layer recomputed without the KV cache (V stays a view of QKV)
    kept = activation_memory(shape, sequences=8, tokens=576, precision="bf16", gradient_checkpointing=True)
    assert kept.layers == LAYERS * n * H * 2 and kept.recomputed == n * (10 * H + 2 * INTER) * 2 and kept.logits == bf16.logits
    assert kept.layers + kept.recomputed < bf16.layers / 7  # the logits, the same either way, are then most of it
    # fp32: the logits are their own fp32 copy; eager attention adds each head's softmax (fp32 and its bf16 copy)
    fp32 = activation_memory(shape, sequences=8, tokens=576, precision="fp32", gradient_checkpointing=False)
    assert fp32.layers == 2 * bf16.layers and fp32.logits == n * (2 * H * 4 + V * (4 + 12))
    eager = activation_memory(shape, sequences=8, tokens=576, precision="bf16", gradient_checkpointing=False, attn_implementation="eager")
    assert eager.layers - bf16.layers == LAYERS * n * HEADS * 576 * (4 + 2)
    half = activation_memory(shape, sequences=4, tokens=576, precision="bf16", gradient_checkpointing=False)
    assert 2 * half.total == bf16.total  # linear in the micro-batch


def test_the_plan_counts_one_micro_batch_of_the_configs_lengths(pythia_1b_dir):
    gpu = ["train.use_gpu=true", "train.precision=bf16", "models.dtype=bfloat16", "train.batch_size=64", "train.num_workers=8"]
    cfg = load_config(None, [f"models.sizes=[{pythia_1b_dir}]", *gpu, *TLDR_LENGTHS])
    whole = memory_plan(cfg)[pythia_1b_dir]  # no micro_batch_size: each worker's 8 pairs in one pass
    assert (whole.activations.sequences, whole.activations.tokens) == (16, 576)
    assert whole.total == whole.model_states + whole.activations.total
    micro = worker_memory(cfg, whole.shape, micro_batch=2)
    assert micro.model_states == whole.model_states and 4 * micro.activations.total == whole.activations.total
    cfg = load_config(
        None, [f"models.sizes=[{pythia_1b_dir}]", *gpu, *TLDR_LENGTHS, "train.micro_batch_size=2", "train.gradient_checkpointing=true"]
    )
    assert (
        memory_plan(cfg)[pythia_1b_dir].activations
        == worker_memory(cfg, whole.shape, micro_batch=2, gradient_checkpointing=True).activations
    )
    # the SFT stage: one sequence per demonstration, its own micro-batch and checkpointing
    cfg = load_config(None, [f"models.sizes=[{pythia_1b_dir}]", *gpu, *TLDR_LENGTHS, "sft.num_workers=8", "sft.micro_batch_size=4"])
    sft = worker_memory(cfg, whole.shape, "sft")
    assert (sft.activations.sequences, sft.optimizer, sft.zero_stage) == (4, "adamw", 3)
    # unlimited lengths: the model's positions (2048 here)
    assert memory_plan(load_config(None, [f"models.sizes=[{pythia_1b_dir}]", *gpu]))[pythia_1b_dir].activations.tokens == 2048


def test_a_config_that_cannot_fit_is_refused_naming_the_size_and_the_field(pythia_1b_dir):
    overrides = [
        f"models.sizes=[{pythia_1b_dir}]",
        *TLDR_LENGTHS,
        "train.micro_batch_size=1",
        "sft.micro_batch_size=1",
        "evaluation.scoring_batch_size=8",
        "evaluation.generation.batch_size=8",
    ]
    gpu = ["train.use_gpu=true", "train.precision=bf16", "models.dtype=bfloat16", "train.batch_size=64"]
    check_memory_plan(load_config(None, overrides + gpu))  # no train.device_memory_gb: nothing checked
    check_memory_plan(load_config(None, overrides + gpu + ["train.device_memory_gb=80", "train.num_workers=8"]))
    cfg = load_config(None, overrides + gpu + ["train.device_memory_gb=6", "train.num_workers=2", "train.zero_stage=2"])
    with pytest.raises(ConfigError) as refused:
        check_memory_plan(cfg)
    message = str(refused.value)
    assert f"models.sizes[{pythia_1b_dir}]" in message and "train.device_memory_gb=6" in message
    assert "train.num_workers: " in message and "train.zero_stage: 3" in message
    estimate = memory_plan(cfg)[pythia_1b_dir]
    assert f"{estimate.total / GIB:.2f} GiB" in message
    # the built-in sizes too: a CPU worker first builds the whole fp32 model in its own RAM
    with pytest.raises(ConfigError, match=r"models.sizes\[tiny\].*train.device_memory_gb=0.0001"):
        check_memory_plan(load_config(None, ["train.device_memory_gb=0.0001"]))


def test_a_batch_whose_activations_do_not_fit_is_refused_naming_the_micro_batch_that_would(pythia_dirs):
    big = pythia_dirs["pythia-6.9b"]
    base = [
        f"models.sizes=[{big}]",
        "models.dtype=bfloat16",
        "train.use_gpu=true",
        "train.precision=bf16",
        *TLDR_LENGTHS,
        "evaluation.generation.backend=vllm",
        "train.batch_size=128",
        "train.num_workers=4",
        "train.device_memory_gb=79",
        "sft.enabled=false",
    ]
    with pytest.raises(ConfigError) as refused:  # each worker's 32 pairs in one pass: ~202 GiB
        check_memory_plan(load_config(None, base))
    message = str(refused.value)
    assert f"models.sizes[{big}]: needs an estimated 202.04 GiB per training worker" in message
    assert "micro-batch of 32 pairs (64 sequences x 576 tokens), the whole share in one pass, gradient checkpointing off" in message
    # the largest micro-batch that fits without checkpointing: 8 pairs (70.2 GiB), 4 passes per step
    assert "Try train.micro_batch_size: 8 (8 pairs per forward/backward pass, 4 accumulated per step)" in message
    check_memory_plan(load_config(None, base + ["train.micro_batch_size=8"]))
    # on a device too small for even one pair without checkpointing (26.3 GiB of model states + 5.5 GiB), the hint
    # turns checkpointing on: 2 pairs a pass (29.2 GiB)
    small = base + ["train.device_memory_gb=30", "evaluation.scoring_batch_size=8"]
    with pytest.raises(
        ConfigError, match=r"Try train.gradient_checkpointing: true with train.micro_batch_size: 2 \(2 pairs per .* 16 accumulated"
    ):
        check_memory_plan(load_config(None, small))
    check_memory_plan(load_config(None, small + ["train.gradient_checkpointing=true", "train.micro_batch_size=2"]))


def test_the_dry_run_prints_the_memory_table(pythia_1b_dir):
    cfg = load_config(ROOT / "configs" / "embedded.yaml", ["train.device_memory_gb=1"])
    text = describe_plan(cfg, plan_sweep(cfg), counts={})
    assert (
        "memory per training worker (ZeRO-3, 2 workers, fp32, rmsprop, reference: cache; model states + one micro-batch's activations"
        in text
    )
    assert "size   params  weights" in text and "activations" in text
    tiny = memory_plan(cfg)["tiny"]
    assert f"fits ({tiny.total / 2**20:.2f} MiB of 1 GiB)" in text
    lines = [line for line in text.splitlines() if line.strip().startswith(("tiny ", "small "))]
    assert len(lines) == 2 and "K " in lines[0]

    # The CLI, offline: a hub name it cannot resolve is "unknown", a local config that does not fit is refused.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        sys.executable,
        str(ROOT / "jobs" / "scale_sweep.py"),
        "--config",
        str(ROOT / "configs" / "pythia_tldr.yaml"),
        "--dry-run",
        "--set",
        f"models.sizes=[{pythia_1b_dir}, EleutherAI/pythia-2.8b]",
        "--set",
        "train.device_memory_gb=2",
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(r"EleutherAI/pythia-2\.8b +unknown \(model not found\)", result.stdout)
    # bf16 + RMSprop, ZeRO-3 over 4 workers: 4.15 GiB of model states + 8.42 GiB for a micro-batch of 4 pairs
    assert "DOES NOT FIT (12.57 GiB of 2 GiB)" in result.stdout
    assert f"error: models.sizes[{pythia_1b_dir}]: needs an estimated 12.57 GiB per training worker" in result.stderr
    assert "more than train.device_memory_gb=2" in result.stderr
    # its SFT stage (AdamW, ZeRO-3 over sft.num_workers=8, micro-batches of 8 sequences): 2.74 GiB + 8.42 GiB
    assert f"error: models.sizes[{pythia_1b_dir}]: needs an estimated 11.16 GiB per SFT worker" in result.stderr


def test_the_dry_run_of_the_papers_config_fits_80_gb_gpus_with_its_micro_batches(pythia_dirs):
    """configs/pythia_tldr.yaml with local stand-ins of its sizes (config.json only, offline): the memory
    plan passes at its train.device_memory_gb, prints the activation term per size, and the figures
    the config's comments quote are the plan's."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    sizes = ", ".join(pythia_dirs.values())
    command = [
        sys.executable,
        str(ROOT / "jobs" / "scale_sweep.py"),
        "--config",
        str(ROOT / "configs" / "pythia_tldr.yaml"),
        "--dry-run",
        "--set",
        f"models.sizes=[{sizes}]",
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert "Traceback" not in result.stderr
    assert "DOES NOT FIT" not in result.stdout and "needs an estimated" not in result.stderr and "would hold" not in result.stderr
    assert (
        "activations: micro-batch of 4 pairs (8 sequences x 576 tokens), 8 passes per optimizer step, gradient checkpointing off"
        in result.stdout
    )
    yaml_text = (ROOT / "configs" / "pythia_tldr.yaml").read_text()
    for name, total in (("pythia-1b", "12.57"), ("pythia-2.8b", "26.00"), ("pythia-6.9b", "48.28")):
        row = next(line for line in result.stdout.splitlines() if line.strip().startswith(pythia_dirs[name]) and "GiB of" in line)
        assert f"fits ({total} GiB of 79 GiB)" in row
    assert "12.6 / 26.0 / 48.3 GiB (1B / 2.8B / 6.9B)" in yaml_text  # the config's comment quotes the plan
    assert "SFT stage per worker (AdamW, ZeRO-3, 8 workers, bf16; micro-batch of 8 sequences x 576 tokens, 2 passes" in result.stdout
    assert "11.2 / 22.1 / 38.7 GiB (1B / 2.8B / 6.9B)" in yaml_text
    assert "evaluation: each vLLM generation engine takes 0.9 x 1 of each GPU = 71.10 GiB" in result.stdout
    # what it still refuses offline: the stand-ins hold no weights (and this venv has no vLLM), nothing about memory
    assert result.returncode == 1 and "holds no weights" in result.stderr


def test_evaluation_processes_count_what_they_load_and_their_logits(pythia_1b_dir):
    # Pythia-1B in bf16 is ~2 GiB a copy: training and SFT fit 8 workers of 3 GiB with micro-batches of one
    # pair (sequence) under checkpointing, but a scoring task that loads policy and reference whole needs
    # twice that on one device; the training workers can score instead, and vLLM sampling over 2 GPUs
    # leaves each evaluation GPU half a model.
    base = [
        f"models.sizes=[{pythia_1b_dir}]",
        "models.dtype=bfloat16",
        "train.use_gpu=true",
        "train.precision=bf16",
        "train.batch_size=64",
        "train.num_workers=8",
        "sft.num_workers=8",
        "train.device_memory_gb=3",
        "data.max_prompt_tokens=64",
        "data.max_response_tokens=16",
        "evaluation.generation.max_new_tokens=16",
        "evaluation.scoring_batch_size=2",
        "train.micro_batch_size=1",
        "sft.micro_batch_size=1",
        "train.gradient_checkpointing=true",
        "sft.gradient_checkpointing=true",
        "evaluation.generation.batch_size=4",
    ]
    cfg = load_config(None, base)
    shape = memory_plan(cfg)[pythia_1b_dir].shape
    logits = 2 * 80 * V * (2 + 4 + 4)  # one scoring pass: 2 sequences of 64 + 16 tokens, bf16 logits + fp32 copy + temporary
    kv_cache = 4 * 80 * 2 * LAYERS * H * 2  # Hugging Face sampling: 4 prompts' keys and values at every layer, bf16
    assert scoring_task_parts(cfg, shape) == {
        "the policy and the reference whole": 2 * 2 * shape.total_params,
        "a scoring pass's logits (2 sequences)": logits,
        "sampling's KV cache (4 prompts)": kv_cache,
    }
    assert evaluation_task_bytes(cfg, shape) == 2 * 2 * shape.total_params + logits + kv_cache
    with pytest.raises(
        ConfigError, match=r"each evaluation task would hold .*the policy and the reference whole.*evaluation.scoring: training_workers"
    ):
        check_memory_plan(cfg)
    workers = base + ["evaluation.scoring=training_workers", "reference.mode=sharded"]
    cfg = load_config(None, workers)
    assert evaluation_task_bytes(cfg, shape) == 2 * shape.total_params + kv_cache  # HF sampling still loads the policy
    assert memory_plan(cfg)[pythia_1b_dir].scoring == logits // 2 * 2  # the workers' scoring pass, in the training dtype
    check_memory_plan(cfg)  # ~2.9 GiB of 3
    cfg = load_config(None, workers + ["evaluation.generation.backend=vllm", "evaluation.gpus_per_task=2"])
    weights, kv = vllm_engine_bytes(cfg, shape)
    assert weights == shape.total_params and kv == 2 * LAYERS * H * 2 * 2048 // 2  # half the model and of one 2048-token sequence
    assert evaluation_task_bytes(cfg, shape) == weights + kv
    with pytest.raises(ConfigError, match=r"the policy it samples with whole.*generation.backend: vllm"):
        check_memory_plan(load_config(None, workers + ["train.device_memory_gb=1.5"]))
    # a vLLM engine takes 0.9 of each GPU: its share of the weights and one full-length sequence must fit in it
    with pytest.raises(ConfigError, match=r"a vLLM engine's share of the policy .* exceed the"):
        check_memory_plan(
            load_config(None, workers + ["evaluation.generation.backend=vllm", "evaluation.gpus_per_task=1", "train.device_memory_gb=2.2"])
        )
