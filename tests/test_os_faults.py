"""Operating-system faults (here a directory where a file is expected) end in one line naming the path."""

from __future__ import annotations

from failmode.cli import main


def test_a_directory_given_as_a_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "modes.json"
    folder.mkdir()
    code = main(["generate", "--modes", str(folder), "--out", str(tmp_path / "out"), "--plan-only"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and str(folder) in err, err


def _modes(tmp_path):
    import json

    from failmode.vocab import load_vocabulary

    c = load_vocabulary("cifar10", "background").classes[0]
    doc = {"format": "failmode-modes/1", "source_model": "resnet18", "vocabulary": {"dataset": "cifar10"},
           "classes": [{"label": 0, "class_name": c.name, "modes": [{"context": c.contexts[0], "count": 1}]}]}
    path = tmp_path / "modes.json"
    path.write_text(json.dumps(doc))
    return path


import errno  # noqa: E402

import pytest  # noqa: E402


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_disk_full_or_read_only_while_writing_is_one_line_and_leaves_nothing(code, words, tmp_path, capsys,
                                                                            monkeypatch):
    """The plan is written through `atomic_path`: a failed write leaves neither the file nor its temporary."""
    import pyarrow.parquet as pq

    real = pq.write_table

    def failing(table, where, **kw):
        with open(where, "wb") as f:
            f.write(b"PAR1 partial")  # what a disk that filled up mid-write leaves
        raise OSError(code, words, str(where))

    monkeypatch.setattr(pq, "write_table", failing)
    out = tmp_path / "out"
    rc = main(["generate", "--modes", str(_modes(tmp_path)), "--out", str(out), "--plan-only"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and words in err and str(out / "generation") in err, err
    assert not [p for p in out.rglob("*") if p.is_file()]  # no plan, no partial temporary file
    monkeypatch.setattr(pq, "write_table", real)
    assert main(["generate", "--modes", str(_modes(tmp_path)), "--out", str(out), "--plan-only"]) == 0


def test_scheduler_and_task_slot_are_checked_before_the_pipeline_loads(tmp_path, capsys, monkeypatch):
    import failmode.generation.render as render

    def refuse(*a, **kw):
        raise AssertionError("the pipeline was loaded before the arguments were checked")

    monkeypatch.setattr(render.DiffusersGenerator, "__init__", refuse)
    base = ["generate", "--modes", str(_modes(tmp_path)), "--out", str(tmp_path / "out"), "--generator", "sd"]
    for extra, words in ((["--scheduler", "nope"], "unknown scheduler 'nope'"),
                         (["--task-index", "3", "--num-tasks", "2"], "invalid task slot"),
                         (["--version", "banana"], "is not semver")):
        rc = main(base + extra)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and words in err, err


def test_attribute_checks_k_and_the_vocabulary_before_clip_loads(tmp_path, capsys, monkeypatch):
    import failmode.models.clip as clip

    def refuse(*a, **kw):
        raise AssertionError("CLIP was loaded before the arguments were checked")

    monkeypatch.setattr(clip, "create_clip", refuse)
    failures = tmp_path / "failures.parquet"
    failures.write_bytes(b"")
    for extra, words in ((["--vocabulary", "cifar10", "-k", "0"], "argument -k: 0 is out of range (1..100)"),
                         (["--vocabulary", "nosuch"], "no shipped background vocabulary for 'nosuch'")):
        try:
            rc = main(["attribute", str(failures), "--out", str(tmp_path / "a"), *extra])
        except SystemExit as e:  # argparse's usage error (the flag's range, docs/settings.md)
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc in (1, 2) and len(err.splitlines()) == 1 and words in err, err
