"""The three tables of a sweep, each from the source the config names (docs/data.md).

    sft rows   {prompt, completion}          the SFT stage's demonstrations
    pair rows  {prompt, chosen, rejected}    DAA training (synthetic: sampled later, see below)
    eval rows  {prompt, reference}           held-out prompts (+ a reference response, or None)

`synthetic` is one source among the others: its demonstrations and eval prompts come from the
embedded task, and its pairs are two reference-model samples per prompt labelled by the task's
labeller (the stages sample them, since they need the reference model: ``synthetic_pair_prompts``
gives the prompts). `file` and `hf` go through ``overopt.data.formats.load_table``; `held_out`
splits evaluation prompts off the pairs (or SFT) table by a seeded draw and removes them there.

Nothing here imports Ray: the stages (sweep/stages.py) call these on the driver.

Usage:
    rows, report = load_rows(cfg.data, "pairs")
"""

from __future__ import annotations

import numpy as np

from overopt.config import DataConfig, TableSource
from overopt.data.formats import TableReport, describe_source, load_table
from overopt.data.synthetic import Labeller, SyntheticTask

# Offsets keep the prompt sets of the synthetic task disjoint streams of the master seed.
DEMO_SEED, PAIR_SEED, EVAL_SEED = 1, 2, 3


def synthetic_task(data: DataConfig) -> SyntheticTask:
    return SyntheticTask(**data.synthetic.task.model_dump())


def synthetic_labeller(data: DataConfig) -> Labeller:
    return Labeller(synthetic_task(data), **data.synthetic.labeller.model_dump())


def synthetic_pair_prompts(data: DataConfig, seed: int) -> list[str]:
    return synthetic_task(data).prompts(data.synthetic.preference_pairs, seed=seed * 1000 + PAIR_SEED)


def describe(source: TableSource) -> str:
    """A short human description of a table's source, for logs and the run's summary."""
    if source.source == "synthetic":
        return "the synthetic task"
    if source.source == "held_out":
        return f"{source.limit} prompts held out of the {source.held_out_from} table"
    where = describe_source(source.path, "hf" if source.source == "hf" else "file", source.split, source.subset, source.revision)
    return f"{where}, format {source.format}" if source.source == "file" else f"{where} format {source.format}"


def _from_source(data: DataConfig, kind: str, source: TableSource) -> tuple[list[dict], TableReport | None]:
    return load_table(
        kind,
        source.path,
        source="hf" if source.source == "hf" else "file",
        format=source.format,
        split=source.split,
        subset=source.subset,
        revision=source.revision,
        columns=source.columns,
        limit=source.limit,
        on_invalid=data.on_invalid,
    )


def load_rows(data: DataConfig, kind: str, seed: int = 0) -> tuple[list[dict], TableReport | None]:
    """The rows of table ``kind`` ("sft", "pairs" or "eval"), held-out prompts already removed.

    Synthetic pairs are not rows yet (they are sampled from the reference model): asking for them
    is an error; use ``synthetic_pair_prompts``. ``seed`` is the experiment's master seed.
    """
    source: TableSource = getattr(data, kind)
    if source.source == "synthetic":
        task = synthetic_task(data)
        if kind == "sft":
            demos = task.demonstrations(data.synthetic.demonstrations, seed=seed * 1000 + DEMO_SEED)
            return [{"prompt": d["prompt"], "completion": d["response"]} for d in demos], None
        if kind == "eval":
            return [{"prompt": p, "reference": None} for p in task.prompts(data.synthetic.eval_prompts, seed=seed * 1000 + EVAL_SEED)], None
        raise ValueError("synthetic preference pairs are sampled from the reference model: use synthetic_pair_prompts")
    if source.source == "held_out":
        origin = data.eval.held_out_from
        if getattr(data, origin).source == "synthetic":
            raise ValueError(f"data.eval: held_out_from {origin!r} is synthetic; use data.eval.source: synthetic instead")
        rows, report = _from_source(data, origin, getattr(data, origin))
        held, _ = split_held_out(rows, data.eval.limit, data.seed, origin)
        report.locations = [report.locations[i] for i in held]
        return [{"prompt": rows[i]["prompt"], "reference": rows[i].get("completion")} for i in held], report
    rows, report = _from_source(data, kind, source)
    if data.eval.source == "held_out" and data.eval.held_out_from == kind:
        _, rest = split_held_out(rows, data.eval.limit, data.seed, kind)
        rows, report.locations = [rows[i] for i in rest], [report.locations[i] for i in rest]
    return rows, report


def _prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else repr(prompt)


def split_held_out(rows: list[dict], n: int, seed: int, table: str = "source") -> tuple[list[int], list[int]]:
    """(indices of ``n`` held-out rows, indices of the rest): a seeded draw of distinct prompts.

    Distinct prompts, not rows: a prompt with several pairs must not sit on both sides of the split,
    and it is held out once (its first row; SFT rows bring their completion as the reference).
    """
    keys = [_prompt_key(r["prompt"]) for r in rows]
    prompts = list(dict.fromkeys(keys))
    if n >= len(prompts):
        raise ValueError(f"data.eval.limit={n} held-out prompts would leave nothing of the {table} table ({len(prompts)} distinct prompts)")
    rng = np.random.default_rng([seed, 7])
    chosen = {prompts[i] for i in rng.choice(len(prompts), size=n, replace=False)}
    held, seen, rest = [], set(), []
    for i, key in enumerate(keys):
        if key not in chosen:
            rest.append(i)
        elif key not in seen:
            seen.add(key)
            held.append(i)
    return held, rest
