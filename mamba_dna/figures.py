"""The one way a pipeline makes and writes a figure: matplotlib on the Agg backend (no
display needed on a cluster node) and an atomic PNG write."""

from __future__ import annotations

from pathlib import Path

from mamba_dna.fsutil import atomic_path


def pyplot():
    """matplotlib.pyplot with the Agg backend selected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Write `fig` as a PNG at `path` atomically, then close it."""
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
