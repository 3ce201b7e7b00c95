"""The stages' cache keys (sweep/stage_keys.py) come from what each stage declares it reads: a change to what
a stage does not read leaves its key alone, a change to what it reads (a field newly added to a
declared section included) gives another key, and a key is the same in every process. No Ray."""

import json
import os
import subprocess
import sys

import pytest

from overopt.config import ExperimentConfig, LabellerConfig, ModelsConfig, load_config
from overopt.sweep import stage_keys
from overopt.sweep.stage_keys import Read, eval_cache_key, pairs_cache_key, reference_cache_key, stage_inputs

SIZE = "tiny"


def keys(cfg: ExperimentConfig) -> dict[str, str]:
    reference = reference_cache_key(cfg, SIZE)
    return {"reference": reference, "pairs": pairs_cache_key(cfg, reference), "eval": eval_cache_key(cfg, reference)}


def changed(*overrides: str, base: tuple[str, ...] = ()) -> set[str]:
    """The stages whose key ``overrides`` change (on top of the defaults and ``base``)."""
    before, after = keys(load_config(None, list(base))), keys(load_config(None, [*base, *overrides]))
    return {stage for stage in before if after[stage] != before[stage]}


@pytest.fixture
def cfg():
    return load_config(None)


def test_what_no_stage_reads_changes_no_key():
    assert changed("train.betas={dpo: [0.5], ipo: [0.5], slic: [0.5]}") == set()
    assert changed("train.lr=1e-5", "train.epochs=1", "sweep.seeds=[3]") == set()
    assert changed("name=other", "storage=elsewhere", "evaluation.mode=async", "models.sizes=[tiny]") == set()


def test_a_field_a_stage_reads_changes_its_key_and_those_after_it():
    assert changed("data.synthetic.labeller.temperature=0.5") == {"pairs"}  # only the pairs are labelled
    assert changed("evaluation.generation.max_new_tokens=20") == {"pairs", "eval"}  # sampling, and the eval prompts' room
    assert changed("reference.mode=sharded") == {"pairs"}
    assert changed("data.synthetic.eval_prompts=100") == {"reference", "pairs", "eval"}  # every table loses them
    assert changed("sft.lr=1e-4") == {"reference", "pairs", "eval"}  # a new reference: new samples
    assert changed("models.attn_implementation=eager") == {"reference", "pairs", "eval"}
    # A model used as it is: how it is loaded is an input of the stages that load it, not of its own key.
    assert changed("models.attn_implementation=eager", base=("sft.enabled=false",)) == {"pairs", "eval"}


def test_reads_apply_only_where_the_config_makes_the_stage_read_them(cfg):
    # Pairs from a file: the labeller and the sampling settings are no input of the pairs.
    pairs_file = ("data.pairs={source: file, path: /nonexistent/pairs.jsonl}", "models.tokenizer=some/tokenizer")
    assert changed("data.synthetic.labeller.temperature=0.5", base=pairs_file) == set()
    assert changed("evaluation.generation.batch_size=8", base=pairs_file) == {"eval"}  # the baseline's samples
    assert changed("evaluation.generation.batch_size=8") == {"pairs", "eval"}
    assert "data.synthetic.labeller" in stage_inputs(cfg, stage_keys.PAIRS_INPUTS)
    assert "data.synthetic.labeller" not in stage_inputs(load_config(None, list(pairs_file)), stage_keys.PAIRS_INPUTS)
    # A size's own SFT steps: another size's override leaves its key alone.
    assert changed("sft.steps_by_size={small: 7}") == set()
    assert changed(f"sft.steps_by_size={{{SIZE}: 7}}") == {"reference", "pairs", "eval"}


def test_a_field_newly_added_to_a_declared_section_is_in_the_key(cfg):
    """No edit to stage_keys.py: the pairs read data.synthetic.labeller and the models' load options whole."""

    class LabellerWithANewField(LabellerConfig):
        new_bias: float = 0.0

    class ModelsWithANewOption(ModelsConfig):
        new_option: str = "a"

    def with_labeller(new_bias: float) -> ExperimentConfig:
        labeller = LabellerWithANewField(**cfg.data.synthetic.labeller.model_dump(), new_bias=new_bias)
        synthetic = cfg.data.synthetic.model_copy(update={"labeller": labeller})
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"synthetic": synthetic})})

    def with_models(new_option: str) -> ExperimentConfig:
        return cfg.model_copy(update={"models": ModelsWithANewOption(**cfg.models.model_dump(), new_option=new_option)})

    a, b = keys(with_labeller(0.0)), keys(with_labeller(1.0))
    assert a["pairs"] != b["pairs"] and a["reference"] == b["reference"] and a["eval"] == b["eval"]
    a, b = keys(with_models("a")), keys(with_models("b"))
    assert all(a[stage] != b[stage] for stage in a)


def test_a_part_newly_declared_is_in_the_key(cfg, monkeypatch):
    before = keys(cfg)
    monkeypatch.setattr(stage_keys, "EVAL_SET_INPUTS", (*stage_keys.EVAL_SET_INPUTS, Read("train.lr")))
    after = keys(cfg)
    assert after["eval"] != before["eval"] and after["pairs"] == before["pairs"]
    assert keys(cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.1})}))["eval"] != after["eval"]


def test_keys_are_the_same_in_another_process(cfg):
    """Sorted JSON of plain values: no dependence on dict order or Python's hash seed."""
    code = (
        "import json; from overopt.config import load_config; from overopt.sweep.stage_keys import *; "
        "cfg = load_config(None); r = reference_cache_key(cfg, 'tiny'); "
        "print(json.dumps([r, pairs_cache_key(cfg, r), eval_cache_key(cfg, r)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == list(keys(cfg).values())
