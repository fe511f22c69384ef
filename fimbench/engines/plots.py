"""Shared plotting conventions: one colour per method across every fimbench figure, atomic PNG writes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from fimbench.files import atomic_write_bytes

METHOD_COLORS: dict[str, str] = {
    "kfac": "#1f77b4",
    "kpsvd": "#ff7f0e",
    "deflation": "#2ca02c",
    "lanczos": "#d62728",
    "kfac-corrected": "#9467bd",
    "sgd": "#7f7f7f",
    "adam": "#8c564b",
    "exact-ng": "#000000",
    "exact-ng-block": "#e377c2",
    "ekfac": "#bcbd22",
}
METHOD_LABELS: dict[str, str] = {
    "kfac": "KFAC",
    "kpsvd": "KPSVD",
    "deflation": "Deflation",
    "lanczos": "Lanczos",
    "kfac-corrected": "KFAC-corrected",
    "sgd": "SGD",
    "adam": "Adam",
    "exact-ng": "exact NG",
    "exact-ng-block": "exact NG (blocks)",
    "ekfac": "EKFAC",
}


def method_color(method: str) -> str:
    """The method's colour; Lanczos at rank r (``lanczos-r3``) and a variant (``kfac+nicolaides``) share their method's hue."""
    return METHOD_COLORS.get(method, METHOD_COLORS.get(method.split("+")[0].split("-r")[0], "#17becf"))


def new_figure(rows: int, cols: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, Any]:
    """A figure of ``rows × cols`` panels of the given size in inches."""
    return plt.subplots(rows, cols, figsize=(cols * width, rows * height), squeeze=False)


def save_png(figure: Figure, path: Path, dpi: int = 120) -> None:
    """Render ``figure`` to PNG and write it atomically; closes the figure."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
