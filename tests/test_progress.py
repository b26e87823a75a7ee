"""Progress off a terminal: periodic log lines with done/total and rate, and a heartbeat during one long step."""

from __future__ import annotations

import logging
import time

from failmode.progress import LogBar, bar, progress


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "failmode.progress"]


def test_log_lines_off_a_terminal(monkeypatch, caplog):
    monkeypatch.setenv("FAILMODE_PROGRESS", "0")
    monkeypatch.setenv("FAILMODE_PROGRESS_INTERVAL", "0.05")
    caplog.set_level(logging.INFO, logger="failmode.progress")
    with bar("images", total=10, unit="img") as b:
        assert isinstance(b, LogBar)
        b.update(3)
        time.sleep(0.4)  # one long step: the heartbeat reports the bar while nothing advances
        heartbeat = _lines(caplog)
        b.update(7)
    assert heartbeat and heartbeat[0].startswith("images: 3/10 img (30%), ")
    assert " img/s, " in heartbeat[0] and "elapsed" in heartbeat[0]
    assert _lines(caplog)[-1].startswith("images: 10/10 img (100%)")  # the final line of a bar that ran long


def test_heartbeat_names_the_innermost_bar_and_stops_when_all_close(monkeypatch, caplog):
    monkeypatch.setenv("FAILMODE_PROGRESS", "0")
    monkeypatch.setenv("FAILMODE_PROGRESS_INTERVAL", "0.05")
    caplog.set_level(logging.INFO, logger="failmode.progress")
    with bar("demo", total=4, unit="stage"):
        for _ in progress(range(2), desc="head training", unit="epoch"):
            time.sleep(0.3)
        inner = _lines(caplog)
    assert inner and all(line.startswith("head training: ") for line in inner)
    assert any(line.startswith("head training: 1/2 epoch") for line in inner)
    caplog.clear()
    time.sleep(0.3)
    assert _lines(caplog) == []  # no bar open: silence


def test_short_work_logs_nothing(monkeypatch, caplog):
    monkeypatch.setenv("FAILMODE_PROGRESS", "0")
    monkeypatch.setenv("FAILMODE_PROGRESS_INTERVAL", "30")
    caplog.set_level(logging.INFO, logger="failmode.progress")
    assert list(progress(range(100), desc="quick")) == list(range(100))
    assert _lines(caplog) == []


def test_head_training_reports_its_epochs(monkeypatch, caplog):
    """The linear head's full-batch epochs go through the progress mechanism (evaluate and mining train heads)."""
    import numpy as np

    from failmode.head import HeadParams, train_head

    monkeypatch.setenv("FAILMODE_PROGRESS", "0")
    monkeypatch.setenv("FAILMODE_PROGRESS_INTERVAL", "0")  # every epoch logs
    caplog.set_level(logging.INFO, logger="failmode.progress")
    rng = np.random.default_rng(0)
    train_head(rng.normal(size=(8, 4)).astype(np.float32), np.arange(8) % 2, HeadParams(epochs=3), num_classes=2,
               device="cpu")
    lines = [line for line in _lines(caplog) if line.startswith("head training: ")]
    assert [line.split(" epoch")[0] for line in lines[:3]] == ["head training: 1/3", "head training: 2/3",
                                                                "head training: 3/3"]
