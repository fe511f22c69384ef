"""The names the command line offers as choices, importable without torch (``fimbench --help`` stays fast).

:class:`fimbench.curvature.Method` and :mod:`fimbench.data` are the engines' sources of truth; the test
suite checks that these tuples match them.
"""

from __future__ import annotations

DATASETS: tuple[str, ...] = ("curves", "mnist", "faces", "curves-synth")
DOWNLOADABLE: tuple[str, ...] = ("curves", "mnist", "faces")
METHODS: tuple[str, ...] = ("kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected", "sgd", "adam")
"""Every optimizer, in :class:`fimbench.curvature.Method`'s order."""
KRONECKER_METHODS: tuple[str, ...] = METHODS[:5]
"""The methods that precondition with a Kronecker approximation."""
