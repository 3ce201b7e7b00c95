"""The last sections of report.md, on what went into the experiment, read from its storage location
beside the rows: what the data stages read and skipped (data_summary.json), the trials that failed and
why (errors/<trial>.json), and a few judged examples per trial from its last audit file
(audit/<trial>/step_*.parquet: the policy's and the baseline's responses, the judge's raw answer).

    lines = inputs_sections(Storage("runs/embedded-<hash>"), results)   # markdown lines; report.py appends them
"""

from __future__ import annotations

import json

import pandas as pd

from overopt.analysis.formatting import clip

VERDICTS = {1.0: "win", 0.5: "tie", 0.0: "loss"}


def inputs_sections(store, results: pd.DataFrame, examples_per_trial: int = 2) -> list[str]:
    """The 'Data', 'Failed trials' and 'Judged examples' sections (each left out when its files are absent);
    ``store`` is the experiment's overopt.storage.Storage."""
    return _data_section(store) + _failed_section(store, results) + _examples_section(store, results, examples_per_trial)


def _data_section(store) -> list[str]:
    if not store.exists("data_summary.json"):
        return []
    summary = json.loads(store.read_text("data_summary.json"))
    lines = [
        "## Data",
        "",
        "What each stage read and kept per size; skipped rows are listed (data.on_invalid: skip), never dropped "
        "silently. Rows whose prompt is an evaluation prompt are removed from the SFT and pairs tables.",
        "",
    ]
    for size, stats in summary.items():
        for kind in ("sft", "pairs", "eval"):
            if kind not in stats:  # a summary from before the SFT stage recorded its table
                continue
            if stats[kind] is None:
                lines.append(f"- {size} / sft: no SFT table (the reference model {stats.get('reference')} is given, not trained here)")
                continue
            lines.append(f"- {size} / {kind}: " + _table_line(stats[kind]))
    return lines + [""]


def _table_line(stats: dict) -> str:
    """One table of a stage's stats.json: rows kept, source, the limit's sample, skipped rows, and the
    evaluation prompts removed (sft and pairs)."""
    read, tokenized = stats.get("read"), stats.get("tokenized") or {}
    source = read["source"] if read else "the synthetic task"
    line = f"{tokenized.get('rows_kept', '?')} rows from {source}"
    sampled = (read or {}).get("sampled")
    if sampled and sampled["limit"] < sampled["from_rows"]:
        line += f" (a seeded sample of {sampled['limit']} of {sampled['from_rows']} valid rows, data.seed {sampled['seed']})"
    skipped = (read or {}).get("defect_count", 0) + tokenized.get("defect_count", 0)
    line += f"; {skipped} skipped"
    first = ((read or {}).get("defects") or []) + (tokenized.get("defects") or [])
    line += f" (first: `{first[0]}`)" if first else ""
    if read and read.get("held_out_removed") is not None:
        line += f"; {read['held_out_prompts']} evaluation prompts removed ({read['held_out_removed']} rows)"
    return line


def _failed_section(store, results: pd.DataFrame) -> list[str]:
    """Listed from errors/, so a trial that failed before its first evaluation (no row) shows too."""
    failed = {path.rsplit("/", 1)[1][: -len(".json")]: json.loads(store.read_text(path)) for path in store.list("errors", ".json")}
    if not failed:
        return []
    reported = set(results["trial_name"]) if "trial_name" in results else set()
    lines = ["## Failed trials", "", "Each failed with this error (its evaluations before the failure are in the tables above).", ""]
    return (
        lines
        + [
            f"- `{name}` ({'has rows' if name in reported else 'no evaluation reported'}): {clip(error.get('message', ''), 300)}"
            for name, error in sorted(failed.items())
        ]
        + [""]
    )


def _examples_section(store, results: pd.DataFrame, examples_per_trial: int) -> list[str]:
    """Per trial, from its last audit file: its first win and then other outcomes, up to ``examples_per_trial``."""
    trials = list(dict.fromkeys(results["trial_name"])) if "trial_name" in results else []
    examples = []
    for trial in trials:
        files = store.list(f"audit/{trial}", ".parquet")
        if not files:
            continue
        audit = store.read_parquet(files[-1]).to_pandas()
        picked = pd.concat([audit[audit["outcome"] == 1.0].head(1), audit[audit["outcome"] != 1.0].head(examples_per_trial - 1)]).head(
            examples_per_trial
        )
        for row in picked.itertuples(index=False):
            verdict = VERDICTS.get(row.outcome, "invalid")
            raw = str(row.raw_judgement).strip().replace("\n", " ")
            examples.append(
                f"- `{trial}` step {row.step}, prompt {row.index}: **{verdict}**. Policy: `{clip(row.response)}` / "
                f"baseline: `{clip(row.reference_response)}`" + (f" / judge: _{clip(raw, 160)}_" if raw else "")
            )
    if not examples:
        return []
    lines = ["## Judged examples", "", "From each trial's last evaluation (`audit/<trial>/step_*.parquet` holds every judgement).", ""]
    return lines + examples + [""]
