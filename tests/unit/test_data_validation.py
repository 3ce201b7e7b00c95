"""Every validation defect gives its exact ``PATH:LINE: field: problem``; the error and skip policies."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from overopt.data.readers import DataError, Defect
from overopt.data.synthetic import SyntheticTask
from overopt.data.tables import load_table
from overopt.data.tokenize import tokenize_table
from overopt.data.tokenizer import build_synthetic_tokenizer

GOOD = {"prompt": "w01 w02 <sep>", "chosen": "w01", "rejected": "w02"}


def write_lines(path, lines):
    """Each item a dict (dumped as JSON) or raw bytes/str (written as is), one per line."""
    data = b""
    for line in lines:
        data += (json.dumps(line).encode() if isinstance(line, dict) else line if isinstance(line, bytes) else line.encode()) + b"\n"
    path.write_bytes(data)
    return str(path)


def defects_of(kind, path, **kwargs):
    with pytest.raises(DataError) as error:
        load_table(kind, path, **kwargs)
    return [str(d) for d in error.value.defects]


@pytest.mark.parametrize(
    "line, defect",
    [
        ('{"prompt": "a", "chosen": "b", "rejected": }', "json: malformed JSON: Expecting value at column 44"),
        (b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}', "encoding: not UTF-8: byte 0xe9 at column 16"),
        ("[1, 2]", "record: not a JSON object but an array"),
        ('"just text"', "record: not a JSON object but a string"),
        ({"prompt": "a", "chosen": "b"}, "rejected: missing"),
        ({"prompt": None, "chosen": "b", "rejected": "c"}, "prompt: null"),
        ({"prompt": "a", "chosen": "", "rejected": "c"}, "chosen: empty"),
        ({"prompt": "a", "chosen": " \n\t", "rejected": "c"}, "chosen: whitespace only"),
        ({"prompt": 12, "chosen": "b", "rejected": "c"}, "prompt: expected text or a list of messages, got a number"),
        ({"prompt": "a", "chosen": {"text": "b"}, "rejected": "c"}, "chosen: expected text or a list of messages, got an object"),
        ({"prompt": "a", "chosen": "same", "rejected": "same"}, "rejected: identical to chosen: the pair carries no preference"),
        (
            {
                "prompt": [{"content": "hi"}],
                "chosen": [{"role": "assistant", "content": "b"}],
                "rejected": [{"role": "assistant", "content": "c"}],
            },
            "prompt[0].role: missing",
        ),
        (
            {
                "prompt": [{"role": "user"}],
                "chosen": [{"role": "assistant", "content": "b"}],
                "rejected": [{"role": "assistant", "content": "c"}],
            },
            "prompt[0].content: missing",
        ),
        (
            {
                "prompt": [{"role": "user", "content": 3}],
                "chosen": [{"role": "assistant", "content": "b"}],
                "rejected": [{"role": "assistant", "content": "c"}],
            },
            "prompt[0].content: expected text, got a number",
        ),
        (
            {"prompt": ["hi"], "chosen": [{"role": "assistant", "content": "b"}], "rejected": [{"role": "assistant", "content": "c"}]},
            "prompt[0]: expected a message {role, content}, got text",
        ),
        (
            {"prompt": [], "chosen": [{"role": "assistant", "content": "b"}], "rejected": [{"role": "assistant", "content": "c"}]},
            "prompt: empty: no messages",
        ),
        (
            {"prompt": [{"role": "user", "content": "hi"}], "chosen": "b", "rejected": [{"role": "assistant", "content": "c"}]},
            "chosen: is text but prompt is a list of messages: a row is all text or all messages",
        ),
    ],
)
def test_each_preference_defect_names_path_line_and_field(tmp_path, line, defect):
    path = write_lines(tmp_path / "pairs.jsonl", [GOOD, line])
    assert defects_of("pairs", path, format="preference") == [f"{path}:2: {defect}"]


def test_wrong_type_where_messages_go(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [{"messages": "hello"}])
    assert defects_of("sft", path, format="sft") == [f"{path}:1: messages: expected a list of messages, got text"]


@pytest.mark.parametrize(
    "change, defect",
    [
        ({"choice": 2}, "choice: must be 0 or 1, got 2"),
        ({"choice": True}, "choice: must be 0 or 1, got True"),
        ({"choice": None}, "choice: null"),
        ({"summaries": [{"text": "only one"}]}, "summaries: expected a list of 2 summaries, got 1 summaries"),
        ({"summaries": [{"text": "a"}, {"text": "  "}]}, "summaries[1].text: whitespace only"),
        ({"info": {"title": "t"}}, "info.post: missing"),
        ({"info": "a post"}, "info: expected an object {post, title, subreddit}, got text"),
        ({"info": {"post": "p", "title": 5}}, "info.title: expected text, got a number"),
    ],
)
def test_tldr_defects(tmp_path, change, defect):
    record = {"info": {"post": "p", "title": "t", "subreddit": "s"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0, **change}
    path = write_lines(tmp_path / "cmp.jsonl", [record])
    assert defects_of("pairs", path, format="tldr") == [f"{path}:1: {defect}"]


def test_empty_file_is_a_defect_at_line_0(tmp_path):
    for name in ("empty.jsonl", "blank.jsonl"):
        path = tmp_path / name
        path.write_text("" if name == "empty.jsonl" else "\n\n")
        assert defects_of("pairs", str(path)) == [f"{path}:0: file: empty: no records"]


def test_empty_parquet_and_unreadable_parquet(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), empty)
    assert defects_of("pairs", str(empty)) == [f"{empty}:0: file: empty: no records"]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    [defect] = defects_of("pairs", str(broken))
    assert defect.startswith(f"{broken}:0: file: not a readable Parquet file")


def test_parquet_defects_name_their_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "chosen": None}]), path)
    assert defects_of("pairs", str(path)) == [f"{path}:row 2: chosen: null"]


def test_malformed_json_array_names_its_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": oops}\n]')
    assert defects_of("pairs", str(path)) == [f"{path}:3: json: malformed JSON array: Expecting value at column 14"]


def test_missing_path_is_file_not_found_naming_it(tmp_path):
    for path, source in ((tmp_path / "nope.jsonl", "file"), (tmp_path / "nope_dir", "hf"), (tmp_path / "*.parquet", "file")):
        with pytest.raises(FileNotFoundError, match=str(path).replace("*", r"\*")):
            load_table("pairs", str(path), source=source)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match="expected a .jsonl, .json, .parquet file"):
        load_table("pairs", str(path))


# --- the policies ---------------------------------------------------------------------------------------


def test_error_policy_reads_everything_then_lists_every_defect(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [GOOD, "oops", {**GOOD, "prompt": ""}, GOOD, {**GOOD, "rejected": "w01"}])
    with pytest.raises(DataError) as error:
        load_table("pairs", path)
    assert [str(d) for d in error.value.defects] == [
        f"{path}:2: json: malformed JSON: Expecting value at column 1",
        f"{path}:3: prompt: empty",
        f"{path}:5: rejected: identical to chosen: the pair carries no preference",
    ]
    message = str(error.value).splitlines()
    assert message[0].startswith(f"3 invalid records in {path}") and "on_invalid: skip" in message[0]
    assert message[1:] == [f"  {d}" for d in error.value.defects]
    assert isinstance(error.value, ValueError)


def test_skip_policy_counts_and_reports(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [GOOD, "oops", {**GOOD, "prompt": ""}, GOOD])
    rows, report = load_table("pairs", path, on_invalid="skip")
    assert rows == [GOOD, GOOD]
    assert (report.rows_read, report.rows_kept, len(report.defects)) == (4, 2, 2)
    assert report.locations == [f"{path}:1", f"{path}:4"]
    assert "4 rows read, 2 pairs kept, 2 invalid" in report.summary()


def test_no_usable_rows_is_an_error_even_when_skipping(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ["oops", {**GOOD, "chosen": None}])
    with pytest.raises(DataError, match="no usable pairs rows") as error:
        load_table("pairs", path, on_invalid="skip")
    assert len(error.value.defects) == 2


def test_long_defect_lists_are_cut_in_the_message_but_kept_whole(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [GOOD] + ["oops"] * 60)
    with pytest.raises(DataError) as error:
        load_table("pairs", path)
    lines = str(error.value).splitlines()
    assert len(error.value.defects) == 60 and len(lines) == 1 + 50 + 1 and lines[-1] == "  ... and 10 more"


def test_defect_string_form():
    assert str(Defect("data/x.jsonl:7", "chosen", "empty")) == "data/x.jsonl:7: chosen: empty"


# --- defects found by tokenisation carry the row's location ---------------------------------------------


def test_prompt_that_leaves_no_room_names_its_line(tmp_path):
    tokenizer = build_synthetic_tokenizer(SyntheticTask())
    long = {"prompt": " ".join(["w03"] * 9) + " <sep>", "chosen": "w01", "rejected": "w02"}
    path = write_lines(tmp_path / "p.jsonl", [GOOD, long])
    rows, report = load_table("pairs", path)
    with pytest.raises(DataError) as error:
        tokenize_table("pairs", rows, tokenizer, max_length=11, locations=report.locations)
    # <bos> + 9 words + <sep> = 11 tokens: no room for a response within 11
    assert [str(d) for d in error.value.defects] == [f"{path}:2: prompt: 11 tokens leave no room for a response within max_length 11"]
    with pytest.raises(DataError) as error:
        tokenize_table("pairs", rows, tokenizer, max_length=12, locations=report.locations)
    assert [str(d) for d in error.value.defects] == [f"{path}:2: prompt: 11 tokens leave room for nothing but EOS within max_length 12"]
    columns, tok_report = tokenize_table("pairs", rows, tokenizer, max_length=12, locations=report.locations, on_invalid="skip")
    assert len(columns["prompt_ids"]) == 1 and tok_report.locations == [f"{path}:1"]
    # an eval prompt only needs room to generate: its reference is judged as text
    evals, eval_report = load_table("eval", path)
    assert tokenize_table("eval", evals, tokenizer, max_length=12)[1].rows_kept == 2
