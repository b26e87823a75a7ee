"""Operating-system faults (here a directory where a file is expected) end in one line naming the path."""

from __future__ import annotations

from failmode.cli import main


def test_a_directory_given_as_a_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "modes.json"
    folder.mkdir()
    code = main(["generate", "--modes", str(folder), "--out", str(tmp_path / "out"), "--plan-only"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and str(folder) in err, err
