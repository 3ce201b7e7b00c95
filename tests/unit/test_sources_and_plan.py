"""Data sources by config (the synthetic task is one of them), the held-out split, and --dry-run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from overopt.config import load_config
from overopt.data import sources
from overopt.sweep.plan import check_inputs, describe_plan, plan_sweep

ROOT = Path(__file__).resolve().parents[2]


def _tldr_sft_rows(n, start=0):
    return [
        {"subreddit": "tifu", "title": f"title {i}", "post": f"post number {i} words", "summary": f"summary {i}"}
        for i in range(start, start + n)
    ]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_synthetic_is_a_source_like_the_others():
    cfg = load_config(None, ["data.synthetic.demonstrations=64", "data.synthetic.eval_prompts=8"])
    rows, report = sources.load_rows(cfg.data, "sft")
    assert len(rows) == 64 and set(rows[0]) == {"prompt", "completion"}
    assert (report.source, report.format, report.rows_kept, report.held_out_removed) == ("the synthetic task", "synthetic", 64, 0)
    assert report.locations[:2] == ["synthetic demonstration 1", "synthetic demonstration 2"]
    evals, _ = sources.load_rows(cfg.data, "eval")
    assert len(evals) == 8 and all(r["reference"] is None for r in evals)
    assert not {r["prompt"] for r in evals} & {r["prompt"] for r in rows}  # disjoint seeds
    with pytest.raises(ValueError, match="sampled from the reference model"):
        sources.load_rows(cfg.data, "pairs")


def test_held_out_prompts_are_a_seeded_split_removed_from_training(tmp_path):
    path = _write_jsonl(tmp_path / "sft.jsonl", _tldr_sft_rows(40))
    overrides = [
        "models.tokenizer=null",
        "models.sizes=[./m]",
        f"data.sft={{source: file, path: {path}, format: tldr-sft}}",
        "data.eval={source: held_out, held_out_from: sft, limit: 10}",
        "evaluation.judge={type: reward_model, model: ./rm}",
        "evaluation.baseline=dataset_references",
    ]
    cfg = load_config(None, overrides)
    held, _ = sources.load_rows(cfg.data, "eval")
    train, _ = sources.load_rows(cfg.data, "sft")
    assert len(held) == 10 and len(train) == 30
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    assert all(r["reference"] for r in held)  # SFT rows bring their summary as the reference
    again, _ = sources.load_rows(load_config(None, overrides).data, "eval")
    assert [r["prompt"] for r in again] == [r["prompt"] for r in held]  # deterministic from data.seed
    other, _ = sources.load_rows(load_config(None, overrides + ["data.seed=1"]).data, "eval")
    assert {r["prompt"] for r in other} != {r["prompt"] for r in held}


def test_config_refuses_combinations_that_cannot_work():
    from overopt.config import ConfigError

    with pytest.raises(ConfigError, match="'gold' is the synthetic task's exact reward"):
        load_config(None, ["data.eval={source: file, path: x.jsonl}", "models.tokenizer=null"])
    with pytest.raises(ConfigError, match="needs a path"):
        load_config(None, ["data.pairs={source: file}"])
    with pytest.raises(ConfigError, match="needs limit"):
        load_config(None, ["data.eval={source: held_out}"])
    with pytest.raises(ConfigError, match="dataset_references"):
        load_config(None, ["evaluation.baseline=dataset_references"])
    with pytest.raises(ConfigError, match=r"judge type 'llm' \(transport http\) needs model and base_url"):
        load_config(None, ["evaluation.judge={type: llm}"])
    with pytest.raises(ConfigError, match=r"sft\.steps_by_size names size 'smal'"):
        load_config(None, ["sft.steps_by_size={smal: 10}"])
    with pytest.raises(ConfigError, match=r"train\.objective_kwargs names objectives not in train.objectives: cdpo"):
        load_config(None, ["train.objective_kwargs={cdpo: {label_smoothing: 0.1}}"])


def test_the_plan_counts_trials_and_evaluations():
    cfg = load_config(ROOT / "configs" / "embedded.yaml")
    plan = plan_sweep(cfg)
    assert len(plan.trials) == 4 * 4 + 4  # tiny: 4 objectives (DPO, IPO, SLiC, R-DPO) x 4 betas; small: dpo x 4 betas
    assert plan.total_evaluations == sum(plan.evaluations_per_trial[t["size"]] for t in plan.trials)
    found = check_inputs(cfg)
    assert found.problems == [] and found.notes == [] and found.counts["pairs"] == 4000
    assert "expected evaluations in total" in describe_plan(cfg, plan, found.counts)


def _dry_run(*args):
    # Offline, as on this machine: the hub cannot be asked, so hub names are "not found".
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "jobs" / "scale_sweep.py"), *args, "--dry-run"]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def test_dry_run_of_the_papers_config_without_its_models_says_model_not_found():
    result = _dry_run("--config", str(ROOT / "configs" / "pythia_tldr.yaml"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for size in ("EleutherAI/pythia-1b", "EleutherAI/pythia-2.8b", "EleutherAI/pythia-6.9b"):
        assert f"model not found: '{size}'" in result.stderr
    assert "data.pairs (hf openai/summarize_from_feedback" in result.stderr
    assert "63 trials" in result.stdout  # the plan is printed all the same: 3 sizes x 3 objectives x 7 betas
    local = _dry_run("--config", str(ROOT / "configs" / "pythia_tldr.yaml"), "--set", "models.sizes=[./no/pythia-1b]")
    assert f"model not found: '{ROOT / 'no' / 'pythia-1b'}'" in local.stderr  # resolved against the directory it ran in


def test_dry_run_of_the_embedded_default_passes():
    result = _dry_run("--config", str(ROOT / "configs" / "embedded.yaml"))
    assert result.returncode == 0, result.stderr
    assert "16 trials" in result.stdout and "expected evaluations in total" in result.stdout
    assert "no engine checkpoints (an interrupted trial restarts from step 0)" in result.stdout  # off in the embedded default
    resumable = _dry_run(
        "--config", str(ROOT / "configs" / "smoke.yaml"), "--set", "checkpointing.enabled=true", "--set", "checkpointing.keep=3"
    )
    assert re.search(r"storage: checkpoints may take [\d.]+ [KMG]iB at once; engine checkpoints kept: 3 per trial", resumable.stdout), (
        resumable.stdout
    )
