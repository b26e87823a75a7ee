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


def test_missing_optional_package_is_one_line_naming_its_extra(tmp_path):
    """`failmode demo` without scipy (the `demo` extra): one line naming the extra, exit 1, no traceback."""
    code = ("import sys; sys.modules['scipy'] = None; from failmode.cli import main; "
            f"sys.exit(main(['demo', '--out', {str(tmp_path / 'demo')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if "error" in line or "Traceback" in line]
    assert lines == ["failmode demo: error: this needs the optional package 'scipy', which is not installed: "
                     "pip install 'failmode[demo]'"]


def test_build_help_names_every_shipped_preset_and_the_mode():
    from failmode.cli import build_parser
    from failmode.generation.presets import list_presets

    build = build_parser()._subparsers._group_actions[0].choices["build"]
    assert all(name in build.description for name in list_presets()) and "fashion-scenes-debug" in build.description
    for command in ("build", "generate"):
        parser = build_parser()._subparsers._group_actions[0].choices[command]
        mode = next(a for a in parser._actions if "--write" in a.option_strings)
        assert mode.help.startswith("incremental (default): keep the shards already written")


def test_attribute_runs_and_models_name_the_folders_mine_writes():
    """`failmode attribute --runs DIR --models M ...` reads the folder `failmode mine --models` writes for each M
    (one name rule: the model's config name, `config_slug`, as build names its folders and configs)."""
    from failmode.cli import build_parser
    from failmode.commands import attribute

    argv = ["attribute", "--runs", "runs", "--models", "hf-hub:timm/vit_b.augreg", "test_vit", "--vocabulary", "x"]
    assert attribute.tables(build_parser().parse_args(argv)) == ["runs/hf-hub-timm-vit_b-augreg", "runs/test_vit"]
