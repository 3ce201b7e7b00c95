"""Dataset formats -> the rows of the three normalised tables of a sweep; a record's defects as ``InvalidRow``.

Reading a whole table (``load_table``), its ``TableReport`` and ``limit``: data/tables.py.

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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import TypeIs

KINDS = ("sft", "pairs", "eval")
TABLE_FIELDS = {"sft": ("prompt", "completion"), "pairs": ("prompt", "chosen", "rejected"), "eval": ("prompt", "reference")}
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


class InvalidRow(ValueError):
    """Raised by an adapter: ``field`` of this record has ``problem``."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


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


def is_conversation(value: Any) -> TypeIs[list]:
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
