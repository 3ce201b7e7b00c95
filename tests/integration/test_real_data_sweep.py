"""The real-data path end to end: jobs/scale_sweep.py on a saved GPT-NeoX, TL;DR-format files and an
OpenAI-compatible judge served on 127.0.0.1, with a planted API key that must appear in no file."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from overopt.evaluate.local_judge import JudgeServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLANTED_KEY = "sk-overopt-test-PLANTED-7d1f0c9e"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The local example (a saved GPT-NeoX and TL;DR-format files); its sweeps share one storage (stage caches)."""
    work = tmp_path_factory.mktemp("real")
    subprocess.run([sys.executable, str(ROOT / "jobs" / "make_local_example.py"), "--out", str(work / "example"), "--rows", "800"],
                   check=True, cwd=ROOT, capture_output=True, timeout=120)
    return work


def run_local_tldr(work: Path, base_url: str, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    example = work / "example"
    overrides = [
        f"storage={work / 'runs'}",
        f"models.sizes=[{example / 'model'}]",
        f"data.sft.path={example / 'tldr_sft' / 'train.jsonl'}",
        f"data.pairs.path={example / 'comparisons.jsonl'}", "data.pairs.limit=256",
        f"data.eval.path={example / 'tldr_sft' / 'validation.jsonl'}", "data.eval.limit=32",
        "sft.steps=80", "train.batch_size=16",
        f"evaluation.judge.base_url={base_url}", "evaluation.judge.api_key_env=OVEROPT_TEST_JUDGE_KEY",
        *extra,
    ]
    command = [sys.executable, str(ROOT / "jobs" / "scale_sweep.py"), "--config", str(ROOT / "configs" / "local_tldr.yaml")]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "OVEROPT_TEST_JUDGE_KEY": PLANTED_KEY}
    # Its own session, so that a sweep past its time is killed with the Ray instance it started, and
    # the test fails with what the sweep printed (a sweep takes ~1-2 minutes here).
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the sweep ran past {timeout:.0f} s; its output:\n{stdout[-4000:]}\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def sweep(work):
    judge = JudgeServer().start()
    result = run_local_tldr(work, judge.base_url)
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


def test_a_judge_outage_mid_sweep_fails_its_trials_visibly_and_never_becomes_a_win_rate(work, sweep):
    """The judge answers one evaluation (32 prompts x both orders), then every request gets 503: the
    evaluations that follow fail their trials with the endpoint and the cause in errors/, the results'
    stop reasons and the report; no row is written for them. The stages come from the first sweep's cache."""
    sys.path.insert(0, str(ROOT / "tests"))
    from judge_server import ScriptedJudgeServer, always

    judge = ScriptedJudgeServer(answer=always("A")).start()

    def outage_after_one_evaluation():
        while len(judge.records) < 64 and not stopped.is_set():
            time.sleep(0.05)
        judge.outage(True)

    stopped = threading.Event()
    watcher = threading.Thread(target=outage_after_one_evaluation, daemon=True)
    watcher.start()
    try:
        result = run_local_tldr(work, judge.base_url, "name=local-tldr-outage", "evaluation.judge.max_retries=1", "evaluation.judge.timeout_s=5")
    finally:
        stopped.set()
        judge.stop()
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    [experiment] = (work / "runs").glob("local-tldr-outage-*")
    results = pd.read_parquet(experiment / "results.partial.parquet")
    assert len(results) == 1 and results["win_rate"].notna().all()  # the one evaluation the judge answered
    assert (results["judge_requests"] == 64).all() and (results["judge_failures"] == 0).all()
    errors = {e["trial_name"]: e["message"] for e in (json.loads(p.read_text()) for p in (experiment / "errors").glob("*.json"))}
    assert len(errors) == 2  # both trials: the first after its step-0 row, the second at its step 0
    for message in errors.values():
        assert "JudgeUnavailable" in message and judge.base_url in message and "HTTP 503" in message
    assert results["stop_reason"].iloc[0] == f"error: {errors[results['trial_name'].iloc[0]]}"
    report = (experiment / "report.md").read_text()
    assert "## Failed trials" in report and report.count("JudgeUnavailable") >= 2
    statuses = judge.statuses()
    assert statuses[:64] == [200] * 64 and set(statuses[64:]) == {503}
