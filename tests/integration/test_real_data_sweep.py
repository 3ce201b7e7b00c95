"""The real-data path end to end: jobs/scale_sweep.py on a saved GPT-NeoX, TL;DR-format files and an
OpenAI-compatible judge served on 127.0.0.1, with a planted API key that must appear in no file."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from overopt.evaluate.local_judge import JudgeServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLANTED_KEY = "sk-overopt-test-PLANTED-7d1f0c9e"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("real")
    example = work / "example"
    subprocess.run([sys.executable, str(ROOT / "jobs" / "make_local_example.py"), "--out", str(example), "--rows", "800"],
                   check=True, cwd=ROOT, capture_output=True, timeout=120)
    judge = JudgeServer().start()
    overrides = [
        f"storage={work / 'runs'}",
        f"models.sizes=[{example / 'model'}]",
        f"data.sft.path={example / 'tldr_sft' / 'train.jsonl'}",
        f"data.pairs.path={example / 'comparisons.jsonl'}", "data.pairs.limit=256",
        f"data.eval.path={example / 'tldr_sft' / 'validation.jsonl'}", "data.eval.limit=32",
        "sft.steps=80", "train.batch_size=16",
        f"evaluation.judge.base_url={judge.base_url}", "evaluation.judge.api_key_env=OVEROPT_TEST_JUDGE_KEY",
    ]
    command = [sys.executable, str(ROOT / "jobs" / "scale_sweep.py"), "--config", str(ROOT / "configs" / "local_tldr.yaml")]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "OVEROPT_TEST_JUDGE_KEY": PLANTED_KEY}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    judge.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [experiment] = (work / "runs").glob("local-tldr-*")
    return experiment, result, judge


def test_two_trials_evaluated_by_the_http_judge(sweep):
    experiment, _, judge = sweep
    results = pd.read_parquet(experiment / "results.parquet")
    assert sorted(results["beta"].unique()) == [0.1, 1.0] and results["trial_name"].nunique() == 2
    assert (results["judged"] + results["invalid_judgements"] == 32).all()
    # Two requests per prompt (both orders), every one answered: the counts in the rows are the server's.
    assert (results["judge_requests"] == 64).all() and (results["judge_failures"] == 0).all()
    assert results["judge_requests"].sum() == len([r for r in judge.requests if r["path"].endswith("/chat/completions")])
    assert all(r["authorization"] == f"Bearer {PLANTED_KEY}" for r in judge.requests)
    assert results["kl"].iloc[0] == pytest.approx(0.0, abs=1e-6)  # step 0: the policy is the reference


def test_audit_files_hold_every_judgement(sweep):
    experiment, _, _ = sweep
    results = pd.read_parquet(experiment / "results.parquet")
    for trial, rows in results.groupby("trial_name"):
        files = sorted((experiment / "audit" / trial).glob("step_*.parquet"))
        assert len(files) == len(rows)
        audit = pd.read_parquet(files[-1])
        assert len(audit) == 32
        assert {"prompt", "response", "reference_response", "raw_judgement", "outcome"} <= set(audit.columns)
        assert audit["raw_judgement"].str.contains("Preferred:").all()
        assert audit["reference_response"].str.strip().str.len().gt(0).all()  # the dataset's summaries


def test_report_shows_the_data_and_judged_examples(sweep):
    experiment, _, _ = sweep
    report = (experiment / "report.md").read_text()
    assert "## Data" in report and "comparisons.jsonl" in report and "0 skipped" in report
    assert "## Judged examples" in report and report.count("Preferred:") >= 2
    assert (experiment / "config.yaml").exists()


def test_the_api_key_is_written_nowhere(sweep):
    experiment, result, _ = sweep
    assert PLANTED_KEY not in result.stdout + result.stderr
    leaked = [path for path in experiment.parent.parent.rglob("*") if path.is_file() and PLANTED_KEY.encode() in path.read_bytes()]
    assert leaked == []
    assert "OVEROPT_TEST_JUDGE_KEY" in (experiment / "config.yaml").read_text()  # only the variable's name
