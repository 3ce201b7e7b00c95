"""The experiment config: the shipped YAML validates; typos and bad types name file, line and key."""

from pathlib import Path

import pytest
import yaml

from overopt.config import SAMPLING_TEMPERATURE, ConfigError, ExperimentConfig, dotted_items, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_open_with_their_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert "python jobs/scale_sweep.py --config" in path.read_text().splitlines()[1]


def test_embedded_default_sweeps_dpo_ipo_and_slic_over_a_30x_beta_range_at_two_sizes_or_more():
    cfg = load_config(CONFIGS / "embedded.yaml")
    assert set(cfg.train.objectives) >= {"dpo", "ipo", "slic"}
    for name in ("dpo", "ipo", "slic"):
        betas = cfg.train.betas[name]
        assert len(betas) >= 4 and max(betas) / min(betas) >= 30
    assert len(cfg.models.sizes) >= 2


def test_the_control_is_the_embedded_default_without_the_labellers_bias():
    default, control = load_config(CONFIGS / "embedded.yaml"), load_config(CONFIGS / "embedded_unbiased.yaml")
    assert default.data.synthetic.labeller.length_bias > 0 and control.data.synthetic.labeller.length_bias == 0
    flat_default, flat_control = dotted_items(default.model_dump()), dotted_items(control.model_dump())
    differences = {key for key in flat_default.keys() | flat_control.keys() if flat_default.get(key) != flat_control.get(key)}
    assert differences == {"name", "data.synthetic.labeller.length_bias"}


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(CONFIGS / "embedded.yaml", ["train.lr=3e-4", "sweep.seeds=[1, 2]", "data.synthetic.labeller.length_bias=0"])
    assert cfg.train.lr == 3e-4 and cfg.sweep.seeds == [1, 2] and cfg.data.synthetic.labeller.length_bias == 0.0


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 1\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml:4: train\.learning_rate: Extra inputs"):
        load_config(path)


def test_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("evaluation:\n  generation:\n    max_new_tokens: lots\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: evaluation\.generation\.max_new_tokens"):
        load_config(path)


def test_unknown_key_inside_the_task_section(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("data:\n  synthetic:\n    task:\n      n_salient: 10\n      salinet: 3\n")
    with pytest.raises(ConfigError, match=r"task\.yaml:5: data\.synthetic\.task\.salinet"):
        load_config(path)


def test_bad_override_is_attributed_to_the_override():
    with pytest.raises(ConfigError, match=r"--set override: train\.zero_stage"):
        load_config(None, ["train.zero_stage=5"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["train.lr"])


def test_cross_section_errors():
    with pytest.raises(ConfigError, match="valid choices"):
        load_config(None, ["train.objectives=[dpo, ppo]"])
    with pytest.raises(ConfigError, match="no betas for objective 'ipo'"):
        load_config(None, ["train.objectives=[dpo, ipo]", "train.betas={dpo: [0.1]}"])
    with pytest.raises(ConfigError, match="beta must be a positive number"):
        load_config(None, ["train.betas.dpo=[0.1, 0]"])
    with pytest.raises(ConfigError, match="not in models.sizes"):
        load_config(None, ["sweep.size_objectives={medium: [dpo]}"])
    # Scoring on the training workers needs their sharded reference, and their weights at the step.
    with pytest.raises(ConfigError, match="needs reference.mode: sharded"):
        load_config(None, ["evaluation.scoring=training_workers"])
    with pytest.raises(ConfigError, match="needs evaluation.mode: inline"):
        load_config(None, ["evaluation.scoring=training_workers", "reference.mode=sharded", "evaluation.mode=async"])
    assert load_config(None, ["evaluation.scoring=training_workers", "reference.mode=sharded"]).evaluation.scoring == "training_workers"


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "embedded.yaml", ["train.lr=5e-4"])
    saved = cfg.save(tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(saved.read_text())["train"]["lr"] == 5e-4
    assert load_config(saved) == cfg


def test_batches_must_split_evenly_and_the_sampling_temperature_is_no_key():
    with pytest.raises(ConfigError, match="multiple of train.num_workers"):
        load_config(None, ["train.batch_size=33"])
    with pytest.raises(ConfigError, match="fewer than one batch"):
        load_config(None, ["data.synthetic.demonstrations=10"])
    # Samples are drawn at temperature 1, always (the KL estimate needs samples of pi itself): a config
    # that still sets it, even to 1, fails as any unknown key does.
    for value in ("0.7", "1.0"):
        with pytest.raises(ConfigError, match=r"evaluation\.generation\.temperature: Extra inputs"):
            load_config(None, [f"evaluation.generation.temperature={value}"])
    assert SAMPLING_TEMPERATURE == 1.0 and "temperature" not in load_config(None).evaluation.generation.model_dump()


def test_the_models_dtype_and_the_training_precision_must_agree():
    # The reference's cached log-probs are computed in models.dtype: trained in another precision, the
    # policy would not match them at step 0.
    for overrides in (["models.dtype=bfloat16"], ["train.precision=bf16"], ["models.dtype=float16", "train.precision=bf16"]):
        with pytest.raises(
            ConfigError,
            match=r"models\.dtype \w+ does not match train\.precision \w+.*set models\.dtype: float32 "
            r"with train\.precision: fp32 or models\.dtype: bfloat16 with train\.precision: bf16",
        ):
            load_config(None, overrides)
    assert load_config(None).models.dtype == "float32"  # the defaults: fp32 both
    bf16 = load_config(None, ["models.dtype=bfloat16", "train.precision=bf16"])
    assert (bf16.models.dtype, bf16.train.precision) == ("bfloat16", "bf16")
