"""The Fisher of a torch model: its likelihoods, the captured per-layer statistics ``(ā, g)``, the exact
block ``F = (1/m) Σ_t ā_t ā_tᵀ ⊗ g_t g_tᵀ`` and the paper's error metrics, spectra, the exact Fisher of a
Fisher sub-batch over several layers, and the cross-layer error.

>>> from fimbench.fisher import exact_block      # (a, g) -> dense (p·q, p·q) F, reference only
"""

from fimbench.fisher.block_errors import ApproximationErrors, ExactFisher, approximation_errors, exact_block
from fimbench.fisher.capture import LayerStatistics, capture_statistics
from fimbench.fisher.likelihood import Likelihood

__all__ = ["ApproximationErrors", "ExactFisher", "LayerStatistics", "Likelihood", "approximation_errors", "capture_statistics", "exact_block"]
