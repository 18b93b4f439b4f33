"""PNG figures (bench curves, soak timelines, quality-vs-speed charts): one way to write them."""

from __future__ import annotations

from pathlib import Path


def save_figure(figure, path: Path, dpi: int = 120) -> Path:
    """Lay out, write as PNG (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
