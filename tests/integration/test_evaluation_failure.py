"""An evaluation whose generation crashes fails with its cause and returns no metrics: the scoring task
cannot load the checkpoint it must sample from (its safetensors file cut short, as a preempted upload
leaves it). The trial driver re-raises what evaluate_checkpoint raises (sweep/trial.py), and the stop
reason is failure_cause of that error, so here the error itself is checked."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from overopt.config import GenerationConfig, JudgeConfig, LoadOptions, SyntheticTaskConfig
from overopt.data.synthetic import SyntheticTask
from overopt.data.tokenizer import build_synthetic_tokenizer
from overopt.evaluate.pipeline import EvaluationSpec, evaluate_checkpoint, load_eval_set
from overopt.models import load_model
from overopt.sweep.failures import failure_cause

pytestmark = pytest.mark.integration


def test_a_generation_crash_fails_the_evaluation_with_its_cause_and_no_metrics(ray_local, tmp_path):
    task = SyntheticTask(seed=0)
    tokenizer = build_synthetic_tokenizer(task)
    healthy = tmp_path / "healthy"
    load_model("tiny", vocab_size=len(tokenizer), seed=0).save_pretrained(healthy)
    tokenizer.save_pretrained(healthy)
    broken = tmp_path / "broken"
    shutil.copytree(healthy, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    prompts = task.prompts(8, seed=3)
    pq.write_table(
        pa.table(
            {
                "index": list(range(len(prompts))),
                "prompt": prompts,
                "prompt_ids": [tokenizer(p)["input_ids"] for p in prompts],
                "reference_response": [task.ideal_response(p) for p in prompts],
                "reference_finished": [True] * len(prompts),
            }
        ),
        tmp_path / "eval.parquet",
    )
    spec = EvaluationSpec(
        reference=str(healthy),
        tokenizer=str(healthy),
        generation=GenerationConfig(max_new_tokens=6),
        judge=JudgeConfig(type="gold"),
        load_options=LoadOptions(),
        synthetic_task=SyntheticTaskConfig(seed=0),
        seed=11,
        tasks=2,
    )
    eval_set = load_eval_set(str(tmp_path / "eval.parquet"), 2)
    metrics, _ = evaluate_checkpoint(str(healthy), eval_set, spec)  # the same evaluation of an intact checkpoint runs
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(Exception) as failed:
        evaluate_checkpoint(str(broken), eval_set, spec)
    cause = failure_cause(failed.value)
    assert cause.startswith(f"ValueError: model '{broken}': its safetensors weights cannot be read"), cause
    assert "incomplete metadata" in cause  # safetensors' own words, kept
