"""The `failmode` command line: help for every stage, one-line usage errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from failmode.cli import COMMANDS, main


def test_console_script_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "failmode", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert f"    {name}" in out.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help_exits_zero(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"usage: failmode {name}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["frobnicate"], ["mine", "--no-such-option"], ["--bogus"]])
def test_usage_errors_are_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error:" in err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
