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
from fimbench.methods import RECORDS

METHOD_COLORS: dict[str, str] = {method.value: record.colour for method, record in RECORDS.items()}
"""Each method's colour (its registry record's)."""
METHOD_LABELS: dict[str, str] = {method.value: record.label for method, record in RECORDS.items()}
"""Each method's label in tables and legends (its registry record's)."""
METHOD_MARKERS: dict[str, str] = {method.value: record.marker for method, record in RECORDS.items()}
"""Each method's marker (its registry record's)."""


def method_color(method: str) -> str:
    """The method's colour; Lanczos at rank r (``lanczos-r3``) and a variant (``kfac+nicolaides``) share their method's hue."""
    return METHOD_COLORS.get(method, METHOD_COLORS.get(method.split("+")[0].split("-r")[0], "#17becf"))


def method_marker(method: str) -> str:
    """The method's marker, as :func:`method_color` finds its colour (``"o"`` for a method fimbench does not know)."""
    return METHOD_MARKERS.get(method, METHOD_MARKERS.get(method.split("+")[0].split("-r")[0], "o"))


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
