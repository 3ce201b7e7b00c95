"""Paths in a config mean what they say: overopt.paths.resolve_paths makes relative model, data and
storage paths absolute against the directory a command runs in, and leaves hub names and URIs alone.

    .venv/bin/python -m pytest tests/unit/test_paths.py
"""

import os
from pathlib import Path

import pytest

from overopt.config import ConfigError, load_config
from overopt.paths import RAY_JOB_ENV_VAR, resolve_model_name, resolve_paths

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def local_example(base: Path) -> Path:
    """The files configs/local_tldr.yaml names, as empty stand-ins under ``base``."""
    example = base / "runs" / "local-example"
    (example / "model").mkdir(parents=True)
    (example / "tldr_sft").mkdir()
    for name in ("tldr_sft/train.jsonl", "tldr_sft/validation.jsonl", "comparisons.jsonl"):
        (example / name).write_text("{}\n")
    return example


def test_the_local_example_config_resolves_against_the_base(tmp_path):
    example = local_example(tmp_path)
    (tmp_path / "local-judge").mkdir()  # a directory named like the HTTP judge's model must not capture it
    cfg = resolve_paths(load_config(CONFIGS / "local_tldr.yaml"), base=tmp_path)
    assert cfg.models.sizes == [str(example / "model")]
    assert cfg.data.sft.path == str(example / "tldr_sft" / "train.jsonl")
    assert cfg.data.pairs.path == str(example / "comparisons.jsonl")
    assert cfg.data.eval.path == str(example / "tldr_sft" / "validation.jsonl")
    assert cfg.storage == str(tmp_path / "runs")
    assert cfg.models.tokenizer is None  # the model's own
    assert cfg.evaluation.judge.model == "local-judge"  # the name the endpoint serves, not a path
    assert cfg.evaluation.judge.base_url == "http://127.0.0.1:8765/v1"
    # Everything else is as loaded.
    assert cfg.model_dump(exclude={"models", "data", "storage"}) == load_config(CONFIGS / "local_tldr.yaml").model_dump(
        exclude={"models", "data", "storage"}
    )


def test_the_default_base_is_the_current_directory(tmp_path, monkeypatch):
    example = local_example(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(load_config(CONFIGS / "local_tldr.yaml"))
    assert cfg.models.sizes == [os.path.join(os.getcwd(), "runs", "local-example", "model")]
    assert Path(cfg.models.sizes[0]).samefile(example / "model")


def test_overrides_resolve_like_the_file(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "tokenizer").mkdir()
    cfg = load_config(
        CONFIGS / "local_tldr.yaml",
        ["models.sizes=[other]", "models.tokenizer=tokenizer", "data.pairs.path=more/*.jsonl", "storage=out/runs"],
    )
    cfg = resolve_paths(cfg, base=tmp_path)
    assert cfg.models.sizes == [str(tmp_path / "other")] and cfg.models.tokenizer == str(tmp_path / "tokenizer")
    assert cfg.data.pairs.path == str(tmp_path / "more" / "*.jsonl")  # a file table is local: a glob, even one matching nothing yet
    assert cfg.storage == str(tmp_path / "out" / "runs")


def test_hub_names_builtin_sizes_and_uris_stay_as_written(tmp_path):
    (tmp_path / "small").mkdir()  # a directory named like a built-in size does not replace it
    cfg = load_config(
        overrides=[
            "models.sizes=[small, EleutherAI/pythia-70m, s3://bucket/models/sft]",
            "models.tokenizer=EleutherAI/pythia-70m",
            "data.sft.source=hf",
            "data.sft.path=CarperAI/openai_summarize_tldr",
            "data.pairs.source=file",
            "data.pairs.path=gs://bucket/comparisons.jsonl",
            "data.eval.source=held_out",
            "data.eval.limit=8",
            "evaluation.judge.type=reward_model",
            "evaluation.judge.model=OpenAssistant/reward-model-deberta-v3-large-v2",
            "storage=s3://bucket/overopt?region=eu-west-1",
        ]
    )
    assert resolve_paths(cfg, base=tmp_path) == cfg
    assert resolve_paths(cfg.model_copy(update={"storage": "file:///data/runs"}), base=tmp_path).storage == "file:///data/runs"


def test_paths_written_as_paths_resolve_even_before_they_exist(tmp_path):
    cfg = load_config(
        overrides=[
            "models.sizes=[./runs/m, ../models/m]",
            "models.tokenizer=null",
            "data.sft.source=hf",
            "data.sft.path=./saved/tldr",
            "data.pairs.source=file",
            "data.pairs.path=p.jsonl",
            "data.eval.source=held_out",
            "data.eval.limit=8",
            "evaluation.judge.type=reward_model",
            "evaluation.judge.model=./rm",
        ]
    )
    cfg = resolve_paths(cfg, base=tmp_path / "work")
    assert cfg.models.sizes == [str(tmp_path / "work" / "runs" / "m"), str(tmp_path / "models" / "m")]
    assert cfg.data.sft.path == str(tmp_path / "work" / "saved" / "tldr")
    assert cfg.evaluation.judge.model == str(tmp_path / "work" / "rm")


def test_an_existing_hf_directory_and_a_vllm_judge_model_resolve(tmp_path):
    (tmp_path / "data" / "tldr").mkdir(parents=True)
    (tmp_path / "judges" / "qwen").mkdir(parents=True)
    cfg = load_config(
        CONFIGS / "local_tldr.yaml",
        [
            "data.eval.source=hf",
            "data.eval.path=data/tldr",
            "evaluation.judge.transport=vllm",
            "evaluation.judge.base_url=null",
            "evaluation.judge.api_key_env=null",
            "evaluation.judge.model=judges/qwen",
        ],
    )
    cfg = resolve_paths(cfg, base=tmp_path)
    assert cfg.data.eval.path == str(tmp_path / "data" / "tldr")
    assert cfg.evaluation.judge.model == str(tmp_path / "judges" / "qwen")  # vLLM loads it in this cluster


def test_absolute_paths_are_unchanged_and_resolving_twice_changes_nothing(tmp_path, monkeypatch):
    local_example(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(CONFIGS / "local_tldr.yaml", ["models.tokenizer=~/tokenizers/t", "storage=/srv//overopt/runs"])
    once = resolve_paths(cfg, base=tmp_path)
    assert once.models.tokenizer == str(tmp_path / "home" / "tokenizers" / "t")  # ~ expanded
    assert once.storage == "/srv//overopt/runs"  # absolute: exactly as written
    assert resolve_paths(once, base=tmp_path / "elsewhere") == once
    assert resolve_paths(once, base=tmp_path) == once


def test_sizes_keyed_sections_follow_their_resolved_size(tmp_path):
    (tmp_path / "models" / "a").mkdir(parents=True)
    (tmp_path / "sft" / "a").mkdir(parents=True)
    cfg = load_config(
        overrides=[
            "models.sizes=[tiny, models/a]",
            "sft.checkpoints={models/a: sft/a}",
            "sft.steps_by_size={tiny: 10, models/a: 20}",
            "sweep.size_objectives={models/a: [dpo]}",
        ]
    )
    cfg = resolve_paths(cfg, base=tmp_path)
    size = str(tmp_path / "models" / "a")
    assert cfg.models.sizes == ["tiny", size]
    assert cfg.sft.checkpoints == {size: str(tmp_path / "sft" / "a")}
    assert cfg.sft.steps_by_size == {"tiny": 10, size: 20}
    assert cfg.sweep.size_objectives == {size: ["dpo"]}
    # jobs/screen.py --size takes the size as the config wrote it.
    assert resolve_model_name("models/a", base=tmp_path) == size and resolve_model_name("tiny", base=tmp_path) == "tiny"


def test_two_spellings_of_one_directory_are_one_size(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match=r"models\.sizes: .*lists a size twice"):
        resolve_paths(load_config(overrides=["models.sizes=[m, ./m]"]), base=tmp_path)


def test_a_relative_storage_inside_a_ray_job_is_left_for_open_storage_to_refuse(tmp_path, monkeypatch):
    from overopt.sweep.run import open_storage

    local_example(tmp_path)
    monkeypatch.setenv(RAY_JOB_ENV_VAR, "{}")
    cfg = resolve_paths(load_config(CONFIGS / "local_tldr.yaml"), base=tmp_path)
    assert cfg.storage == "runs"
    assert cfg.models.sizes == [str(tmp_path / "runs" / "local-example" / "model")]  # inputs: inside the job's working directory
    with pytest.raises(ValueError, match="storage 'runs' is a relative path, and this is a Ray job"):
        open_storage(cfg)
    assert resolve_paths(cfg.model_copy(update={"storage": "~/runs"}), base=tmp_path).storage == os.path.expanduser("~/runs")


def test_stage_keys_fingerprint_the_resolved_files(tmp_path):
    from overopt.sweep.stage_keys import fingerprint, source_key

    example = local_example(tmp_path)
    (example / "model" / "config.json").write_text("{}")
    cfg = resolve_paths(load_config(CONFIGS / "local_tldr.yaml"), base=tmp_path)
    key = source_key(cfg.data.pairs)
    assert key[1][0] == str((example / "comparisons.jsonl").resolve())  # the file itself, not just its name
    (example / "comparisons.jsonl").write_text('{"changed": 1}\n')
    assert source_key(cfg.data.pairs) != key
    assert fingerprint(cfg.models.sizes[0])[1][0] == "config.json"
