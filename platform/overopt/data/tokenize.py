"""Normalised table rows -> token-id columns (and the exact text they encode), with length limits.

    rows, report = load_table("pairs", "data/comparisons.jsonl", format="tldr")
    columns, tok_report = tokenize_table("pairs", rows, tokenizer, max_prompt_tokens=512,
                                         max_response_tokens=64, locations=report.locations)
    pa.table(columns)        # every column is a list with one entry per kept row

Columns per table (``*_text``: the text the ids encode, before truncation; ``*_ids``: token ids):

    sft    prompt_text completion_text prompt_ids response_ids
    pairs  prompt_text chosen_text rejected_text prompt_ids chosen_ids rejected_ids
    eval   prompt_text reference_text prompt_ids reference_ids   (no reference: None and [])

How text becomes ids (the same rule for every table, so SFT, DAA training and evaluation agree):

- a text prompt is encoded with the tokenizer's special tokens (``<bos>`` for the synthetic tokenizer,
  nothing for Pythia's); a response without them, then EOS is appended: a complete answer ends with
  exactly one EOS (an EOS already at its end is not doubled);
- conversations (lists of messages) are rendered with the tokenizer's chat template: the prompt as
  ``apply_chat_template(prompt, add_generation_prompt=True)``, each response as the rendering of
  prompt + answer minus the prompt's rendering (trailing whitespace dropped: the newline a template
  writes after its end-of-turn token is a separator the model never generates). The rendered prompt
  is encoded without adding special tokens: the template writes its own. A template whose rendering
  of prompt + answer does not start with its rendering of the prompt cannot be split this way: that
  row is a defect. Conversations and a tokenizer without a chat template: a ``ValueError``;
- ``max_prompt_tokens``: longer prompts keep their LAST tokens (the end of a prompt, right before the
  answer, matters most), and a leading BOS stays at position 0;
- ``max_response_tokens`` counts the EOS: longer responses keep their FIRST tokens, then EOS, so a
  response is at most ``max_response_tokens`` ids;
- ``max_length`` bounds prompt + response: responses are cut further to fit after the prompt.

Defects (``LOCATION: field: problem``): a prompt that tokenises to nothing, a prompt that leaves no room
for a response (prompt tokens after truncation + 1 > ``max_length``; for sft and pairs, whose responses
are trained on, also a prompt that leaves room for EOS alone), a response that tokenises to nothing, chosen and
rejected identical after truncation, a chat template that does not extend the prompt's rendering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from overopt.data.formats import InvalidRow, is_conversation
from overopt.data.readers import Defect
from overopt.data.tables import TableReport, check_usable

RESPONSE_FIELDS = {"sft": ("completion",), "pairs": ("chosen", "rejected"), "eval": ("reference",)}
ID_COLUMNS = {
    "prompt": "prompt_ids",
    "completion": "response_ids",
    "chosen": "chosen_ids",
    "rejected": "rejected_ids",
    "reference": "reference_ids",
}
ENCODE_BATCH = 1024  # texts per tokenizer call: the fast tokenizer batches in Rust


def text_columns(kind: str) -> list[str]:
    return [f"{name}_text" for name in ("prompt",) + RESPONSE_FIELDS[kind]]


def id_columns(kind: str) -> list[str]:
    return [ID_COLUMNS[name] for name in ("prompt",) + RESPONSE_FIELDS[kind]]


def length_percentiles(lengths: Sequence[int]) -> dict[str, float]:
    """``{"p50", "p90", "p99", "max"}`` of token lengths (empty input: {})."""
    if not len(lengths):
        return {}
    values = np.asarray(lengths, dtype=float)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), 1), "p90": round(float(p90), 1), "p99": round(float(p99), 1), "max": int(values.max())}


# --- rendering ------------------------------------------------------------------------------------------


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def render_prompt(tokenizer, prompt: str | list[dict[str, str]]) -> str:
    """The prompt as the model reads it: the text itself, or the chat template's rendering."""
    if not is_conversation(prompt):
        return prompt
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def render_response(tokenizer, prompt: list[dict[str, str]], prompt_text: str, answer: list[dict[str, str]], field: str) -> str:
    """The text the chat template writes for ``answer`` after ``prompt`` (its prompt rendering removed)."""
    full = tokenizer.apply_chat_template(list(prompt) + list(answer), tokenize=False)
    if not full.startswith(prompt_text):
        raise InvalidRow(
            field,
            "the chat template's rendering of prompt + answer does not start with its rendering of the prompt "
            "(add_generation_prompt=True): it cannot be split into prompt and response tokens",
        )
    return full[len(prompt_text) :].rstrip()


def _encode(tokenizer, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), ENCODE_BATCH):
        # verbose=False: long texts are truncated below, the "sequence too long" warning is noise here
        ids.extend(tokenizer(texts[start : start + ENCODE_BATCH], add_special_tokens=add_special_tokens, verbose=False)["input_ids"])
    return ids


def _encode_grouped(tokenizer, texts: list[str | None], special: list[bool]) -> list[list[int] | None]:
    """Encode each text with or without special tokens (its ``special`` flag), keeping the order."""
    out: list[list[int] | None] = [None] * len(texts)
    for flag in (True, False):
        chosen = [(i, t) for i, t in enumerate(texts) if t is not None and special[i] == flag]
        for (i, _), ids in zip(chosen, _encode(tokenizer, [t for _, t in chosen], flag)):
            out[i] = list(ids)
    return out


# --- truncation -------------------------------------------------------------------------------------------


def truncate_prompt(ids: list[int], max_tokens: int | None, bos_token_id: int | None) -> list[int]:
    """Keep the last ``max_tokens`` ids; a leading BOS stays first (models expect it at position 0)."""
    if max_tokens is None or len(ids) <= max_tokens:
        return ids
    if bos_token_id is not None and ids[0] == bos_token_id and max_tokens > 1:
        return [bos_token_id] + ids[len(ids) - (max_tokens - 1) :]
    return ids[len(ids) - max_tokens :]


def finish_response(ids: list[int], max_tokens: int | None, eos_token_id: int) -> tuple[list[int], bool]:
    """(the first ``max_tokens - 1`` content ids + EOS, whether it was cut). EOS counts in ``max_tokens``."""
    body = ids[:-1] if ids and ids[-1] == eos_token_id else ids
    if max_tokens is not None and len(body) > max_tokens - 1:
        return body[: max_tokens - 1] + [eos_token_id], True
    return body + [eos_token_id], False


def fit_row(
    kind: str,
    prompt_ids: list[int],
    response_ids: Mapping[str, list[int] | None],
    *,
    max_prompt_tokens: int | None,
    max_response_tokens: int | None,
    max_length: int | None,
    bos_token_id: int | None,
    eos_token_id: int,
    allow_empty_responses: bool = False,
) -> tuple[list[int], dict[str, list[int]], int]:
    """One row's encoded prompt and responses, truncated and ended with EOS: ``(prompt, responses,
    how many responses were cut)``. A response of None (an eval prompt without reference) gives [].
    Raises ``InvalidRow`` for the defects listed in the module docstring."""
    if not prompt_ids:
        raise InvalidRow("prompt", "tokenises to no tokens: a response needs at least one token to follow")
    prompt = truncate_prompt(prompt_ids, max_prompt_tokens, bos_token_id)
    if max_length is not None and len(prompt) + 1 > max_length:
        raise InvalidRow("prompt", f"{len(prompt)} tokens leave no room for a response within max_length {max_length}")
    limits = [c for c in (max_response_tokens, None if max_length is None else max_length - len(prompt)) if c is not None]
    cap = min(limits) if limits else None
    responses: dict[str, list[int]] = {}
    cut = 0
    for name, ids in response_ids.items():
        if ids is None:
            responses[name] = []
            continue
        if (not ids or ids == [eos_token_id]) and not allow_empty_responses:
            raise InvalidRow(name, "tokenises to no tokens")
        if cap == 1 and kind != "eval":  # training on "prompt -> EOS" teaches nothing but stopping
            raise InvalidRow("prompt", f"{len(prompt)} tokens leave room for nothing but EOS within max_length {max_length}")
        responses[name], was_cut = finish_response(ids, cap, eos_token_id)
        cut += was_cut
    if kind == "pairs" and responses["chosen"] == responses["rejected"]:
        raise InvalidRow("rejected", "identical to chosen once tokenized" + (f" and truncated to {cap} tokens" if cut else ""))
    return prompt, responses, cut


# --- the table --------------------------------------------------------------------------------------------


def tokenize_table(
    kind: str,
    rows: Sequence[Mapping[str, Any]],
    tokenizer,
    *,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
    max_length: int | None = None,
    on_invalid: str = "error",
    locations: Sequence[str] | None = None,
    allow_empty_responses: bool = False,
) -> tuple[dict[str, list], TableReport]:
    """Rows of table ``kind`` (as ``load_table`` returns them) -> ``(columns, report)``.

    ``columns`` holds ``text_columns(kind)`` and ``id_columns(kind)``, one entry per kept row.
    ``report.token_lengths`` has the p50/p90/p99/max prompt and response lengths before truncation
    (prompts with their special tokens, responses with their EOS) and how many were truncated;
    ``report.locations`` the locations of the kept rows. ``locations`` name the rows in defects
    (default ``row N``). ``on_invalid`` as in ``load_table``: "error" raises ``DataError`` listing every
    defect, "skip" drops and reports; no usable row is always a ``DataError``. ``allow_empty_responses``
    keeps an empty response as a bare EOS (the synthetic task's samples may say nothing, a
    dataset's summary may not).
    """
    if kind not in RESPONSE_FIELDS:
        raise ValueError(f"unknown table {kind!r}: expected one of {', '.join(RESPONSE_FIELDS)}")
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    if max_response_tokens is not None and max_response_tokens < 2:
        raise ValueError(f"max_response_tokens={max_response_tokens} leaves no room for a token before EOS: needs at least 2")
    for name, value in (("max_prompt_tokens", max_prompt_tokens), ("max_length", max_length)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if locations is not None and len(locations) != len(rows):
        raise ValueError(f"got {len(locations)} locations for {len(rows)} rows")
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id  # looked up once: each lookup costs a vocabulary query
    if eos is None:
        raise ValueError(f"tokenizer {_tokenizer_name(tokenizer)} has no EOS token: responses need one to end")
    fields = RESPONSE_FIELDS[kind]
    where = list(locations) if locations is not None else [f"row {i + 1}" for i in range(len(rows))]
    report = TableReport(_tokenizer_name(tokenizer), kind, "tokenized", rows_read=len(rows))
    bad: dict[int, Defect] = {}  # row -> its first defect

    # 1. Texts: the prompt and each response as the model reads them (chat template for conversations).
    texts: dict[str, list[str | None]] = {name: [None] * len(rows) for name in ("prompt",) + fields}
    chat = [is_conversation(row["prompt"]) for row in rows]
    if any(chat) and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the {kind} table holds conversations (lists of messages) but tokenizer {_tokenizer_name(tokenizer)} "
            "has no chat template: use a tokenizer that ships one (an instruct/chat model's) or set tokenizer.chat_template"
        )
    for i, row in enumerate(rows):
        try:
            prompt_text = texts["prompt"][i] = render_prompt(tokenizer, row["prompt"])
            for name in fields:
                value = row.get(name)
                if value is not None:
                    texts[name][i] = render_response(tokenizer, row["prompt"], prompt_text, value, name) if chat[i] else value
        except InvalidRow as error:
            bad[i] = Defect(where[i], error.field, error.problem)

    # 2. Ids, in batches. Rendered chat prompts already carry the template's special tokens.
    prompt_ids = _encode_grouped(tokenizer, texts["prompt"], [not c for c in chat])
    response_ids = {name: _encode_grouped(tokenizer, texts[name], [False] * len(rows)) for name in fields}

    # 3. Truncation and the checks that need token counts.
    columns: dict[str, list] = {c: [] for c in text_columns(kind) + id_columns(kind)}
    prompt_lengths, response_lengths = [], []
    truncated_prompts = truncated_responses = 0
    for i in range(len(rows)):
        if i in bad:
            continue
        row_prompt_ids = prompt_ids[i]
        assert row_prompt_ids is not None  # every row not in bad had its prompt rendered
        try:
            prompt, responses, cut = fit_row(
                kind,
                row_prompt_ids,
                {name: response_ids[name][i] for name in fields},
                max_prompt_tokens=max_prompt_tokens,
                max_response_tokens=max_response_tokens,
                max_length=max_length,
                bos_token_id=bos,
                eos_token_id=eos,
                allow_empty_responses=allow_empty_responses,
            )
        except InvalidRow as error:
            bad[i] = Defect(where[i], error.field, error.problem)
            continue
        for name in ("prompt",) + fields:
            columns[f"{name}_text"].append(texts[name][i])
        columns["prompt_ids"].append(prompt)
        for name in fields:
            columns[ID_COLUMNS[name]].append(responses[name])
            body = response_ids[name][i]
            if body is not None:
                response_lengths.append(len(body) if body and body[-1] == eos else len(body) + 1)
        prompt_lengths.append(len(row_prompt_ids))
        truncated_prompts += len(prompt) < len(row_prompt_ids)
        truncated_responses += cut
        report.locations.append(where[i])

    report.defects = [bad[i] for i in sorted(bad)]
    report.rows_kept = len(columns["prompt_ids"])
    report.token_lengths = {
        "prompt": length_percentiles(prompt_lengths),
        "response": length_percentiles(response_lengths),
        "truncated_prompts": truncated_prompts,
        "truncated_responses": truncated_responses,
    }
    name = _tokenizer_name(tokenizer)
    check_usable(
        report,
        on_invalid,
        f"after tokenisation with {name} ({len(rows)} rows)",
        f"rows of the {kind} table cannot be tokenized with {name}",
    )
    return columns, report
