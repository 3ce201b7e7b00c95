"""A policy the sweep kept (sweep/kept_models.py) as a Hugging Face model directory with a model card.

    python jobs/export.py runs/smoke-<hash> --trial alignment_trial_1a2b3_00000 --step best --out exported/smoke-dpo

The directory is what ``save_pretrained`` writes (config.json, model.safetensors in the training dtype,
the tokenizer's files), plus generation_config.json for plain sampling (do_sample, temperature 1,
top_k 0, top_p 1: the distribution every evaluation sampled and measured, sweep/trial.py) and README.md:
objective, beta, step, epoch fraction, KL, win rate with its 95 % interval, the judge and the baseline,
all read from the evaluation's row and the experiment's config.yaml.

    export_policy("runs/smoke-<hash>", "alignment_trial_1a2b3_00000", "best", "exported/")
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from overopt.storage import Storage, local_copy
from overopt.sweep.kept_models import kept_steps, models_folder, step_folder

# What plain ancestral sampling means to transformers' generate(): the distribution the KL and the win
# rate were measured on, with no truncation of the tail or penalty (evaluate/generation.py PLAIN_SAMPLING).
PLAIN_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


class ExportError(ValueError):
    """Nothing to export as asked; the message lists what there is."""


def kept_trials(experiment: Storage) -> dict[str, dict[str, Any]]:
    """Trial name -> its objective, beta, size, seed and kept steps, for every trial with a kept model."""
    found = {}
    for path in experiment.list("models", "/kept.json", recursive=True):
        trial = path.split("/")[1]
        rows = experiment.list(f"rows/{trial}", ".json")
        first = json.loads(experiment.read_text(rows[0])) if rows else {}
        found[trial] = {key: first.get(key) for key in ("objective", "beta", "size", "seed")} | {"kept": kept_steps(experiment, trial)}
    return found


def describe_kept(trials: dict[str, dict[str, Any]]) -> str:
    return (
        "\n".join(
            f"  {name}: {t['objective']} beta={t['beta']} {t['size']} seed={t['seed']}, "
            f"best step {t['kept']['best']['step']}, last step {t['kept']['last']['step']}"
            for name, t in sorted(trials.items())
        )
        or "  (none: no trial has a kept model; sweeps before models/ was written keep none)"
    )


def resolve_step(experiment: Storage, trial: str, step: str) -> int:
    """``best``, ``last`` or a step number -> a kept step of ``trial``; ExportError listing what is kept."""
    kept = kept_steps(experiment, trial)
    if not kept:
        raise ExportError(
            f"{experiment.uri()} keeps no model of trial {trial!r}; trials with kept models:\n{describe_kept(kept_trials(experiment))}"
        )
    if step in ("best", "last"):
        return int(kept[step]["step"])
    if not step.isdigit() or not experiment.exists(step_folder(trial, int(step))):
        steps = sorted({kept["best"]["step"], kept["last"]["step"]})
        raise ExportError(f"trial {trial!r} keeps steps {steps} (best {kept['best']['step']}, last {kept['last']['step']}), not {step!r}")
    return int(step)


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _judge(config: dict[str, Any]) -> str:
    judge = config.get("evaluation", {}).get("judge", {})
    kind = judge.get("type", "gold")
    if kind == "gold":
        return "gold (the synthetic task's exact reward)"
    if kind == "reward_model":
        return f"reward model {judge.get('model')}"
    return f"LLM {judge.get('model')} ({judge.get('transport')}{', ' + judge['base_url'] if judge.get('base_url') else ''})"


def model_card(experiment: Storage, trial: str, step: int, which: str, config: dict[str, Any]) -> str:
    """README.md of an exported policy, from its evaluation's row and the experiment's config."""
    row = json.loads(experiment.read_text(f"rows/{trial}/step_{step:06d}.json"))
    baseline = config.get("evaluation", {}).get("baseline", "reference samples")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [overopt, direct-alignment, " + str(row.get("objective")) + "]",
        "---",
        "",
        f"# {row.get('objective')} policy, beta {row.get('beta'):g}, step {step}",
        "",
        f"Trained by overopt's sweep `{experiment.path().rsplit('/', 1)[-1]}` (trial `{trial}`): "
        + {"best": "the trial's evaluation with the highest win rate.", "last": "the trial's last evaluation."}.get(
            which, "a kept evaluation."
        ),
        "",
        "| | |",
        "|---|---|",
        f"| objective | {row.get('objective')} |",
        f"| beta | {row.get('beta'):g} |",
        f"| size | {row.get('size')} |",
        f"| seed | {row.get('seed')} |",
        f"| step | {step} |",
        f"| epoch fraction | {_f(row.get('epoch_fraction'))} |",
        f"| KL to the reference (nats) | {_f(row.get('kl'))} +- {_f(row.get('kl_se'))} (SE) |",
        f"| sqrt(KL) = d | {_f(row.get('d'))} |",
        f"| win rate | {_f(row.get('win_rate'))} [{_f(row.get('win_rate_low'))}, {_f(row.get('win_rate_high'))}] (95 %) |",
        f"| judge | {_judge(config)} |",
        f"| win rate against | {baseline} |",
        f"| mean response length (tokens) | {_f(row.get('mean_length'), 1)} |",
        f"| training dtype | {config.get('models', {}).get('dtype')} ({config.get('train', {}).get('precision')}) |",
        "",
        "KL and win rate were measured on samples drawn with plain sampling (temperature 1, no top-k or top-p), "
        "which generation_config.json sets as this model's default.",
        "",
    ]
    return "\n".join(lines)


def export_policy(location: str, trial: str, step: str, out: str | Path) -> Path:
    """Write the kept policy of ``trial`` at ``step`` (best | last | a step number) to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    experiment = Storage(location)
    if not experiment.exists(models_folder(trial)):
        raise ExportError(
            f"{experiment.uri()} has no kept model of trial {trial!r}; trials with kept models:\n{describe_kept(kept_trials(experiment))}"
        )
    number = resolve_step(experiment, trial, step)
    kept = kept_steps(experiment, trial)
    which = next((name for name in ("best", "last") if kept[name]["step"] == number), "kept")
    config = yaml.safe_load(experiment.read_text("config.yaml")) if experiment.exists("config.yaml") else {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with local_copy(experiment.uri(step_folder(trial, number))) as directory:
        # dtype "auto": the dtype the checkpoint was written in (the training dtype), not float32.
        model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(directory)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    generation = GenerationConfig(
        **PLAIN_SAMPLING,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        max_new_tokens=config.get("evaluation", {}).get("generation", {}).get("max_new_tokens"),
    )
    generation.save_pretrained(out)
    (out / "README.md").write_text(model_card(experiment, trial, number, which, config))
    return out
