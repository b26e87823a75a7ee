"""Progress bars for long work: tqdm on a terminal, periodic log lines otherwise (CI logs stay readable).

Off a terminal (or with FAILMODE_PROGRESS=0) a bar is a `LogBar`: it logs "desc: done/total unit (pct), rate,
elapsed" at most every `log_interval()` seconds as work advances, and a heartbeat thread logs the innermost open bar
whenever no progress line was written for that long, so a log never stays silent for longer than the interval while
any bar is open, even during one long step. FAILMODE_PROGRESS_INTERVAL sets the interval (default 20 s).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

log = logging.getLogger(__name__)

#: seconds between progress lines off a terminal (FAILMODE_PROGRESS_INTERVAL overrides)
DEFAULT_INTERVAL_S = 20.0


def progress_disabled() -> bool:
    """Terminal bars are off (log lines instead) when FAILMODE_PROGRESS=0 or stderr is not a terminal."""
    flag = os.environ.get("FAILMODE_PROGRESS")
    if flag is not None:
        return flag.strip() in {"0", "false", "no", "off"}
    return not sys.stderr.isatty()


def log_interval() -> float:
    """Seconds between progress log lines (FAILMODE_PROGRESS_INTERVAL, default 20)."""
    try:
        return max(0.0, float(os.environ.get("FAILMODE_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class _Board:
    """The open log bars of this process, the time of the last progress line, and the heartbeat thread."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.open: list[LogBar] = []
        self.last_line = time.monotonic()
        self.thread: threading.Thread | None = None

    def add(self, b: LogBar) -> None:
        with self.lock:
            if not self.open:
                self.last_line = time.monotonic()
            self.open.append(b)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="failmode-progress", daemon=True)
                self.thread.start()

    def remove(self, b: LogBar) -> None:
        with self.lock:
            if b in self.open:
                self.open.remove(b)

    def _beat(self) -> None:
        while True:
            interval = log_interval()
            time.sleep(min(1.0, max(interval / 4, 0.05)))
            with self.lock:
                if not self.open:
                    self.thread = None
                    return
                if time.monotonic() - self.last_line >= interval:
                    self.open[-1].emit()


_BOARD = _Board()
# A forked child (a loader worker) has no heartbeat thread and must not inherit a lock held at the fork.
os.register_at_fork(after_in_child=_BOARD.__init__)


class LogBar:
    """tqdm's manual-bar interface (`update`, `set_postfix_str`, `close`, a context manager) as log lines."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it") -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.n = 0
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.closed = False
        _BOARD.add(self)

    def update(self, n: int = 1) -> None:
        """Count `n` more units done; log a line when the interval has passed since this bar's last one."""
        self.n += n
        if time.monotonic() - self.last >= log_interval():
            self.emit()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text appended to the next lines (tqdm's `set_postfix_str`)."""
        self.postfix = s

    def line(self) -> str:
        """The progress line: desc: done/total unit (percent), rate, elapsed[, postfix]."""
        elapsed = time.monotonic() - self.t0
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = self.n / elapsed if elapsed > 0 else 0.0
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit}{pct}, {rate:.3g} {self.unit}/s, {elapsed:.0f} s elapsed{post}"

    def emit(self) -> None:
        """Log the progress line now."""
        with _BOARD.lock:
            log.info("%s", self.line())
            self.last = _BOARD.last_line = time.monotonic()

    def close(self) -> None:
        """Stop reporting; a bar that ran for at least one interval logs its final line."""
        if self.closed:
            return
        self.closed = True
        _BOARD.remove(self)
        if time.monotonic() - self.t0 >= log_interval():
            self.emit()

    def __enter__(self) -> LogBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a progress bar labelled `desc`."""
    if not progress_disabled():
        return iter(tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True))
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return _logged(iterable, LogBar(desc, total, unit))


def _logged(iterable: Iterable[T], b: LogBar) -> Iterator[T]:
    with b:
        for item in iterable:
            yield item
            b.update(1)


def bar(desc: str, total: int | None = None, unit: str = "it") -> Any:
    """A manual progress bar (`with bar(...) as b: b.update(n)`): tqdm on a terminal, else a `LogBar`."""
    if not progress_disabled():
        return tqdm(desc=desc, total=total, unit=unit, dynamic_ncols=True)
    return LogBar(desc, total, unit)
