"""What the scripts in jobs/ share: their argument parser, the config arguments, and one way to end on
an error the user can fix (a bad config, a path that is not there).

    import sys
    from overopt.cli import add_config_arguments, job, job_config, parser_for
    from overopt.config import ConfigError

    @job(ConfigError)                       # ConfigError -> "error: <message>" on stderr, exit status 2
    def main(argv=None) -> int:
        parser = parser_for(__doc__)        # the script's docstring is its --help
        add_config_arguments(parser)        # --config FILE (required), --set KEY=VALUE (repeatable)
        args = parser.parse_args(argv)
        cfg = job_config(args)              # loaded, overridden, paths resolved; errors name file, line and key
        ...
        return 0

    if __name__ == "__main__":
        sys.exit(main())

``job`` wraps ``main`` itself, so a test that calls ``main(argv)`` sees the same exit status as a
shell. Only the errors a job names are caught: anything else is a bug and keeps its traceback.
Nothing heavy is imported here (the config is loaded only when ``job_config`` runs).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overopt.config import ExperimentConfig

Main = Callable[..., int]
USAGE_ERROR = 2  # the exit status of an error the user fixes (argparse's, too)


def parser_for(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help is the script's docstring, laid out as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (required) and ``--set KEY=VALUE`` (repeatable, into ``args.overrides``)."""
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/embedded.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value with a dotted key, e.g. --set train.lr=3e-4 (repeatable)",
    )


def job_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config that ``--config`` and ``--set`` name, relative paths resolved against the directory the
    command runs in (as the experiment's config.yaml records them). Raises ConfigError."""
    from overopt.config import load_config
    from overopt.paths import resolve_paths  # imports torch (models.py): only once a config is wanted

    return resolve_paths(load_config(args.config, args.overrides))


def job(*errors: type[Exception]) -> Callable[[Main], Main]:
    """Wrap a job's ``main``: one of ``errors`` raised in it prints ``error: <message>`` on stderr and
    ``main`` returns 2 instead of raising."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except errors as error:
                print(f"error: {error}", file=sys.stderr)
                return USAGE_ERROR

        return wrapped

    return wrap
