"""Progress bars for long work: tqdm on a terminal, periodic log lines otherwise (CI logs stay readable)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_disabled() -> bool:
    """Bars are off when FAILMODE_PROGRESS=0 or stderr is not a terminal."""
    flag = os.environ.get("FAILMODE_PROGRESS")
    if flag is not None:
        return flag.strip() in {"0", "false", "no", "off"}
    return not sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a progress bar labelled `desc`."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=progress_disabled(), dynamic_ncols=True))


def bar(desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A manual progress bar (`with bar(...) as b: b.update(n)`)."""
    return tqdm(desc=desc, total=total, unit=unit, disable=progress_disabled(), dynamic_ncols=True)
