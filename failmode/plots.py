"""Figures for reports: matplotlib on its file-only backend (Agg), written atomically."""

from __future__ import annotations

import os
from typing import Any

from failmode.io import atomic_path


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`matplotlib.pyplot.subplots` on the Agg backend (no display needed); imports matplotlib on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120, tight: bool = False) -> None:
    """Write `fig` as a PNG atomically (nothing half-written on a crash) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
