"""The memory plan: parameters counted without weights, model states per training worker under each
ZeRO stage, the refusal of a config that cannot fit train.device_memory_gb, and the dry-run's table."""

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
from overopt.memory_plan import (
    GIB,
    ModelShape,
    check_memory_plan,
    estimate_worker_memory,
    evaluation_task_bytes,
    memory_plan,
    model_shape,
    policy_shape,
)
from overopt.models import count_parameters, load_model
from overopt.sweep.plan import describe_plan, plan_sweep

ROOT = Path(__file__).resolve().parents[2]

# Pythia-1B's shape (EleutherAI/pythia-1b config.json)
V, H, LAYERS, HEADS, INTER = 50304, 2048, 16, 8, 8192


def _pythia_1b_params_by_hand() -> int:
    embeddings = 2 * V * H  # embed_in and embed_out (untied)
    per_layer = (
        2 * (2 * H)  # input and post-attention LayerNorm (weight + bias)
        + H * 3 * H + 3 * H  # query_key_value
        + H * H + H  # attention output dense
        + H * INTER + INTER  # dense_h_to_4h
        + INTER * H + H  # dense_4h_to_h
    )
    return embeddings + LAYERS * per_layer + 2 * H  # + final LayerNorm


@pytest.fixture(scope="module")
def pythia_1b_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pythia-1b")
    GPTNeoXConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTER,
        rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
    ).save_pretrained(directory)  # config.json only: no weights
    return str(directory)


def test_a_builtin_size_counts_what_the_real_model_holds():
    cfg = load_config(None, ["models.sizes=[small]"])
    shape = policy_shape(cfg, "small")
    vocab = len(build_synthetic_tokenizer(sources.synthetic_task(cfg.data)))
    model = load_model("small", vocab_size=vocab)  # built for real: it is tiny
    assert shape.total_params == count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert shape.largest_layer_params == max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def test_pythia_1b_shape_is_counted_on_the_meta_device_and_matches_the_hand_estimate(pythia_1b_dir):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    shape = model_shape(pythia_1b_dir)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert grown_gib < 1.0  # its fp32 weights would take 3.8 GiB: nothing was allocated
    P, L = _pythia_1b_params_by_hand(), V * H
    assert P == 1_011_781_632  # Pythia-1B's published count
    assert shape == ModelShape(total_params=P, largest_layer_params=L)  # the largest layer: an embedding

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


def test_a_config_that_cannot_fit_is_refused_naming_the_size_and_the_field(pythia_1b_dir):
    overrides = [f"models.sizes=[{pythia_1b_dir}]"]
    gpu = ["train.use_gpu=true", "train.precision=bf16", "models.dtype=bfloat16", "train.batch_size=64"]
    check_memory_plan(load_config(None, overrides + gpu))  # no train.device_memory_gb: nothing checked
    check_memory_plan(load_config(None, overrides + gpu + ["train.device_memory_gb=80", "train.num_workers=8"]))
    cfg = load_config(None, overrides + gpu + ["train.device_memory_gb=4", "train.num_workers=2", "train.zero_stage=2"])
    with pytest.raises(ConfigError) as refused:
        check_memory_plan(cfg)
    message = str(refused.value)
    assert f"models.sizes[{pythia_1b_dir}]" in message and "train.device_memory_gb=4" in message
    assert "train.num_workers: " in message and "train.zero_stage: 3" in message
    estimate = memory_plan(cfg)[pythia_1b_dir]
    assert f"{estimate.total / GIB:.2f} GiB" in message
    # the built-in sizes too: a CPU worker first builds the whole fp32 model in its own RAM
    with pytest.raises(ConfigError, match=r"models.sizes\[tiny\].*train.device_memory_gb=0.0001"):
        check_memory_plan(load_config(None, ["train.device_memory_gb=0.0001"]))


def test_the_dry_run_prints_the_memory_table(pythia_1b_dir):
    cfg = load_config(ROOT / "configs" / "embedded.yaml", ["train.device_memory_gb=1"])
    text = describe_plan(cfg, plan_sweep(cfg), counts={})
    assert "memory per training worker (ZeRO-3, 2 workers, fp32, rmsprop, reference: cache" in text
    assert "size   params  weights" in text and "fits (0.93 MiB of 1 GiB)" in text
    lines = [line for line in text.splitlines() if line.strip().startswith(("tiny ", "small "))]
    assert len(lines) == 2 and "K " in lines[0]

    # The CLI, offline: a hub name it cannot resolve is "unknown", a local config that does not fit is refused.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        sys.executable, str(ROOT / "jobs" / "scale_sweep.py"), "--config", str(ROOT / "configs" / "pythia_tldr.yaml"), "--dry-run",
        "--set", f"models.sizes=[{pythia_1b_dir}, EleutherAI/pythia-2.8b]", "--set", "train.device_memory_gb=2",
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(r"EleutherAI/pythia-2\.8b +unknown \(model not found\)", result.stdout)
    assert "DOES NOT FIT (4.15 GiB of 2 GiB)" in result.stdout  # bf16 + RMSprop, ZeRO-3 over 4 workers
    assert f"error: models.sizes[{pythia_1b_dir}]: needs an estimated 4.15 GiB per training worker" in result.stderr
    assert "more than train.device_memory_gb=2" in result.stderr
    # its SFT stage (AdamW, ZeRO-3 over sft.num_workers=8): 20 B/param / 8 + 4 B per largest-layer param
    assert f"error: models.sizes[{pythia_1b_dir}]: needs an estimated 2.74 GiB per SFT worker" in result.stderr


def test_evaluation_that_loads_whole_models_is_refused_until_the_workers_score(pythia_1b_dir):
    # Pythia-1B in bf16 is ~2 GiB a copy: training and SFT fit 8 workers of 3 GiB, but a scoring task that loads
    # policy and reference whole needs twice that on one device; the training workers can score instead,
    # and vLLM sampling over 2 GPUs leaves each evaluation GPU half a model.
    base = [f"models.sizes=[{pythia_1b_dir}]", "models.dtype=bfloat16", "train.use_gpu=true", "train.precision=bf16",
            "train.batch_size=64", "train.num_workers=8", "sft.num_workers=8", "train.device_memory_gb=3"]
    cfg = load_config(None, base)
    shape = memory_plan(cfg)[pythia_1b_dir].shape
    assert evaluation_task_bytes(cfg, shape) == 2 * 2 * shape.total_params
    with pytest.raises(ConfigError, match=r"each evaluation task would hold .*the policy and the reference whole.*evaluation.scoring: training_workers"):
        check_memory_plan(cfg)
    workers = base + ["evaluation.scoring=training_workers", "reference.mode=sharded"]
    cfg = load_config(None, workers)
    assert evaluation_task_bytes(cfg, shape) == 2 * shape.total_params  # HF sampling still loads the policy
    check_memory_plan(cfg)  # ~1.9 GiB of 3
    cfg = load_config(None, workers + ["evaluation.generation.backend=vllm", "evaluation.gpus_per_task=2"])
    assert evaluation_task_bytes(cfg, shape) == shape.total_params  # half a bf16 model per engine GPU
    with pytest.raises(ConfigError, match=r"the policy it samples with whole.*generation.backend: vllm"):
        check_memory_plan(load_config(None, workers + ["train.device_memory_gb=1.5"]))
