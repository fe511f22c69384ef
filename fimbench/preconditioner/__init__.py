"""Natural-gradient preconditioning of a torch model with a curvature per layer (or over all layers), and
everything only the preconditioner uses: its settings, the curvature blocks it inverts (Kronecker sums,
EKFAC, the exact references, the two-level correction), damping, the step rule, mixed precision, layer
selection, data-parallel statistics and its saved state.

The public import path is :mod:`fimbench.optim`; this package imports nothing from the engines or the CLI.
"""
