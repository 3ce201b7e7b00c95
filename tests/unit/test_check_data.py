"""jobs/check_data.py as a person runs it: exit codes, one summary line, one line per defect."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "jobs" / "check_data.py"


def check(*args, tmp_path):
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def tldr(choice, post="w01 w02"):
    return {"info": {"post": post, "title": None, "subreddit": "s"}, "summaries": [{"text": " w01"}, {"text": " w02"}], "choice": choice}


def test_valid_file_exits_0_with_one_summary_line(tmp_path):
    path = write_jsonl(tmp_path / "cmp.jsonl", [tldr(0), tldr(1)])
    result = check(path, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"OK pairs table from {path} (format tldr): 2 rows read, 2 pairs kept\n"


def test_defects_exit_1_one_per_line(tmp_path):
    path = write_jsonl(tmp_path / "cmp.jsonl", [tldr(0), "{oops", {**tldr(0), "choice": 3}, tldr(1)])
    result = check(path, "--format", "tldr", tmp_path=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:2: json: malformed JSON: Expecting property name enclosed in double quotes at column 2",
        f"{path}:3: choice: must be 0 or 1, got 3",
        f"check_data: 2 defects: pairs table from {path} (format tldr): 4 rows read, 2 pairs kept, 2 invalid",
    ]


def test_tokenizer_adds_length_percentiles_and_tokenisation_defects(tmp_path):
    from overopt.data.synthetic import SyntheticTask
    from overopt.data.tokenizer import build_synthetic_tokenizer

    build_synthetic_tokenizer(SyntheticTask()).save_pretrained(tmp_path / "tok")
    sft = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"subreddit": "s", "title": "t", "post": "w01 w02 w03", "summary": "w01 w02 w03 w04"},
            {"subreddit": "s", "title": "t", "post": "w01", "summary": "w02"},
        ],
    )
    result = check(sft, "--tokenizer", tmp_path / "tok", "--max-response-tokens", "3", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(
        f"OK sft table from {sft} (format tldr-sft): 2 rows read, 2 demonstrations kept; tokenizer {tmp_path}/tok: prompt tokens p50 "
    )
    assert line.endswith("response tokens p50 3.5 p90 4.7 p99 5 max 5; responses truncated 1")

    result = check(sft, "--tokenizer", "synthetic", "--max-length", "10", tmp_path=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].startswith(f"{sft}:1: prompt: 10 tokens leave no room for a response within max_length 10")


def test_save_to_disk_dataset_as_eval_table(tmp_path):
    import datasets

    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}])}).save_to_disk(str(tmp_path / "saved"))
    result = check(tmp_path / "saved", "--source", "hf", "--kind", "eval", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"OK eval table from hf {tmp_path}/saved (format sft): 1 rows read, 1 prompts kept\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jsonl"], "check_data: data not found: '{tmp}/missing.jsonl' does not exist"),
        (
            ["pairs.jsonl", "--kind", "pairs", "--format", "sft"],
            "check_data: format 'sft' has one answer per prompt: it cannot feed the pairs table",
        ),
        (["empty.jsonl"], "{tmp}/empty.jsonl:0: file: empty: no records"),
    ],
)
def test_unusable_sources_exit_1_with_the_reason(tmp_path, args, message):
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "completion": "b"}])
    (tmp_path / "empty.jsonl").write_text("")
    result = check(*[tmp_path / a if a.endswith(".jsonl") else a for a in args], tmp_path=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0].startswith(message.format(tmp=tmp_path))


def test_bad_arguments_exit_2(tmp_path):
    result = check("x.jsonl", "--column", "prompt", tmp_path=tmp_path)
    assert result.returncode == 2 and "OUR_FIELD=THEIR_COLUMN" in result.stderr
