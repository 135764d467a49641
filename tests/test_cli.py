import json

import pytest
from click.testing import CliRunner

from bench.cli import main as cgbench
from convert.cli import main as cgconvert
from engine import __version__
from engine.__main__ import main as engine_main
from serve.cli import main as cgserve


@pytest.mark.parametrize("cli,name", [(cgconvert, "cgconvert"), (cgbench, "cgbench"),
                                      (cgserve, "cgserve")])
def test_version_and_help(cli, name):
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"{name} {__version__}"
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_engine_demo_generates(tmp_path):
    result = CliRunner().invoke(engine_main, ["random:tiny", "--max-new-tokens", "5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["completion_tokens"] == 5 and data["finish_reason"] in ("length", "stop")
    assert data["model"] == "random:tiny" and data["ttft_ms"] > 0


def test_engine_demo_bad_input_is_one_line_and_exit_1():
    result = CliRunner().invoke(engine_main, ["random:nope"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: unknown variant 'nope'")
    assert len(result.output.strip().splitlines()) == 1


def test_engine_demo_refuses_an_unknown_dtype():
    result = CliRunner().invoke(engine_main, ["random:tiny", "--dtype", "float64"])
    assert result.exit_code == 2 and "--dtype" in result.output


@pytest.mark.parametrize("command", [["run"], ["typing"]])
def test_cgbench_shares_the_option_bundles(command):
    help_text = CliRunner().invoke(cgbench, [*command, "--help"]).output
    wanted = {"run": ("--dtype", "--device"),
              "typing": ("--tokenizer", "--speculate / --no-speculate", "--speculate-lines")}
    for option in wanted[command[0]]:
        assert option in help_text
