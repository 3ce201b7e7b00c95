"""Formats -> normalised tables: each adapter, auto-detection, column mapping, and every source kind.

Fixtures are small files in the real formats, written into tmp_path; nothing touches the network.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from overopt.data.formats import FORMAT_TABLES, detect_format
from overopt.data.readers import DataError, read_records
from overopt.data.tables import load_table, peek_format

PAIRS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "Two plus two is", "chosen": " four.", "rejected": " five."},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep load_dataset's cache inside the test's directory (and never on the network)."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


# --- preference (TRL standard and conversational) ---------------------------------------------------


def test_trl_standard_preference(tmp_path):
    rows, report = load_table("pairs", write_jsonl(tmp_path / "p.jsonl", PAIRS), format="preference")
    assert rows == PAIRS
    assert (report.rows_read, report.rows_kept, report.defects, report.format) == (2, 2, [], "preference")
    assert report.locations == [f"{tmp_path}/p.jsonl:1", f"{tmp_path}/p.jsonl:2"]


def _msg(role, content):
    return {"role": role, "content": content}


def test_trl_conversational_preference_with_explicit_prompt(tmp_path):
    record = {
        "prompt": [_msg("system", "Be brief."), _msg("user", "Sky colour?")],
        "chosen": [_msg("assistant", "Blue.")],
        "rejected": [_msg("assistant", "Green.")],
    }
    rows, _ = load_table("pairs", write_jsonl(tmp_path / "c.jsonl", [record]))
    assert rows == [record]


def test_trl_implicit_prompt_is_the_shared_prefix_of_messages(tmp_path):
    shared = [_msg("user", "Hi"), _msg("assistant", "Hello!"), _msg("user", "Sky colour?")]
    record = {"chosen": shared + [_msg("assistant", "Blue.")], "rejected": shared + [_msg("assistant", "Green.")]}
    rows, report = load_table("pairs", write_jsonl(tmp_path / "i.jsonl", [record]))
    assert report.format == "preference"
    assert rows == [{"prompt": shared, "chosen": [_msg("assistant", "Blue.")], "rejected": [_msg("assistant", "Green.")]}]


def test_text_prompt_beside_whole_conversations(tmp_path):
    user = _msg("user", "Sky colour?")
    record = {"prompt": "Sky colour?", "chosen": [user, _msg("assistant", "Blue.")], "rejected": [user, _msg("assistant", "Green.")]}
    path = write_jsonl(tmp_path / "h4.jsonl", [record, {**record, "prompt": "Something else"}])
    rows, report = load_table("pairs", path, on_invalid="skip")
    assert rows == [{"prompt": [user], "chosen": [_msg("assistant", "Blue.")], "rejected": [_msg("assistant", "Green.")]}]
    assert [str(d) for d in report.defects] == [
        f"{path}:2: prompt: text that is not a message of the conversations chosen and rejected share"
    ]


def test_implicit_prompt_without_a_shared_message_is_a_defect(tmp_path):
    record = {"chosen": [_msg("user", "A"), _msg("assistant", "x")], "rejected": [_msg("user", "B"), _msg("assistant", "y")]}
    path = write_jsonl(tmp_path / "i.jsonl", [record])
    with pytest.raises(DataError) as error:
        load_table("pairs", path, format="preference")
    assert str(error.value.defects[0]).startswith(f"{path}:1: prompt: missing, and chosen and rejected do not start")


def test_messages_keep_only_role_and_content(tmp_path):
    record = {
        "prompt": [{"role": "user", "content": "Hi", "name": "x"}],
        "chosen": [_msg("assistant", "a")],
        "rejected": [_msg("assistant", "b")],
    }
    rows, _ = load_table("pairs", write_jsonl(tmp_path / "m.jsonl", [record]))
    assert rows[0]["prompt"] == [_msg("user", "Hi")]


# --- sft ----------------------------------------------------------------------------------------------


def test_sft_prompt_completion_and_messages(tmp_path):
    records = [
        {"prompt": "Q: 2+2?", "completion": " 4"},
        {"messages": [_msg("system", "s"), _msg("user", "2+2?"), _msg("assistant", "4")]},
    ]
    rows, report = load_table("sft", write_jsonl(tmp_path / "s.jsonl", records), format="sft")
    assert rows == [
        {"prompt": "Q: 2+2?", "completion": " 4"},
        {"prompt": [_msg("system", "s"), _msg("user", "2+2?")], "completion": [_msg("assistant", "4")]},
    ]
    assert report.rows_kept == 2


def test_sft_conversational_prompt_completion(tmp_path):
    record = {"prompt": [_msg("user", "2+2?")], "completion": [_msg("assistant", "4")]}
    rows, _ = load_table("sft", write_jsonl(tmp_path / "s.jsonl", [record]))
    assert rows == [record]


def test_messages_must_end_with_the_assistant(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"messages": [_msg("user", "hi"), _msg("assistant", "yo"), _msg("user", "?")]}])
    with pytest.raises(DataError) as error:
        load_table("sft", path)
    assert str(error.value.defects[0]).startswith(f"{path}:1: messages: the last message is from 'user'")


# --- TL;DR ----------------------------------------------------------------------------------------------


def tldr_record(choice=0, title="My title", subreddit="relationships", post="A long post."):
    return {
        "info": {"id": "t3_x", "post": post, "title": title, "subreddit": subreddit},
        "summaries": [{"text": " first summary", "policy": "ref"}, {"text": "second summary\n", "policy": "sup"}],
        "choice": choice,
        "worker": "w1",
        "batch": "batch3",
    }


def test_tldr_comparisons(tmp_path):
    path = write_jsonl(tmp_path / "cmp.jsonl", [tldr_record(0), tldr_record(1, title=None), tldr_record(0, subreddit=None, title="")])
    rows, report = load_table("pairs", path)
    assert report.format == "tldr"
    assert rows[0] == {
        "prompt": "SUBREDDIT: r/relationships\n\nTITLE: My title\n\nPOST: A long post.\n\nTL;DR:",
        "chosen": " first summary",
        "rejected": " second summary",
    }
    # choice 1 picks the second summary; a missing (None) title drops its line
    assert rows[1] == {
        "prompt": "SUBREDDIT: r/relationships\n\nPOST: A long post.\n\nTL;DR:",
        "chosen": " second summary",
        "rejected": " first summary",
    }
    assert rows[2]["prompt"] == "POST: A long post.\n\nTL;DR:"


def test_tldr_title_key_absent(tmp_path):
    record = tldr_record()
    del record["info"]["title"]
    rows, _ = load_table("pairs", write_jsonl(tmp_path / "cmp.jsonl", [record]), format="tldr")
    assert rows[0]["prompt"] == "SUBREDDIT: r/relationships\n\nPOST: A long post.\n\nTL;DR:"


def test_tldr_cnn_dailymail_rows_are_defects(tmp_path):
    record = tldr_record()
    record["info"] = {"id": "x", "article": "News text.", "title": "T", "site": "cnn", "post": None}
    path = write_jsonl(tmp_path / "cmp.jsonl", [tldr_record(), record])
    rows, report = load_table("pairs", path, on_invalid="skip")
    assert len(rows) == 1
    assert str(report.defects[0]) == f"{path}:2: info.post: missing: a CNN/DailyMail article row, not a Reddit post"


def test_tldr_sft_rows(tmp_path):
    record = {"id": "x", "subreddit": "AskReddit", "title": "Why?", "post": "Because.", "summary": "short answer"}
    path = write_jsonl(tmp_path / "sft.jsonl", [record])
    rows, report = load_table("sft", path)
    assert report.format == "tldr-sft"
    assert rows == [{"prompt": "SUBREDDIT: r/AskReddit\n\nTITLE: Why?\n\nPOST: Because.\n\nTL;DR:", "completion": " short answer"}]
    eval_rows, _ = load_table("eval", path)
    assert eval_rows == [{"prompt": rows[0]["prompt"], "reference": " short answer"}]


# --- Anthropic HH --------------------------------------------------------------------------------------


HH = {
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Sky colour?\n\nAssistant: It is blue.",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Sky colour?\n\nAssistant: Go away.",
}


def test_hh_prompt_is_the_shared_dialogue_up_to_the_last_assistant_turn(tmp_path):
    rows, report = load_table("pairs", write_jsonl(tmp_path / "hh.jsonl", [HH]))
    assert report.format == "hh"
    assert rows == [
        {
            "prompt": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Sky colour?\n\nAssistant:",
            "chosen": " It is blue.",
            "rejected": " Go away.",
        }
    ]


def test_hh_responses_that_share_their_first_words(tmp_path):
    record = {"chosen": "\n\nHuman: Q\n\nAssistant: It is blue.", "rejected": "\n\nHuman: Q\n\nAssistant: It is red."}
    rows, _ = load_table("pairs", write_jsonl(tmp_path / "hh.jsonl", [record]), format="hh")
    assert rows[0] == {"prompt": "\n\nHuman: Q\n\nAssistant:", "chosen": " It is blue.", "rejected": " It is red."}


def test_hh_dialogues_without_a_shared_prompt_are_defects(tmp_path):
    other = {"chosen": HH["chosen"], "rejected": "\n\nHuman: Something else\n\nAssistant: No."}
    path = write_jsonl(tmp_path / "hh.jsonl", [HH, other])
    rows, report = load_table("pairs", path, format="hh", on_invalid="skip")
    assert len(rows) == 1
    assert str(report.defects[0]).startswith(f"{path}:2: rejected: does not share chosen's dialogue")


# --- which formats feed which tables -------------------------------------------------------------------


def test_pair_formats_feed_sft_with_chosen_and_eval_without_reference(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    sft, _ = load_table("sft", path)
    assert sft == [{"prompt": r["prompt"], "completion": r["chosen"]} for r in PAIRS]
    evals, _ = load_table("eval", path)
    assert evals == [{"prompt": r["prompt"], "reference": None} for r in PAIRS]


def test_identical_pairs_matter_only_to_the_pairs_table(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same"}])
    assert load_table("sft", path)[0] == [{"prompt": "p", "completion": "same"}]
    with pytest.raises(DataError):
        load_table("pairs", path)


def test_demonstrations_cannot_feed_the_pairs_table(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(ValueError, match="cannot feed the pairs table"):
        load_table("pairs", path, format="sft")
    with pytest.raises(DataError, match="cannot feed the pairs table"):
        load_table("pairs", path)  # auto-detected as sft
    assert set(FORMAT_TABLES) == {"sft", "preference", "tldr", "tldr-sft", "hh"}


# --- auto-detection and column mapping ----------------------------------------------------------------


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference"),
        ({"chosen": [_msg("user", "a")], "rejected": [_msg("user", "b")]}, "preference"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "x"}, "hh"),
        ({"prompt": "a", "completion": "b"}, "sft"),
        ({"messages": []}, "sft"),
        ({"info": {}, "summaries": [], "choice": 0, "worker": "w"}, "tldr"),
        ({"subreddit": "s", "title": "t", "post": "p", "summary": "x"}, "tldr-sft"),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected


def test_detect_format_refuses_ambiguous_and_unknown_columns():
    with pytest.raises(ValueError, match="ambiguous format: .* fit preference and sft"):
        detect_format({"prompt": "a", "completion": "b", "chosen": "c", "rejected": "d"})
    with pytest.raises(ValueError, match=r"unknown format: columns \(answer, question\)"):
        detect_format({"question": "a", "answer": "b"})


def test_auto_detection_error_names_the_record(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError) as error:
        load_table("sft", path)
    assert str(error.value.defects[0]).startswith(f"{path}:1: format: unknown format")


def test_detection_uses_the_first_readable_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("not json\n" + json.dumps(PAIRS[0]) + "\n")
    assert peek_format(str(path)) == "preference"


def test_column_mapping_renames_before_adapting_and_defects_use_their_names(tmp_path):
    records = [{"question": "2+2?", "answer": " 4", "id": 1}, {"question": 7, "answer": " 5", "id": 2}, {"answer": "x"}]
    path = write_jsonl(tmp_path / "qa.jsonl", records)
    columns = {"prompt": "question", "completion": "answer"}
    rows, report = load_table("eval", path, columns=columns, on_invalid="skip")
    assert report.format == "sft"
    assert rows == [{"prompt": "2+2?", "reference": " 4"}]
    assert [str(d) for d in report.defects] == [
        f"{path}:2: question: expected text or a list of messages, got a number",
        f"{path}:3: question: missing (the column mapped to prompt)",
    ]


def test_limit_keeps_a_seeded_sample_in_file_order_not_the_first_rows(tmp_path):
    numbered = [{"prompt": f"prompt {i}", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "x", "rejected": "x"}] + numbered)
    rows, report = load_table("pairs", path, limit=10, seed=0, on_invalid="skip")
    numbers = [int(r["prompt"].split()[1]) for r in rows]
    assert len(rows) == 10 and numbers != list(range(10))  # a sample of the whole table, not its head
    assert numbers == sorted(numbers)  # in file order
    assert report.locations == [f"{path}:{n + 2}" for n in numbers]  # line n + 2: the invalid record is line 1
    assert (report.rows_read, report.rows_kept, len(report.defects)) == (41, 10, 1)  # read to the end
    assert report.sampled == {"limit": 10, "seed": 0, "from_rows": 40} and report.to_dict()["sampled"] == report.sampled
    again, _ = load_table("pairs", path, limit=10, seed=0, on_invalid="skip")
    other, _ = load_table("pairs", path, limit=10, seed=1, on_invalid="skip")
    assert again == rows and other != rows
    as_sft, _ = load_table("sft", path, limit=10, seed=0, on_invalid="skip")
    assert [r["prompt"] for r in as_sft] != [r["prompt"] for r in rows]  # each table draws its own stream
    everything, whole = load_table("pairs", path, limit=100, on_invalid="skip")
    assert everything == numbered and whole.sampled["from_rows"] == 40


# --- sources: JSONL, JSON array, Parquet, directories and globs, save_to_disk, load_dataset -------------


def test_every_source_gives_the_same_rows(tmp_path):
    import datasets

    records = [tldr_record(0), tldr_record(1, title=None)]
    jsonl = write_jsonl(tmp_path / "cmp.jsonl", records)
    (tmp_path / "arr.json").write_text(json.dumps(records, indent=2))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "cmp.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records), "test": datasets.Dataset.from_list(records[:1])}).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    (tmp_path / "hub" / "data").mkdir(parents=True)  # a dataset repository's layout, read by load_dataset
    write_jsonl(tmp_path / "hub" / "data" / "train.jsonl", records)

    expected, _ = load_table("pairs", jsonl)
    sources = {
        "json array": (str(tmp_path / "arr.json"), {}),
        "parquet": (str(tmp_path / "cmp.parquet"), {}),
        "save_to_disk Dataset": (str(tmp_path / "saved"), {}),
        "save_to_disk DatasetDict, train preferred": (str(tmp_path / "saved_dict"), {}),
        "save_to_disk as hf": (str(tmp_path / "saved_dict"), {"source": "hf", "split": "train"}),
        "load_dataset on a local dir": (str(tmp_path / "hub"), {"source": "hf", "split": "train"}),
    }
    for name, (path, kwargs) in sources.items():
        rows, report = load_table("pairs", path, format="tldr", **kwargs)
        assert rows == expected, name
    assert load_table("pairs", str(tmp_path / "cmp.parquet"))[1].locations == [
        f"{tmp_path}/cmp.parquet:row 1",
        f"{tmp_path}/cmp.parquet:row 2",
    ]
    assert load_table("pairs", str(tmp_path / "arr.json"))[1].locations[1] == f"{tmp_path}/arr.json:row 2"
    _, report = load_table("pairs", str(tmp_path / "hub"), source="hf")
    assert report.source == f"hf {tmp_path}/hub" and report.locations[0] == f"{tmp_path}/hub:row 1"


def test_dataset_splits_are_chosen_or_named(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_list(PAIRS), "test": datasets.Dataset.from_list(PAIRS[:1])})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert len(load_table("pairs", str(tmp_path / "saved"), split="test")[0]) == 1
    with pytest.raises(ValueError, match="several splits \\(validation, test\\): name one with split"):
        load_table("pairs", str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="has no split 'train'"):
        load_table("pairs", str(tmp_path / "saved"), split="train")


def test_directories_and_globs_read_their_files_in_order(tmp_path):
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "b.jsonl", PAIRS[1:])
    write_jsonl(tmp_path / "d" / "a.jsonl", PAIRS[:1])
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "d" / "c.parquet")
    (tmp_path / "d" / "README.md").write_text("ignored")
    rows, report = load_table("pairs", str(tmp_path / "d"))
    assert rows == PAIRS + PAIRS
    assert report.locations[:2] == [f"{tmp_path}/d/a.jsonl:1", f"{tmp_path}/d/b.jsonl:1"]
    assert load_table("pairs", str(tmp_path / "d" / "*.jsonl"))[0] == PAIRS


def test_json_lines_in_a_json_file_and_blank_lines(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n")
    rows, report = load_table("pairs", str(path))
    assert rows == PAIRS and report.locations == [f"{path}:1", f"{path}:3"]


def test_read_records_yields_locations_and_defects(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n[1]\n')
    records = list(read_records(str(path)))
    assert records[0] == (f"{path}:1", {"a": 1}, None)
    assert records[1][1] is None and str(records[1][2]) == f"{path}:2: record: not a JSON object but an array"


def test_report_summary_and_dict(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS + [{"prompt": "p", "chosen": "", "rejected": "x"}] * 12)
    rows, report = load_table("pairs", path, on_invalid="skip")
    assert report.summary() == (
        f"pairs table from {path} (format preference): 14 rows read, 2 pairs kept, 12 invalid (first: {path}:3: chosen: empty)"
    )
    d = report.to_dict()
    assert d["defect_count"] == 12 and len(d["defects"]) == 10 and d["rows_kept"] == 2
    json.dumps(d)  # goes into the run's summary as is
