"""Raw records from local files or Hugging Face datasets, each with its location; defects, not crashes.

    for location, record, defect in read_records("data/pairs.jsonl"):
        ...   # location "data/pairs.jsonl:17"; record a dict, or None with a Defect saying why

Sources (``source="file"`` unless noted):

    PATH.jsonl            JSON lines; locations PATH:LINE (1-based line numbers; blank lines skipped)
    PATH.json             JSON lines, or one JSON array of objects (locations PATH:row N), or one object
    PATH.parquet          read with pyarrow batch by batch; locations PATH:row N (1-based)
    DIR or GLOB           every .jsonl/.json/.parquet file under DIR (recursively) or matching GLOB, sorted
    DIR (save_to_disk)    a ``Dataset``/``DatasetDict.save_to_disk`` directory: ``datasets.load_from_disk``
    NAME (source="hf")    ``datasets.load_dataset(NAME, subset, split=..., revision=...)``: a hub name, or
                          a local directory of data files (which load_dataset also accepts)

A record that cannot be read (malformed JSON, bytes that are not UTF-8, a line that is not a JSON
object) becomes a ``Defect`` at its location and reading goes on, so one pass lists every problem.
A file with no records is a defect at ``PATH:0``. A path that does not exist is a ``FileNotFoundError``.

Why JSON lines are parsed here rather than by pyarrow or ``datasets``: both stop at the first bad line
and neither reports line numbers, and a line number is the one thing a person fixing a file needs.

Nothing here imports Ray; ``datasets`` is imported only when a dataset directory or name is read.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
MAX_LISTED_DEFECTS = 50  # a DataError message lists this many defects, then "... and N more"


@dataclass(frozen=True)
class Defect:
    """One problem with one record: ``str(defect)`` is ``"PATH:LINE: field: problem"``."""

    location: str  # "PATH:LINE" (JSON lines), "PATH:row N" (Parquet, JSON arrays, datasets), "PATH:0" (whole file)
    field: str  # the offending field ("prompt", "summaries[1].text"), or json/encoding/record/file
    problem: str

    def __str__(self) -> str:
        return f"{self.location}: {self.field}: {self.problem}"


class DataError(ValueError):
    """Data that cannot be used; ``.defects`` lists every problem found, the message the first 50."""

    def __init__(self, headline: str, defects: Iterable[Defect] = ()):
        self.headline = headline
        self.defects = list(defects)
        lines = [headline] + [f"  {d}" for d in self.defects[:MAX_LISTED_DEFECTS]]
        if len(self.defects) > MAX_LISTED_DEFECTS:
            lines.append(f"  ... and {len(self.defects) - MAX_LISTED_DEFECTS} more")
        super().__init__("\n".join(lines))


Record = tuple[str, dict[str, Any] | None, Defect | None]  # (location, record or None, defect or None)


def read_records(
    path: str,
    source: str = "file",
    split: str | None = None,
    subset: str | None = None,
    revision: str | None = None,
    *,
    prefer_split: str | None = None,
) -> Iterator[Record]:
    """Yield ``(location, record, None)`` for each readable record, ``(location, None, defect)`` otherwise.

    ``split``/``subset``/``revision`` apply to datasets (``source="hf"`` or a save_to_disk directory).
    With no ``split``, a dataset with one split yields that one, else ``prefer_split`` when it exists;
    anything else is a ``ValueError`` listing the splits. Raises ``FileNotFoundError`` for a missing
    local path, ``ValueError`` for a file type it cannot read.
    """
    if source not in ("file", "hf"):
        raise ValueError(f"unknown data source {source!r}: expected 'file' or 'hf'")
    local = os.path.expanduser(path)
    if _is_saved_dataset(local):
        yield from _dataset_records(path, _load_from_disk(local), split, prefer_split)
        return
    if source == "hf":
        if _looks_local(path) and not os.path.exists(local):
            raise FileNotFoundError(f"data not found: {path!r} does not exist (nor is it a dataset name)")
        yield from _dataset_records(
            path, _load_dataset(local if os.path.exists(local) else path, subset, split, revision), split, prefer_split
        )
        return
    for file in data_files(path):
        yield from _file_records(file)


def data_files(path: str) -> list[str]:
    """The data files a file source names: the file itself, or the sorted files of a directory/glob."""
    local = os.path.expanduser(path)
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(local, recursive=True) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"data not found: no file matches {path!r}")
        return files
    if os.path.isdir(local):
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(local)
            for name in names
            if name.endswith(FILE_SUFFIXES) and not name.startswith(".")
        )
        if not files:
            raise FileNotFoundError(f"data not found: directory {path!r} holds no {'/'.join(FILE_SUFFIXES)} files")
        return files
    if not os.path.exists(local):
        raise FileNotFoundError(f"data not found: {path!r} does not exist")
    if not local.endswith(FILE_SUFFIXES):
        raise ValueError(f"cannot read {path!r}: expected a {', '.join(FILE_SUFFIXES)} file (or source 'hf' for other dataset formats)")
    return [local]


def _looks_local(path: str) -> bool:
    """Written like a path (./x, /x, ~/x, x.jsonl) rather than a hub name (owner/name)."""
    return path.startswith((".", "/", "~")) or path.endswith(FILE_SUFFIXES)


# --- local files ---------------------------------------------------------------------------------------


def _file_records(path: str) -> Iterator[Record]:
    if path.endswith(".parquet"):
        records = _parquet_records(path)
    elif path.endswith(".json"):
        records = _json_records(path)
    else:
        records = _jsonl_records(path)
    empty = True
    for record in records:
        empty = False
        yield record
    if empty:
        yield f"{path}:0", None, Defect(f"{path}:0", "file", "empty: no records")


def _jsonl_records(path: str) -> Iterator[Record]:
    # Bytes, not text: a bad byte must spoil its own line only, not the whole file.
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield from _parse_line(path, number, raw)


def _parse_line(path: str, number: int, raw: bytes) -> Iterator[Record]:
    location = f"{path}:{number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        yield location, None, Defect(location, "encoding", f"not UTF-8: byte 0x{raw[error.start]:02x} at column {error.start + 1}")
        return
    if number == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    if not text.strip():
        return  # blank lines (a trailing newline, spacing) are not records
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        yield location, None, Defect(location, "json", f"malformed JSON: {error.msg} at column {error.colno}")
        return
    if not isinstance(value, dict):
        yield location, None, Defect(location, "record", f"not a JSON object but {_json_kind(value)}")
        return
    yield location, value, None


def _json_records(path: str) -> Iterator[Record]:
    """A .json file: one JSON array (or object) when the whole file parses as one, else JSON lines."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        text = None  # JSON lines reading pins the bad byte to its line
    if text is not None and text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            location = f"{path}:{error.lineno}"
            yield location, None, Defect(location, "json", f"malformed JSON array: {error.msg} at column {error.colno}")
            return
        for number, item in enumerate(value, start=1):
            location = f"{path}:row {number}"
            if isinstance(item, dict):
                yield location, item, None
            else:
                yield location, None, Defect(location, "record", f"not a JSON object but {_json_kind(item)}")
        return
    if text is not None and text.count("\n") > 1 and text.lstrip().startswith("{"):
        try:  # one pretty-printed object spread over several lines
            value = json.loads(text)
        except json.JSONDecodeError:
            pass  # not one object: JSON lines below reports each bad line
        else:
            yield f"{path}:1", value, None
            return
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        yield from _parse_line(path, number, line)


def _parquet_records(path: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        yield f"{path}:0", None, Defect(f"{path}:0", "file", f"not a readable Parquet file: {error}")
        return
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield f"{path}:row {number}", record, None


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- Hugging Face datasets ---------------------------------------------------------------------------


def _is_saved_dataset(path: str) -> bool:
    """A ``save_to_disk`` directory: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json"))
    )


def _load_from_disk(path: str):
    import datasets

    return datasets.load_from_disk(path)


def _load_dataset(path: str, subset: str | None, split: str | None, revision: str | None):
    import datasets

    return datasets.load_dataset(path, subset, split=split, revision=revision)


def choose_split(available: list[str], split: str | None, prefer_split: str | None, where: str) -> str:
    """The split to read: the one asked for, the only one, or ``prefer_split``; else a clear error."""
    if split is not None:
        if split not in available:
            raise ValueError(f"{where} has no split {split!r}; its splits: {', '.join(available)}")
        return split
    if len(available) == 1:
        return available[0]
    if prefer_split in available:
        return prefer_split
    raise ValueError(f"{where} has several splits ({', '.join(available)}): name one with split")


def _dataset_records(where: str, dataset, split: str | None, prefer_split: str | None) -> Iterator[Record]:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[choose_split(list(dataset), split, prefer_split, where)]
    if len(dataset) == 0:
        yield f"{where}:0", None, Defect(f"{where}:0", "file", "empty: no records")
        return
    # Arrow batches to Python in one go per batch: far faster than indexing row by row.
    number = 0
    for batch in dataset.with_format("arrow").iter(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield f"{where}:row {number}", record, None
