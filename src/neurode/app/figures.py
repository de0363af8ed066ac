"""Writing the application's figures (matplotlib, imported on first use)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, *, dpi: int = 110, tight_bbox: bool = False) -> Path:
    """Lay out ``fig``, write it to ``path`` (its folder made if missing) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, **({"bbox_inches": "tight"} if tight_bbox else {}))
    pyplot().close(fig)
    return path


def bare(ax, adjustable: str | None = None) -> None:
    """An axis without ticks, with equal scales (images, phase portraits)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", **({"adjustable": adjustable} if adjustable else {}))
