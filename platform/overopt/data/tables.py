"""One table of a sweep read whole from a file or dataset: ``load_table`` (every record through its
format's adapter, data/formats.py) and the ``TableReport`` of what reading (or tokenising) it found.

    rows, report = load_table("pairs", "data/comparisons.jsonl", format="tldr")
    rows, report = load_table("sft", "trl-lib/tldr", source="hf", split="train")
    rows, report = load_table("eval", "data/qa.parquet", format="sft", columns={"prompt": "question", "completion": "answer"})
    print(report.summary())

Invalid rows are ``Defect``s (``"PATH:LINE: field: problem"``). ``on_invalid="error"`` reads everything,
then raises one ``DataError`` listing them all; ``"skip"`` drops those rows and reports them in the
``TableReport``. A table with no usable row is always an error.

``limit=N`` keeps a seeded random sample of N valid rows (``sample_indices``: numpy, from ``seed`` and
the table's name), in file order, after reading the whole table: the first N rows of a file sorted by
date or topic would be a biased slice of it. ``report.sampled`` records the draw.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np

from overopt.data.formats import KINDS, InvalidRow, check_format_feeds, detect_format, rename_columns, to_table_row
from overopt.data.readers import DataError, Defect, read_records

ROW_NOUNS = {"sft": "demonstrations", "pairs": "pairs", "eval": "prompts"}
MAX_REPORTED_DEFECTS = 10  # examples kept in TableReport.to_dict (the run summary)


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


def _their_field(field: str, columns: Mapping[str, str]) -> str:
    """A defect's field in the dataset's own names: ``prompt[0].role`` -> ``question[0].role``."""
    match = re.match(r"([^.\[]*)(.*)", field)
    assert match is not None  # both groups match the empty string: every field matches
    head, rest = match.groups()
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
        assert record is not None  # read_records yields a record wherever it yields no defect
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
        assert record is not None  # read_records yields a record wherever it yields no defect
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
