"""overopt/cli.py, what the jobs share: a named error ends main with one ``error:`` line and exit status 2,
any other keeps its traceback; --config/--set parse and load as every job reads them."""

import pytest

from overopt.cli import add_config_arguments, job, job_config, parser_for
from overopt.config import ConfigError


def test_a_named_error_is_one_line_on_stderr_and_exit_2(capsys):
    @job(ConfigError, FileNotFoundError)
    def main(argv=None) -> int:
        raise FileNotFoundError("runs/x is not an overopt experiment")

    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: runs/x is not an overopt experiment\n" and captured.out == ""
    assert main.__name__ == "main"


def test_other_errors_and_exit_statuses_pass_through():
    @job(ConfigError)
    def main(argv=None) -> int:
        if argv == ["bug"]:
            raise KeyError("a bug")
        return len(argv)

    assert main(["a"]) == 1
    with pytest.raises(KeyError):
        main(["bug"])


def test_config_arguments_load_the_config_with_overrides(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("seed: 3\n")
    parser = parser_for("A job.\n\n    python jobs/x.py --config FILE")
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--set", "train.lr=1e-5", "--set", "name=x"])
    cfg = job_config(args)
    assert (cfg.seed, cfg.train.lr, cfg.name) == (3, 1e-5, "x")

    @job(ConfigError)
    def main(argv=None) -> int:
        job_config(parser.parse_args(argv))
        return 0

    assert main(["--config", str(config), "--set", "train.lr=-1"]) == 2
    assert "error: invalid config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # --config is required: argparse's own exit 2
        parser.parse_args([])
    assert usage.value.code == 2
    assert "    python jobs/x.py --config FILE" in parser.format_help()  # the docstring as written
