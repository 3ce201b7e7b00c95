"""Validate a data file or dataset before a sweep reads it (no Ray, no GPU): every defect, or one line.

    python jobs/check_data.py data/comparisons.jsonl --format tldr
    python jobs/check_data.py data/tldr_sft/ --format tldr-sft --tokenizer EleutherAI/pythia-1b \\
        --max-prompt-tokens 512 --max-response-tokens 53
    python jobs/check_data.py Anthropic/hh-rlhf --source hf --split test --format hh
    python jobs/check_data.py runs/saved_dataset --source hf --split test --kind eval
    python jobs/check_data.py data/qa.parquet --format sft --column prompt=question --column completion=answer
    python jobs/check_data.py data/pairs.jsonl --tokenizer synthetic     # the synthetic task's word tokenizer

Exit 0: one summary line on stdout: the table, rows read and kept and, with --tokenizer, the
p50/p90/p99/max prompt and response token lengths (before truncation) and how many were truncated.
Exit 1: every defect on its own line on stderr as ``PATH:LINE: field: problem`` (``PATH:row N`` for
Parquet and datasets, ``PATH:0`` for a whole file), then one line counting them; or one line with the
error when the data cannot be read at all (missing path, unknown format, no chat template, ...).
Exit 2: bad arguments.

The table defaults to pairs for preference/tldr/hh data and sft for sft/tldr-sft (auto: the format
detected from the first record). docs/data.md describes the formats and every check.
"""

import argparse
import sys

from overopt.cli import parser_for
from overopt.data.formats import FORMAT_TABLES, KINDS
from overopt.data.readers import DataError
from overopt.data.tables import format_token_lengths, load_table, peek_format
from overopt.data.tokenize import tokenize_table


def _column(item: str) -> tuple[str, str]:
    ours, sep, theirs = item.partition("=")
    if not sep or not ours or not theirs:
        raise argparse.ArgumentTypeError(f"{item!r} is not OUR_FIELD=THEIR_COLUMN")
    return ours, theirs


def _tokenizer(name: str):
    if name == "synthetic":
        from overopt.data.synthetic import SyntheticTask
        from overopt.data.tokenizer import build_synthetic_tokenizer

        return build_synthetic_tokenizer(SyntheticTask())
    from overopt.models import load_tokenizer

    return load_tokenizer(name)


def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument(
        "path", help="a .jsonl/.json/.parquet file, a directory or glob of them, a save_to_disk directory, or (--source hf) a dataset name"
    )
    parser.add_argument("--format", default="auto", choices=["auto", *FORMAT_TABLES], help="how records map to rows (default: detected)")
    parser.add_argument("--kind", choices=KINDS, help="the table to build (default: pairs for pair formats, sft otherwise)")
    parser.add_argument(
        "--source", default="file", choices=["file", "hf"], help="hf: datasets.load_dataset (a hub name or a local data directory)"
    )
    parser.add_argument("--split", help="dataset split (default: the only one, or train for sft/pairs)")
    parser.add_argument("--subset", help="dataset config name, e.g. comparisons")
    parser.add_argument("--revision", help="dataset git revision")
    parser.add_argument(
        "--column", action="append", type=_column, default=[], metavar="OURS=THEIRS", help="map a column to our field (repeatable)"
    )
    parser.add_argument(
        "--limit", type=int, help="check a seeded sample of this many valid rows (as a config's data.*.limit draws: the whole file is read)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (a config's data.seed)")
    parser.add_argument("--tokenizer", help="also tokenize: a tokenizer name or directory, or 'synthetic'")
    parser.add_argument("--max-prompt-tokens", type=int)
    parser.add_argument("--max-response-tokens", type=int, help="includes the EOS")
    parser.add_argument("--max-length", type=int, help="prompt + response")
    args = parser.parse_args(argv)

    source = dict(source=args.source, split=args.split, subset=args.subset, revision=args.revision)
    columns = dict(args.column)
    defects, line = [], ""
    try:
        format = args.format if args.format != "auto" else peek_format(args.path, columns=columns, **source)
        kind = args.kind or ("pairs" if "pairs" in FORMAT_TABLES[format] else "sft")
        # skip, not error: collect every defect of the file (and of tokenisation) before reporting
        rows, report = load_table(
            kind, args.path, format=format, columns=columns, limit=args.limit, seed=args.seed, on_invalid="skip", **source
        )
        defects += report.defects
        line = report.summary(first_defect=False)
        if args.tokenizer:
            _, tokenized = tokenize_table(
                kind,
                rows,
                _tokenizer(args.tokenizer),
                max_prompt_tokens=args.max_prompt_tokens,
                max_response_tokens=args.max_response_tokens,
                max_length=args.max_length,
                on_invalid="skip",
                locations=report.locations,
            )
            defects += tokenized.defects
            assert tokenized.token_lengths is not None  # tokenize_table always measures them
            line += f"; tokenizer {args.tokenizer}: " + format_token_lengths(tokenized.token_lengths)
    except DataError as error:  # nothing usable at all (or an undetectable format): its defects say why
        if not error.defects:
            print(f"check_data: {error.headline}", file=sys.stderr)
            return 1
        defects += error.defects
        line = error.headline
    except (OSError, ValueError) as error:  # unreadable source, bad split, no chat template, ...
        print(f"check_data: {error}", file=sys.stderr)
        return 1
    if defects:
        for defect in defects:
            print(defect, file=sys.stderr)
        print(f"check_data: {len(defects)} defects: {line}", file=sys.stderr)
        return 1
    print(f"OK {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
