"""Check an embedded experiment against the demo's per-trial criteria (overopt/analysis/criteria.py).

    python jobs/check_criteria.py runs/embedded-<hash>                    # an experiment (path or URI)
    python jobs/check_criteria.py runs/embedded-<hash>/results.parquet    # or its rows

Prints one line per measured trial or group, each shortfall, and a last line counting them; exits 0
when every criterion holds, 1 when one does not, 2 when the input is not an experiment.
"""

import sys

from overopt.cli import job, parser_for


@job(FileNotFoundError)  # not an experiment (analysis.results.NotAnExperiment), or no such file
def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument("experiment", help="an experiment directory or URI, or a results.parquet")
    args = parser.parse_args(argv)

    import pandas as pd

    from overopt.analysis.criteria import check_criteria
    from overopt.analysis.results import load_results

    frame = pd.read_parquet(args.experiment) if args.experiment.endswith(".parquet") else load_results(args.experiment)
    report = check_criteria(frame)
    print(report.text())
    return 0 if not report.shortfalls else 1


if __name__ == "__main__":
    sys.exit(main())
