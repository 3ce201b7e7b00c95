"""Dataset formats -> the three normalised tables of a sweep, with every invalid row reported.

    rows, report = load_table("pairs", "data/comparisons.jsonl", format="tldr")
    rows, report = load_table("sft", "trl-lib/tldr", source="hf", split="train")
    rows, report = load_table("eval", "data/qa.parquet", format="sft", columns={"prompt": "question", "completion": "answer"})
    print(report.summary())

The tables (plain dicts; docs/data.md has the full field mapping):

    sft    {"prompt", "completion"}
    pairs  {"prompt", "chosen", "rejected"}
    eval   {"prompt", "reference"}          reference None when the format has no single answer

Every value is a string, or (conversational data) a list of ``{"role", "content"}`` messages: the
prompt holds the messages before the answer, the response fields hold the answer's message(s).

Formats (``format=``):

    sft         {prompt, completion} text or message lists, or {messages} (TRL "conversational":
                the trailing assistant message(s) are the completion, the messages before them the prompt)
    preference  {prompt, chosen, rejected} text or message lists (TRL standard / conversational), or
                {chosen, rejected} message lists without a prompt (TRL "implicit prompt": the prompt is
                the messages both conversations share from the start; a text prompt beside them must
                be one of those messages)
    tldr        OpenAI summarize-from-feedback comparisons {info: {post, title, subreddit}, summaries:
                [{text}, {text}], choice}: the TL;DR prompt, " " + the chosen / rejected summary
    tldr-sft    filtered TL;DR SFT rows {subreddit, title, post, summary}: the TL;DR prompt, " " + summary
    hh          Anthropic HH {chosen, rejected} whole dialogues: the prompt is their shared text up to and
                including the last "\\n\\nAssistant:", the responses what follows it
    auto        detected from the first readable record (``detect_format``)

Which format feeds which table (``FORMAT_TABLES``): sft-like formats (sft, tldr-sft) feed sft and eval
(reference = the completion); pair-like formats (preference, tldr, hh) feed all three: sft takes the
chosen response as the completion, eval takes the prompt with no reference (None): a preferred
answer is only better than its partner, not a reference answer.

Invalid rows are ``Defect``s (``"PATH:LINE: field: problem"``). ``on_invalid="error"`` reads everything,
then raises one ``DataError`` listing them all; ``"skip"`` drops those rows and reports them in the
``TableReport``. A table with no usable row is always an error.

``limit=N`` keeps a seeded random sample of N valid rows (``sample_indices``: numpy, from ``seed`` and
the table's name), in file order, after reading the whole table: the first N rows of a file sorted by
date or topic would be a biased slice of it. ``report.sampled`` records the draw.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np

from overopt.data.readers import DataError, Defect, read_records

KINDS = ("sft", "pairs", "eval")
TABLE_FIELDS = {"sft": ("prompt", "completion"), "pairs": ("prompt", "chosen", "rejected"), "eval": ("prompt", "reference")}
ROW_NOUNS = {"sft": "demonstrations", "pairs": "pairs", "eval": "prompts"}
DEMONSTRATION_FORMATS = ("sft", "tldr-sft")  # one answer per prompt
PAIR_FORMATS = ("preference", "tldr", "hh")  # a preferred and a rejected answer per prompt
FORMAT_TABLES = {
    "sft": ("sft", "eval"),
    "tldr-sft": ("sft", "eval"),
    "preference": ("sft", "pairs", "eval"),
    "tldr": ("sft", "pairs", "eval"),
    "hh": ("sft", "pairs", "eval"),
}
ASSISTANT_TURN = "\n\nAssistant:"  # Anthropic HH marks each turn with "\n\nHuman:" / "\n\nAssistant:"
MAX_REPORTED_DEFECTS = 10  # examples kept in TableReport.to_dict (the run summary)


class InvalidRow(ValueError):
    """Raised by an adapter: ``field`` of this record has ``problem``."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass
class TableReport:
    """What reading (or tokenising) one table found: counts, every defect, kept rows' locations."""

    source: str  # "data/pairs.jsonl", "hf openai/summarize_from_feedback (subset comparisons, split train)"; tokenized: the tokenizer
    kind: str  # sft | pairs | eval
    format: str  # the format used (auto resolved), "synthetic" for the embedded task, or "tokenized" for a tokenize_table report
    rows_read: int = 0  # records seen, readable or not (not counting whole-file defects such as an empty file)
    rows_kept: int = 0
    defects: list[Defect] = dataclass_field(default_factory=list)
    token_lengths: dict[str, Any] | None = None  # tokenize_table: length percentiles, truncation counts
    locations: list[str] = dataclass_field(default_factory=list, repr=False)  # of each kept row, in order
    # limit: {"limit": N, "seed": S, "from_rows": M}, a seeded sample of N of the M valid rows (None: every valid row)
    sampled: dict[str, int] | None = None
    # sft and pairs tables (overopt.data.sources): rows dropped because their prompt is an evaluation
    # prompt, and how many distinct evaluation prompts they held (None: not filtered, e.g. the eval table)
    held_out_removed: int | None = None
    held_out_prompts: int | None = None

    def summary(self, first_defect: bool = True) -> str:
        """One line: source, rows read and kept, defects (and the first), token lengths if known."""
        kept = f"{self.rows_kept} {ROW_NOUNS.get(self.kind, 'rows')} kept"
        if self.format == "tokenized":
            line = f"{self.kind} table tokenized with {self.source}: {self.rows_read} rows, {kept}"
        else:
            line = f"{self.kind} table from {self.source} (format {self.format}): {self.rows_read} rows read, {kept}"
        if self.sampled:
            line += f" (a sample of {self.sampled['from_rows']} valid, seed {self.sampled['seed']})"
        if self.defects:
            line += f", {len(self.defects)} invalid" + (f" (first: {self.defects[0]})" if first_defect else "")
        if self.held_out_removed:
            line += f", {self.held_out_removed} removed as evaluation prompts ({self.held_out_prompts} distinct)"
        if self.token_lengths:
            line += "; " + format_token_lengths(self.token_lengths)
        return line

    def to_dict(self, max_defects: int = MAX_REPORTED_DEFECTS) -> dict[str, Any]:
        """For the run's summary: counts, the defect count and the first ``max_defects`` defects."""
        return {
            "source": self.source,
            "kind": self.kind,
            "format": self.format,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "defect_count": len(self.defects),
            "defects": [str(d) for d in self.defects[:max_defects]],
            **({"token_lengths": self.token_lengths} if self.token_lengths else {}),
            **({"sampled": self.sampled} if self.sampled else {}),
            **(
                {"held_out_removed": self.held_out_removed, "held_out_prompts": self.held_out_prompts}
                if self.held_out_removed is not None
                else {}
            ),
        }


def format_token_lengths(lengths: Mapping[str, Any]) -> str:
    """``prompt tokens p50 12 p90 15 p99 16 max 16; response tokens ...; responses truncated 3``."""
    parts = []
    for name in ("prompt", "response"):
        stats = lengths.get(name)
        if stats:
            parts.append(f"{name} tokens " + " ".join(f"{k} {stats[k]:g}" for k in ("p50", "p90", "p99", "max")))
    truncated = [
        f"{k.removeprefix('truncated_')} truncated {lengths[k]}" for k in ("truncated_prompts", "truncated_responses") if lengths.get(k)
    ]
    return "; ".join(parts + truncated)


# --- values: text or messages ---------------------------------------------------------------------------


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "text", list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _require(record: Mapping[str, Any], field: str, where: str | None = None) -> Any:
    """The value of ``field``; missing and null are defects (named ``where``, default ``field``)."""
    where = where or field
    if field not in record:
        raise InvalidRow(where, "missing")
    if record[field] is None:
        raise InvalidRow(where, "null")
    return record[field]


def check_text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidRow(field, f"expected text, got {_kind_of(value)}")
    if not value:
        raise InvalidRow(field, "empty")
    if not value.strip():
        raise InvalidRow(field, "whitespace only")
    return value


def check_messages(value: Any, field: str) -> list[dict[str, str]]:
    """A non-empty list of ``{"role": str, "content": str}`` with some non-blank content; extra keys dropped."""
    if not isinstance(value, list):
        raise InvalidRow(field, f"expected a list of messages, got {_kind_of(value)}")
    if not value:
        raise InvalidRow(field, "empty: no messages")
    messages = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise InvalidRow(where, f"expected a message {{role, content}}, got {_kind_of(message)}")
        role, content = _require(message, "role", f"{where}.role"), _require(message, "content", f"{where}.content")
        if not isinstance(role, str) or not role.strip():
            raise InvalidRow(f"{where}.role", f"expected a role name, got {_kind_of(role) if not isinstance(role, str) else 'empty text'}")
        if not isinstance(content, str):
            raise InvalidRow(f"{where}.content", f"expected text, got {_kind_of(content)}")
        messages.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in messages):
        raise InvalidRow(field, "empty: no message has any content")
    return messages


def check_value(value: Any, field: str) -> str | list[dict[str, str]]:
    """Text, or a list of messages (conversational data)."""
    if isinstance(value, list):
        return check_messages(value, field)
    if isinstance(value, str):
        return check_text(value, field)
    raise InvalidRow(field, f"expected text or a list of messages, got {_kind_of(value)}")


def is_conversation(value: Any) -> bool:
    return isinstance(value, list)


def validate_row(kind: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A normalised row of table ``kind``, checked: every field present, non-empty text or messages,
    all text or all messages, and (pairs) chosen different from rejected. Returns the cleaned row."""
    out: dict[str, Any] = {}
    for name in TABLE_FIELDS[kind]:
        if name == "reference" and row.get(name) is None:
            out[name] = None  # an eval prompt without a reference answer
            continue
        out[name] = check_value(_require(row, name), name)
    for name in TABLE_FIELDS[kind][1:]:
        if out[name] is not None and is_conversation(out[name]) != is_conversation(out["prompt"]):
            have = "a list of messages" if is_conversation(out[name]) else "text"
            want = "a list of messages" if is_conversation(out["prompt"]) else "text"
            raise InvalidRow(name, f"is {have} but prompt is {want}: a row is all text or all messages")
    if kind == "pairs" and out["chosen"] == out["rejected"]:
        raise InvalidRow("rejected", "identical to chosen: the pair carries no preference")
    return out


# --- adapters: one record of a format -> a canonical row ------------------------------------------------
# Demonstration formats give {prompt, completion}; pair formats give {prompt, chosen, rejected}.


def adapt_sft(record: Mapping[str, Any]) -> dict[str, Any]:
    if "messages" in record and "completion" not in record:
        messages = check_messages(_require(record, "messages"), "messages")
        start = len(messages)
        while start > 0 and messages[start - 1]["role"] == "assistant":
            start -= 1  # the trailing assistant turn(s) are the answer
        if start == len(messages):
            raise InvalidRow("messages", f"the last message is from {messages[-1]['role']!r}, not the assistant: no answer to learn")
        if start == 0:
            raise InvalidRow("messages", "only assistant messages: no prompt before the answer")
        return {"prompt": messages[:start], "completion": messages[start:]}
    return {"prompt": _require(record, "prompt"), "completion": _require(record, "completion")}


def adapt_preference(record: Mapping[str, Any]) -> dict[str, Any]:
    chosen, rejected = _require(record, "chosen"), _require(record, "rejected")
    conversations = is_conversation(chosen) and is_conversation(rejected)
    if "prompt" in record:
        prompt = _require(record, "prompt")
        if not (isinstance(prompt, str) and conversations):
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        # A text prompt beside whole conversations (e.g. HuggingFaceH4/ultrafeedback_binarized): the
        # conversations hold the prompt as messages; the text must be one of their shared messages.
        row = _implicit_prompt(chosen, rejected)
        if not any(m["content"] == prompt for m in row["prompt"]):
            raise InvalidRow("prompt", "text that is not a message of the conversations chosen and rejected share")
        return row
    if not conversations:
        raise InvalidRow(
            "prompt",
            "missing (without a prompt, chosen and rejected must be whole conversations; Anthropic HH text dialogues are format hh)",
        )
    return _implicit_prompt(chosen, rejected)


def _implicit_prompt(chosen: Any, rejected: Any) -> dict[str, Any]:
    # TRL's implicit prompt: both conversations start with the same messages, then the answers differ.
    chosen, rejected = check_messages(chosen, "chosen"), check_messages(rejected, "rejected")
    if chosen == rejected:
        raise InvalidRow("rejected", "identical to chosen: the pair carries no preference")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise InvalidRow("prompt", "missing, and chosen and rejected do not start with the same message to take it from")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(messages):
            raise InvalidRow(name, "no messages after the prompt it shares with the other response")
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def tldr_prompt(fields: Mapping[str, Any], prefix: str = "") -> str:
    """``SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:``, the TL;DR literature's
    prompt; a missing or empty subreddit or title drops its line (some rows have none)."""
    if fields.get("post") is None and fields.get("article") is not None:
        raise InvalidRow(f"{prefix}post", "missing: a CNN/DailyMail article row, not a Reddit post")
    post = check_text(_require(fields, "post", f"{prefix}post"), f"{prefix}post")
    lines = []
    for name, label in (("subreddit", "SUBREDDIT: r/"), ("title", "TITLE: ")):
        value = fields.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidRow(f"{prefix}{name}", f"expected text, got {_kind_of(value)}")
        if value.strip():
            lines.append(label + value)
    return "\n\n".join(lines + [f"POST: {post}", "TL;DR:"])


def tldr_response(text: str) -> str:
    """One leading space, as the TL;DR literature (and TRL's datasets) write responses after "TL;DR:"."""
    return " " + text.strip()


def adapt_tldr(record: Mapping[str, Any]) -> dict[str, Any]:
    info = _require(record, "info")
    if not isinstance(info, dict):
        raise InvalidRow("info", f"expected an object {{post, title, subreddit}}, got {_kind_of(info)}")
    prompt = tldr_prompt(info, "info.")
    summaries = _require(record, "summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        got = f"{len(summaries)} summaries" if isinstance(summaries, list) else _kind_of(summaries)
        raise InvalidRow("summaries", f"expected a list of 2 summaries, got {got}")
    texts = []
    for i, summary in enumerate(summaries):
        if not isinstance(summary, dict):
            raise InvalidRow(f"summaries[{i}]", f"expected an object {{text}}, got {_kind_of(summary)}")
        texts.append(check_text(_require(summary, "text", f"summaries[{i}].text"), f"summaries[{i}].text"))
    choice = _require(record, "choice")
    if isinstance(choice, bool) or not isinstance(choice, (int, float)) or choice not in (0, 1):
        raise InvalidRow("choice", f"must be 0 or 1, got {choice!r}")
    choice = int(choice)
    return {"prompt": prompt, "chosen": tldr_response(texts[choice]), "rejected": tldr_response(texts[1 - choice])}


def adapt_tldr_sft(record: Mapping[str, Any]) -> dict[str, Any]:
    summary = check_text(_require(record, "summary"), "summary")
    return {"prompt": tldr_prompt(record), "completion": tldr_response(summary)}


def adapt_hh(record: Mapping[str, Any]) -> dict[str, Any]:
    chosen = check_text(_require(record, "chosen"), "chosen")
    rejected = check_text(_require(record, "rejected"), "rejected")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if ASSISTANT_TURN not in text:
            raise InvalidRow(name, "no '\\n\\nAssistant:' turn: not an Anthropic HH dialogue")
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise InvalidRow("rejected", "does not share chosen's dialogue up to an '\\n\\nAssistant:' turn: no common prompt")
    end = cut + len(ASSISTANT_TURN)
    return {"prompt": chosen[:end], "chosen": chosen[end:], "rejected": rejected[end:]}


ADAPTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "sft": adapt_sft,
    "preference": adapt_preference,
    "tldr": adapt_tldr,
    "tldr-sft": adapt_tldr_sft,
    "hh": adapt_hh,
}


def detect_format(record: Mapping[str, Any]) -> str:
    """The format whose columns a record has. The rule, checked against every format at once:

        tldr        info, summaries and choice
        tldr-sft    post and summary
        preference  prompt, chosen and rejected; or chosen and rejected that are lists (implicit prompt)
        hh          chosen and rejected that are text, and no prompt
        sft         prompt and completion; or messages

    Exactly one must match: none, or several (e.g. both prompt/completion and chosen/rejected), is a
    ``ValueError`` asking for an explicit ``format`` (or a ``columns`` mapping).
    """
    keys = set(record)
    matches = []
    if {"info", "summaries", "choice"} <= keys:
        matches.append("tldr")
    if {"post", "summary"} <= keys:
        matches.append("tldr-sft")
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys or isinstance(record["chosen"], list):
            matches.append("preference")
        elif isinstance(record["chosen"], str):
            matches.append("hh")
    if {"prompt", "completion"} <= keys or "messages" in keys:
        matches.append("sft")
    if len(matches) == 1:
        return matches[0]
    columns = ", ".join(sorted(keys)) or "none"
    if matches:
        raise ValueError(f"ambiguous format: columns ({columns}) fit {' and '.join(matches)}; set format")
    raise ValueError(f"unknown format: columns ({columns}) fit none of {', '.join(ADAPTERS)}; set format, or map columns")


def check_format_feeds(kind: str, format: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown table {kind!r}: expected one of {', '.join(KINDS)}")
    if format not in ADAPTERS:
        raise ValueError(f"unknown data format {format!r}: expected auto or one of {', '.join(ADAPTERS)}")
    if kind not in FORMAT_TABLES[format]:
        raise ValueError(f"format {format!r} has one answer per prompt: it cannot feed the {kind} table (needs chosen and rejected)")


def to_table_row(kind: str, format: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """One record of ``format`` -> a validated row of table ``kind``; raises ``InvalidRow``."""
    canonical = ADAPTERS[format](record)
    if kind == "pairs":
        row = canonical
    elif kind == "sft":
        row = {"prompt": canonical["prompt"], "completion": canonical.get("completion", canonical.get("chosen"))}
    else:
        row = {"prompt": canonical["prompt"], "reference": canonical.get("completion")}
    return validate_row(kind, row)


def rename_columns(record: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """``columns`` maps our field -> the dataset's column: the record with those columns renamed."""
    theirs = set(columns.values())
    renamed = {k: v for k, v in record.items() if k not in theirs}
    for ours, their in columns.items():
        if their not in record:
            raise InvalidRow(their, f"missing (the column mapped to {ours})")
        renamed[ours] = record[their]
    return renamed


def _their_field(field: str, columns: Mapping[str, str]) -> str:
    """A defect's field in the dataset's own names: ``prompt[0].role`` -> ``question[0].role``."""
    head, rest = re.match(r"([^.\[]*)(.*)", field).groups()
    return columns.get(head, head) + rest


def describe_source(
    path: str, source: str = "file", split: str | None = None, subset: str | None = None, revision: str | None = None
) -> str:
    extras = [f"{k} {v}" for k, v in (("subset", subset), ("split", split), ("revision", revision)) if v]
    return (f"hf {path}" if source == "hf" else path) + (f" ({', '.join(extras)})" if extras else "")


def _detect_at(location: str, record: Mapping[str, Any], source: str) -> str:
    try:
        return detect_format(record)
    except ValueError as error:
        raise DataError(f"cannot tell the format of {source}", [Defect(location, "format", str(error))]) from None


def peek_format(
    path: str,
    *,
    source: str = "file",
    split: str | None = None,
    subset: str | None = None,
    revision: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> str:
    """The format ``format="auto"`` resolves to: ``detect_format`` of the first readable record."""
    seen: list[Defect] = []
    for location, record, defect in read_records(path, source, split, subset, revision, prefer_split="train"):
        if defect is not None:
            seen.append(defect)
            continue
        if columns:
            try:
                record = rename_columns(record, columns)
            except InvalidRow as error:
                seen.append(Defect(location, error.field, error.problem))
                continue
        return _detect_at(location, record, describe_source(path, source, split, subset, revision))
    raise DataError(f"no readable record in {describe_source(path, source, split, subset, revision)} to detect its format from", seen)


def load_table(
    kind: str,
    path: str,
    *,
    source: str = "file",
    format: str = "auto",
    split: str | None = None,
    subset: str | None = None,
    revision: str | None = None,
    columns: Mapping[str, str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    on_invalid: str = "error",
) -> tuple[list[dict[str, Any]], TableReport]:
    """Read table ``kind`` ("sft", "pairs" or "eval") from ``path``: ``(rows, report)``.

    Reads every row; with ``limit``, keeps a seeded sample of ``limit`` valid rows in file order
    (``sample_indices``, drawn from ``seed`` and ``kind``; all when there are no more), recorded in
    ``report.sampled``. With no ``split``, sft and pairs read "train" when a dataset has several
    splits. ``on_invalid="error"`` raises ``DataError`` listing every defect after reading (of the
    whole table, sampled or not); ``"skip"`` drops invalid rows and reports them in ``report.defects``.
    No usable row at all is a ``DataError`` either way. ``report.locations[i]`` is where ``rows[i]``
    came from (for tokenize_table's defects).
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown table {kind!r}: expected one of {', '.join(KINDS)}")
    if format != "auto":
        check_format_feeds(kind, format)
    columns = dict(columns or {})
    report = TableReport(describe_source(path, source, split, subset, revision), kind, format)
    rows: list[dict[str, Any]] = []
    records = read_records(path, source, split, subset, revision, prefer_split="train" if kind != "eval" else None)
    for location, record, defect in records:
        if defect is not None:
            report.rows_read += defect.field != "file"  # a whole-file defect is not a row
            report.defects.append(defect)
            continue
        report.rows_read += 1
        try:
            if columns:
                record = rename_columns(record, columns)
            if report.format == "auto":
                report.format = _detect_at(location, record, report.source)
                try:
                    check_format_feeds(kind, report.format)
                except ValueError as error:
                    raise DataError(f"cannot read {report.source} as the {kind} table", [Defect(location, "format", str(error))]) from None
            rows.append(to_table_row(kind, report.format, record))
        except InvalidRow as error:
            report.defects.append(Defect(location, _their_field(error.field, columns), error.problem))
            continue
        report.locations.append(location)
    if limit is not None:
        report.sampled = {"limit": limit, "seed": seed, "from_rows": len(rows)}
        chosen = sample_indices(len(rows), limit, seed, kind)
        rows, report.locations = [rows[i] for i in chosen], [report.locations[i] for i in chosen]
    report.rows_kept = len(rows)
    check_usable(
        report, on_invalid, f"in {report.source} ({report.rows_read} read)", f"invalid records in {report.source} (format {report.format})"
    )
    return rows, report


def sample_indices(n_rows: int, limit: int, seed: int, table: str) -> list[int]:
    """Indices of a seeded sample of ``limit`` of ``n_rows`` rows, ascending (file order); all when
    ``limit >= n_rows``. The draw is ``np.random.default_rng([seed, crc32("limit " + table)])``: each
    table ("sft", "pairs", "eval") its own stream of the seed, the same from run to run."""
    if limit >= n_rows:
        return list(range(n_rows))
    rng = np.random.default_rng([seed, zlib.crc32(f"limit {table}".encode())])
    return sorted(int(i) for i in rng.choice(n_rows, size=limit, replace=False))


def check_usable(report: TableReport, on_invalid: str, where: str, what_is_wrong: str) -> None:
    """No usable row is always a ``DataError``; defects are one under ``on_invalid="error"``."""
    if not report.rows_kept:
        raise DataError(f"no usable {report.kind} rows {where}", report.defects)
    if report.defects and on_invalid == "error":
        raise DataError(
            f"{len(report.defects)} {what_is_wrong}; fix them, or set data.on_invalid: skip to drop and report them", report.defects
        )
