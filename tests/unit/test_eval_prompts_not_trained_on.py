"""No evaluation prompt reaches a training table: held-out prompts leave the SFT table as well as the
pairs table, an eval file's prompts leave training files that repeat them, synthetic prompts that
collide with the task's eval prompts leave the demonstrations and the pair prompts; the counts removed
reach the stages' stats and the report's "Data" section. No Ray is started."""

import json
from collections import Counter

import pandas as pd

from overopt.analysis.report_inputs import inputs_sections
from overopt.config import load_config
from overopt.data import sources
from overopt.data.tables import TableReport
from overopt.storage import Storage
from overopt.sweep.stage_keys import pairs_cache_key, reference_cache_key
from overopt.sweep.stages import _stats


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _preference_rows(n_prompts):
    """TRL preference rows; every third prompt has a second pair, so prompts and rows differ in number."""
    rows = []
    for i in range(n_prompts):
        rows.append({"prompt": f"Question {i}?", "chosen": f" good answer {i}", "rejected": f" bad answer {i}"})
        if i % 3 == 0:
            rows.append({"prompt": f"Question {i}?", "chosen": f" fine answer {i}", "rejected": f" poor answer {i}"})
    return rows


def _file_config(path, eval_table, *extra):
    # One preference file feeds both training tables: sft takes each pair's chosen answer as its completion.
    return load_config(
        None,
        [
            "models.tokenizer=null",
            "models.sizes=[./m]",
            f"data.sft={{source: file, path: {path}, format: preference}}",
            f"data.pairs={{source: file, path: {path}, format: preference}}",
            f"data.eval={eval_table}",
            "evaluation.judge={type: reward_model, model: ./rm}",
            *extra,
        ],
    )


def _prompts(rows):
    return {r["prompt"] for r in rows}


def test_held_out_prompts_leave_the_sft_table_too_when_both_tables_share_a_file(tmp_path):
    records = _preference_rows(30)
    path = _write_jsonl(tmp_path / "prefs.jsonl", records)
    cfg = _file_config(path, "{source: held_out, held_out_from: pairs, limit: 8}")
    evals, _ = sources.load_rows(cfg.data, "eval")
    sft, sft_report = sources.load_rows(cfg.data, "sft")
    pairs, pairs_report = sources.load_rows(cfg.data, "pairs")
    held = _prompts(evals)
    assert len(held) == 8 and sources.eval_prompt_keys(cfg.data) == held
    assert not held & _prompts(sft) and not held & _prompts(pairs)
    rows_per_prompt = Counter(r["prompt"] for r in records)
    removed = sum(rows_per_prompt[p] for p in held)
    assert removed > 8  # some held-out prompts had two pairs: every row of theirs goes
    for rows, report in ((sft, sft_report), (pairs, pairs_report)):
        assert (report.held_out_prompts, report.held_out_removed) == (8, removed)
        assert len(rows) == report.rows_kept == len(records) - removed
        assert len(report.locations) == len(rows)
        assert {"held_out_prompts": 8, "held_out_removed": removed}.items() <= report.to_dict().items()
    assert f"{removed} removed as evaluation prompts (8 distinct)" in sft_report.summary()


def test_an_eval_file_sharing_prompts_with_the_training_file_takes_them_out_of_training(tmp_path):
    records = _preference_rows(20)
    train = _write_jsonl(tmp_path / "prefs.jsonl", records)
    shared = ["Question 1?", "Question 3?", "Question 4?"]
    eval_rows = [{"prompt": p, "completion": " reference"} for p in shared + ["Unseen question?"]]
    eval_path = _write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    cfg = _file_config(train, f"{{source: file, path: {eval_path}, format: sft}}", "evaluation.baseline=dataset_references")
    for kind in ("sft", "pairs"):
        rows, report = sources.load_rows(cfg.data, kind)
        assert not set(shared) & _prompts(rows)
        assert report.held_out_prompts == 3 and report.held_out_removed == 4  # Question 3 has two pairs
        assert report.held_out_removed == len(records) - len(rows)

    # Another eval set removes other rows: it is in the cache key of both training tables' stages.
    def training_keys(cfg):
        return reference_cache_key(cfg, cfg.models.sizes[0]), pairs_cache_key(cfg, "the reference's key")

    key = training_keys(cfg)
    for other in (
        _file_config(train, f"{{source: file, path: {train}, format: preference}}"),
        _file_config(train, f"{{source: file, path: {eval_path}, format: sft}}", "data.seed=1"),
    ):
        assert all(a != b for a, b in zip(key, training_keys(other), strict=True))


def _tiny_synthetic_config():
    # Two-word prompts over a three-word vocabulary: only four distinct prompts exist, so the task's
    # eval prompt certainly recurs among its demonstrations and pair prompts.
    task = "{n_content_words: 3, n_salient: 1, prompt_words: [2, 2], salient_per_prompt: [1, 1]}"
    return load_config(
        None,
        [
            f"data.synthetic.task={task}",
            "data.synthetic.demonstrations=80",
            "data.synthetic.preference_pairs=40",
            "data.synthetic.eval_prompts=1",
        ],
    )


def test_synthetic_demonstrations_and_pair_prompts_lose_the_synthetic_eval_prompts():
    cfg = _tiny_synthetic_config()
    evals, _ = sources.load_rows(cfg.data, "eval", seed=5)
    held = _prompts(evals)
    assert sources.eval_prompt_keys(cfg.data, seed=5) == held and len(held) == 1

    task = sources.synthetic_task(cfg.data)
    drawn = task.demonstrations(80, seed=5 * 1000 + sources.DEMO_SEED)
    sft, report = sources.load_rows(cfg.data, "sft", seed=5)
    assert not held & _prompts(sft)
    expected = [{"prompt": d["prompt"], "completion": d["response"]} for d in drawn if d["prompt"] not in held]
    assert sft == expected  # the others are untouched, in order
    assert report.held_out_removed == 80 - len(sft) > 0 and report.held_out_prompts == 1
    assert report.locations[0] == f"synthetic demonstration {next(i for i, d in enumerate(drawn) if d['prompt'] not in held) + 1}"

    prompts, prompts_report = sources.synthetic_pair_prompts(cfg.data, seed=5)
    all_prompts = task.prompts(40, seed=5 * 1000 + sources.PAIR_SEED)
    assert not held & set(prompts) and prompts == [p for p in all_prompts if p not in held]
    assert prompts_report.held_out_removed == 40 - len(prompts) > 0 and prompts_report.rows_kept == len(prompts)
    assert len(prompts_report.locations) == len(prompts)


def test_the_data_summary_and_report_state_the_removed_counts(tmp_path):
    cfg = _tiny_synthetic_config()
    sft, sft_read = sources.load_rows(cfg.data, "sft", seed=5)
    prompts, prompts_read = sources.synthetic_pair_prompts(cfg.data, seed=5)
    evals, eval_read = sources.load_rows(cfg.data, "eval", seed=5)

    def tokenized(kind, n):
        return TableReport("the synthetic tokenizer", kind, "tokenized", rows_read=n, rows_kept=n)

    stats = {
        "reference": "cache/reference/tiny-0",
        "sft": json.loads(_stats(sft_read, tokenized("sft", len(sft)), demonstrations=len(sft))),
        "pairs": json.loads(_stats(prompts_read, tokenized("pairs", len(prompts)), pairs=len(prompts))),
        "eval": json.loads(_stats(eval_read, tokenized("eval", len(evals)), prompts=len(evals))),
    }
    assert stats["sft"]["read"]["held_out_removed"] == sft_read.held_out_removed > 0
    assert "held_out_removed" not in stats["eval"]["read"]  # the eval table is what is removed, not filtered
    given = {"reference": "EleutherAI/pythia-1b", "sft": None, "pairs": stats["pairs"], "eval": stats["eval"]}
    store = Storage(str(tmp_path))
    store.write_text("data_summary.json", json.dumps({"tiny": stats, "given": given}))
    text = "\n".join(inputs_sections(store, pd.DataFrame()))
    assert (
        f"- tiny / sft: {len(sft)} rows from the synthetic task; 0 skipped; 1 evaluation prompts removed ({sft_read.held_out_removed} rows)"
        in text
    )
    assert (
        f"- tiny / pairs: {len(prompts)} rows from the synthetic task; 0 skipped; 1 evaluation prompts removed ({prompts_read.held_out_removed} rows)"
        in text
    )
    assert "- given / sft: no SFT table (the reference model EleutherAI/pythia-1b is given" in text


def test_the_report_shows_a_limit_sample(tmp_path):
    path = _write_jsonl(tmp_path / "prefs.jsonl", _preference_rows(30))
    cfg = _file_config(tmp_path / "prefs.jsonl", "{source: held_out, held_out_from: pairs, limit: 4}", "data.pairs.limit=12", "data.seed=3")
    pairs, read = sources.load_rows(cfg.data, "pairs")
    assert read.sampled == {"limit": 12, "seed": 3, "from_rows": 40}
    tokenized = TableReport("a tokenizer", "pairs", "tokenized", rows_read=len(pairs), rows_kept=len(pairs))
    store = Storage(str(tmp_path))
    store.write_text("data_summary.json", json.dumps({"tiny": {"pairs": json.loads(_stats(read, tokenized, pairs=len(pairs)))}}))
    text = "\n".join(inputs_sections(store, pd.DataFrame()))
    assert f"- tiny / pairs: {len(pairs)} rows from {path} (a seeded sample of 12 of 40 valid rows, data.seed 3); 0 skipped" in text
