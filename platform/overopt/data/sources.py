"""The three tables of a sweep, each from the source the config names (docs/data.md).

    sft rows   {prompt, completion}          the SFT stage's demonstrations
    pair rows  {prompt, chosen, rejected}    DAA training (synthetic: sampled later, see below)
    eval rows  {prompt, reference}           held-out prompts (+ a reference response, or None)

`synthetic` is one source among the others: its demonstrations and eval prompts come from the
embedded task, and its pairs are two reference-model samples per prompt labelled by the task's
labeller (the stages sample them, since they need the reference model: ``synthetic_pair_prompts``
gives the prompts). `file` and `hf` go through ``overopt.data.tables.load_table`` (``limit``: a
seeded sample of the table); `held_out` splits evaluation prompts off the pairs (or SFT) table by a
seeded draw.

No evaluation prompt is trained on: whatever the sources, the sft and pairs tables (and the synthetic
pair prompts) lose every row whose prompt is one of ``eval_prompt_keys`` -- held-out prompts, an eval
file's prompts that a training file repeats, or random synthetic prompts that happen to coincide --
and their ``TableReport`` counts what went (``held_out_removed`` rows, ``held_out_prompts`` distinct
prompts). Every source returns a report, the synthetic task's included (format "synthetic").

Nothing here imports Ray: the stages (sweep/stages.py) call these on the driver.

Usage:
    rows, report = load_rows(cfg.data, "pairs")
    report.held_out_removed        # pairs dropped because their prompt is an evaluation prompt
"""

from __future__ import annotations

import numpy as np

from overopt.config import DataConfig, TableSource
from overopt.data.synthetic import Labeller, SyntheticTask
from overopt.data.tables import TableReport, describe_source, load_table

# Offsets keep the prompt sets of the synthetic task disjoint streams of the master seed.
DEMO_SEED, PAIR_SEED, EVAL_SEED = 1, 2, 3


def synthetic_task(data: DataConfig) -> SyntheticTask:
    return SyntheticTask(**data.synthetic.task.model_dump())


def synthetic_labeller(data: DataConfig) -> Labeller:
    return Labeller(synthetic_task(data), **data.synthetic.labeller.model_dump())


def synthetic_pair_prompts(data: DataConfig, seed: int) -> tuple[list[str], TableReport]:
    """The prompts whose sampled pairs the synthetic pairs table labels, evaluation prompts removed,
    and the report of that draw (``held_out_removed``: drawn prompts that were evaluation prompts)."""
    prompts = synthetic_task(data).prompts(data.synthetic.preference_pairs, seed=seed * 1000 + PAIR_SEED)
    report = _synthetic_report("pairs", [f"synthetic pair prompt {i + 1}" for i in range(len(prompts))])
    return _without_eval_prompts(prompts, prompts, report, eval_prompt_keys(data, seed))


def describe(source: TableSource) -> str:
    """A short human description of a table's source, for logs and the run's summary."""
    if source.source == "synthetic":
        return "the synthetic task"
    if source.source == "held_out":
        return f"{source.limit} prompts held out of the {source.held_out_from} table"
    assert source.path is not None  # TableSource requires a path for file and hf sources
    where = describe_source(source.path, "hf" if source.source == "hf" else "file", source.split, source.subset, source.revision)
    return f"{where}, format {source.format}" if source.source == "file" else f"{where} format {source.format}"


def _from_source(data: DataConfig, kind: str, source: TableSource) -> tuple[list[dict], TableReport]:
    assert source.path is not None  # TableSource requires a path for file and hf sources
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
        seed=data.seed,  # the limit's sample: data.seed, like the held-out split
        on_invalid=data.on_invalid,
    )


def load_rows(data: DataConfig, kind: str, seed: int = 0) -> tuple[list[dict], TableReport]:
    """The rows of table ``kind`` ("sft", "pairs" or "eval") and the report of their reading.

    The sft and pairs rows hold no evaluation prompt (``eval_prompt_keys``): the report says how many
    rows went (``held_out_removed``). Synthetic pairs are not rows yet (they are sampled from the
    reference model): asking for them is an error; use ``synthetic_pair_prompts``. ``seed`` is the
    experiment's master seed (the synthetic task's draws); ``data.seed`` draws splits and samples.
    """
    if kind == "eval":
        return _eval_rows(data, seed)
    source: TableSource = getattr(data, kind)
    if source.source == "synthetic":
        if kind == "pairs":
            raise ValueError("synthetic preference pairs are sampled from the reference model: use synthetic_pair_prompts")
        demos = synthetic_task(data).demonstrations(data.synthetic.demonstrations, seed=seed * 1000 + DEMO_SEED)
        rows = [{"prompt": d["prompt"], "completion": d["response"]} for d in demos]
        report = _synthetic_report(kind, [f"synthetic demonstration {i + 1}" for i in range(len(rows))])
    else:
        rows, report = _from_source(data, kind, source)
    if data.eval.source == "held_out" and data.eval.held_out_from == kind:
        # The eval prompts are split off these very rows: no second read of the table.
        assert data.eval.limit is not None  # TableSource requires a limit for held_out
        held, _ = split_held_out(rows, data.eval.limit, data.seed, kind)
        eval_keys = {_prompt_key(rows[i]["prompt"]) for i in held}
    else:
        eval_keys = eval_prompt_keys(data, seed)
    return _without_eval_prompts(rows, [r["prompt"] for r in rows], report, eval_keys)


def eval_prompt_keys(data: DataConfig, seed: int = 0) -> set[str]:
    """The evaluation prompts of ``data`` (as ``_prompt_key``s), which no training table may hold.

    held_out: the prompts split off the origin table; file/hf: the eval table's prompts (its
    ``limit`` sample); synthetic: the task's eval prompts. ``seed`` is the experiment's master seed.
    """
    rows, _ = _eval_rows(data, seed)
    return {_prompt_key(r["prompt"]) for r in rows}


def _eval_rows(data: DataConfig, seed: int) -> tuple[list[dict], TableReport]:
    source = data.eval
    if source.source == "synthetic":
        prompts = synthetic_task(data).prompts(data.synthetic.eval_prompts, seed=seed * 1000 + EVAL_SEED)
        report = _synthetic_report("eval", [f"synthetic eval prompt {i + 1}" for i in range(len(prompts))])
        return [{"prompt": p, "reference": None} for p in prompts], report
    if source.source == "held_out":
        origin = source.held_out_from
        if getattr(data, origin).source == "synthetic":
            raise ValueError(f"data.eval: held_out_from {origin!r} is synthetic; use data.eval.source: synthetic instead")
        rows, report = _from_source(data, origin, getattr(data, origin))
        assert source.limit is not None  # TableSource requires a limit for held_out
        held, _ = split_held_out(rows, source.limit, data.seed, origin)
        report.locations = [report.locations[i] for i in held]
        return [{"prompt": rows[i]["prompt"], "reference": rows[i].get("completion")} for i in held], report
    return _from_source(data, "eval", source)


def _synthetic_report(kind: str, locations: list[str]) -> TableReport:
    """The synthetic task's rows as a read report: every drawn row is valid; ``locations`` name them."""
    return TableReport("the synthetic task", kind, "synthetic", rows_read=len(locations), rows_kept=len(locations), locations=locations)


def _without_eval_prompts(rows: list, prompts: list, report: TableReport, eval_keys: set[str]) -> tuple[list, TableReport]:
    """``rows`` (whose prompts are ``prompts``) less those whose prompt is an evaluation prompt; the
    report's locations follow the rows, and it counts the rows removed and their distinct prompts."""
    keys = [_prompt_key(p) for p in prompts]
    kept = [i for i, key in enumerate(keys) if key not in eval_keys]
    report.held_out_removed = len(rows) - len(kept)
    report.held_out_prompts = len({key for key in keys if key in eval_keys})
    if report.held_out_removed:
        rows, report.locations = [rows[i] for i in kept], [report.locations[i] for i in kept]
        report.rows_kept = len(rows)
    if not rows:
        raise ValueError(f"every row of the {report.kind} table ({report.source}) has an evaluation prompt: nothing is left to train on")
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
