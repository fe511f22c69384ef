"""Options shared by every approximation method (their defaults are written here once)."""

from __future__ import annotations

from dataclasses import dataclass

from fimbench.errors import FimbenchError

DEFAULT_TOL = 1e-6  # the paper's ε (§4), here relative to σ₁
DEFAULT_MAX_ITERATIONS = 500  # products with Z (in pairs); warm starts need a handful, cold second pairs ~100
DEFAULT_KRYLOV_DIM = 10


@dataclass(frozen=True)
class ApproximationOptions:
    """How far the iterative methods go: stopping tolerance, iteration budget and Lanczos' sizes.

    Attributes:
        tol: Scale-invariant stopping tolerance, relative to σ₁ (the paper's ε, §4).
        max_iterations: Products with Z (in pairs) per power SVD or per Lanczos run.
        rank: Lanczos' r, the Kronecker rank of its approximation.
        krylov_dim: Lanczos' K, the dimension of its Krylov space.

    Raises:
        FimbenchError: If ``tol`` is not positive, ``max_iterations`` or ``rank`` is below 1, or ``krylov_dim``
            is below 2.
    """

    tol: float = DEFAULT_TOL
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    rank: int = 2
    krylov_dim: int = DEFAULT_KRYLOV_DIM

    def __post_init__(self) -> None:
        if not self.tol > 0:
            raise FimbenchError(f"tol must be positive, got {self.tol}")
        if self.max_iterations < 1:
            raise FimbenchError(f"max_iterations must be at least 1, got {self.max_iterations}")
        if self.rank < 1:
            raise FimbenchError(f"the Lanczos rank must be at least 1, got {self.rank}")
        if self.krylov_dim < 2:
            raise FimbenchError(f"the Krylov dimension must be at least 2, got {self.krylov_dim}")
