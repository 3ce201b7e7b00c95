"""Paths mean what they say: a config's relative model, data, judge-model and storage paths made absolute.

    cfg = resolve_paths(load_config("configs/local_tldr.yaml"))   # against the directory the command runs in

Ray's workers run in directories of their own, where ``runs/local-example/model`` would be taken for a
hub name; jobs/scale_sweep.py, jobs/screen.py and ``run_sweep`` resolve every config before anything
reaches Ray, and the experiment's config.yaml records the resolved paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from overopt.config import ConfigError, ExperimentConfig
from overopt.models import BUILTIN_SIZES
from overopt.storage import is_uri

# Set in every process of a `ray job submit` job: its working directory is a temporary copy of the
# submitted working_dir (sweep/run.py open_storage refuses a relative storage there).
RAY_JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _absolute(path: str, base: str) -> str:
    """``path`` with ``~`` expanded, joined to ``base`` when relative; an absolute path comes back as is."""
    expanded = os.path.expanduser(path)
    return expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(base, expanded))


def _is_local(name: str, base: str) -> bool:
    """A path rather than a hub name (owner/name) or a URI: written like one (./x, ../x, /x, ~/x) or there
    under ``base``. overopt.models.is_local_path's rule, asked of ``base`` instead of this process's directory."""
    if "://" in name:  # s3://, gs://, file://, hf://: a URI names its own location
        return False
    return name.startswith((".", "/", "~")) or os.path.exists(os.path.join(base, os.path.expanduser(name)))


def resolve_model_name(name: str, base: str | Path | None = None) -> str:
    """A model size, tokenizer or checkpoint as the config names it, made absolute against ``base``
    (default: the current directory) when it is a local path; built-in sizes, hub names and URIs as given."""
    base = os.path.abspath(os.path.expanduser(str(base))) if base is not None else os.getcwd()
    return name if name in BUILTIN_SIZES or not _is_local(name, base) else _absolute(name, base)


def resolve_paths(cfg: ExperimentConfig, base: str | Path | None = None) -> ExperimentConfig:
    """A copy of ``cfg`` whose local paths are absolute, resolved against ``base`` (default: the directory
    the command runs in), so that they mean there what they say here: Ray's workers run in directories of
    their own, where ``runs/local-example/model`` would be taken for a hub name.

    Resolved: models.sizes, models.tokenizer, sft.checkpoints (values, and the sizes that key it,
    sft.steps_by_size and sweep.size_objectives) and a reward-model or vLLM judge's model when they are
    local paths (there under ``base``, or written like one: ./x, ~/x); every file table's data path; an
    hf table's path when it is a local directory; and a local ``storage``, except a relative one inside a
    `ray job submit` job, left as written for sweep/run.py open_storage to refuse (the job's directory is
    a temporary copy no other node sees). Built-in sizes, hub names and URIs (s3://, gs://, file://) stay
    as written; ``~`` is expanded; an absolute path comes back unchanged, so resolving twice changes nothing.

    The experiment's name hashes the resolved config (sweep/run.py experiment_name), so a config naming
    relative paths run from another directory is another experiment: its inputs are other files.
    """
    base = os.path.abspath(os.path.expanduser(str(base))) if base is not None else os.getcwd()
    raw = cfg.model_dump()
    models = raw["models"]
    sizes = {size: resolve_model_name(size, base) for size in models["sizes"]}
    models["sizes"] = [sizes[size] for size in models["sizes"]]
    if models["tokenizer"] not in (None, "synthetic"):  # None: each model's own; synthetic: the task's words
        models["tokenizer"] = resolve_model_name(models["tokenizer"], base)
    raw["sft"]["checkpoints"] = {sizes.get(size, size): resolve_model_name(path, base) for size, path in raw["sft"]["checkpoints"].items()}
    raw["sft"]["steps_by_size"] = {sizes.get(size, size): steps for size, steps in raw["sft"]["steps_by_size"].items()}
    raw["sweep"]["size_objectives"] = {sizes.get(size, size): names for size, names in raw["sweep"]["size_objectives"].items()}
    for kind in ("sft", "pairs", "eval"):
        table = raw["data"][kind]
        if table["path"] and not is_uri(table["path"]):
            # A file table is always local; an hf table is a local save_to_disk/data directory or a hub name.
            if table["source"] == "file" or (table["source"] == "hf" and _is_local(table["path"], base)):
                table["path"] = _absolute(table["path"], base)
    judge = raw["evaluation"]["judge"]
    # Only a model this process loads: an HTTP judge's model is the name its endpoint serves.
    if judge["model"] and (cfg.evaluation.judge.type == "reward_model" or cfg.evaluation.judge.served_by_vllm):
        judge["model"] = resolve_model_name(judge["model"], base)
    storage = raw["storage"]
    if not is_uri(storage) and (os.path.isabs(os.path.expanduser(storage)) or RAY_JOB_ENV_VAR not in os.environ):
        raw["storage"] = _absolute(storage, base)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:  # two sizes naming one directory (runs/m and ./runs/m) are one size
        problems = "\n".join(f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"with its paths resolved against {base}, the config is invalid:\n{problems}") from None
