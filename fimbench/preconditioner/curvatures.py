"""Which :class:`~fimbench.preconditioner.blocks.Curvature` each method preconditions with, and the access to
its per-layer blocks that :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner`
offers (:class:`BlockAccess`).

* a block-diagonal method: ``F̃ = blockdiag(F̂_l)``, one block of the class its registry record names per
  layer (a Kronecker method's :class:`~fimbench.preconditioner.kronecker_block.KroneckerBlock`,
  ``F̂_l = Σ_k A_k ⊗ G_k``; EKFAC's :class:`~fimbench.preconditioner.eigenbasis_block.EigenbasisBlock`);
* either of them with a coarse space: the two-level correction on top
  (:class:`~fimbench.preconditioner.two_level.TwoLevel`);
* ``exact-ng`` / ``exact-ng-block``: the exact Fisher of the Fisher sub-batch, whole network or per block
  (:class:`~fimbench.preconditioner.exact_natural_gradient.ExactNaturalGradient`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from fimbench.curvature import ApproximationOptions, KroneckerInverse, KroneckerSum, approximate
from fimbench.errors import FimbenchError
from fimbench.fisher.capture import KroneckerLayer
from fimbench.methods import Family, Method
from fimbench.preconditioner.blocks import BlockDiagonal, Curvature, CurvatureBlock, new_block
from fimbench.preconditioner.exact_natural_gradient import ExactNaturalGradient
from fimbench.preconditioner.kronecker_block import KroneckerBlock
from fimbench.preconditioner.settings import PreconditionerSettings
from fimbench.preconditioner.two_level import NO_COARSE, TwoLevel


def method_curvature(method: Method, layer_count: int, settings: PreconditionerSettings) -> Curvature:
    """The curvature of ``method`` over ``layer_count`` layers (module docstring): a block-diagonal method's
    :class:`BlockDiagonal` of its registry block, built with :meth:`PreconditionerSettings.block_settings`;
    ``settings.coarse`` adds the two-level correction."""
    if method.record.family is Family.EXACT:
        return ExactNaturalGradient(per_layer=not method.record.couples_layers)
    blocks = BlockDiagonal([new_block(method, settings.block_settings()) for _ in range(layer_count)])
    return blocks if settings.coarse == NO_COARSE else TwoLevel(blocks, settings.coarse)


def layer_blocks(curvature: Curvature, method: Method) -> list[CurvatureBlock]:
    """The per-layer blocks of a block-diagonal curvature (under the two-level correction, if any); one
    error for the exact natural gradient, which has none."""
    inner = curvature.inner if isinstance(curvature, TwoLevel) else curvature
    if not isinstance(inner, BlockDiagonal):
        raise FimbenchError(f"method {method.value} has no per-layer blocks")
    return inner.blocks


class BlockAccess:
    """The per-layer blocks of a preconditioner's curvature, and their Kronecker approximations, for users and
    benchmarks that read or set them (a part of
    :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner`)."""

    method: Method
    curvature: Curvature
    layers: list[KroneckerLayer]
    options: ApproximationOptions
    refresh_inverses: Callable[[], None]  # the preconditioner's: factorise the damped curvature

    @property
    def blocks(self) -> list[CurvatureBlock]:
        """The per-layer blocks of a block-diagonal method; a clear error for the exact natural gradient."""
        return layer_blocks(self.curvature, self.method)

    @property
    def kronecker_blocks(self) -> list[KroneckerBlock]:
        """The Kronecker-sum blocks, one per layer (a Kronecker method's); a clear error otherwise."""
        blocks = self.blocks
        if not all(isinstance(block, KroneckerBlock) for block in blocks):
            raise FimbenchError(f"method {self.method.value} has no Kronecker-sum blocks")
        return blocks  # type: ignore[return-value]

    @property
    def approximations(self) -> list[KroneckerSum | None]:
        """Every layer's Kronecker approximation (in :attr:`layers` order; None before the first update)."""
        return [block.approximation for block in self.kronecker_blocks]

    @property
    def inverses(self) -> list[KroneckerInverse | None]:
        """Every layer's factorised damped block (None before the first refresh)."""
        return [block.inverse for block in self.kronecker_blocks]

    def approximate_block(self, a: Tensor, g: Tensor, prior: KroneckerSum | None = None, decay: float = 0.0) -> KroneckerSum:
        """One block's approximation with this preconditioner's method and options.

        Args:
            a: augmented activations ``ā``, (m, p) or (m, T, p).
            g: pre-activation derivatives, (m, q) or (m, T, q).
            prior: the previous approximation F̂_old (also the warm start), or None.
            decay: ρ of the target ``ρ F̂_old + (1 − ρ) F_batch``.

        Returns:
            The :class:`~fimbench.curvature.KroneckerSum` of ``F_batch`` (without a prior) or of the EMA target.
        """
        return approximate(self.method, a, g, prior=prior, decay=decay, warm_start=prior, options=self.options)

    def load_approximations(self, approximations: Sequence[KroneckerSum]) -> None:
        """Use ``approximations`` as the blocks and factorise them.

        Args:
            approximations: one :class:`~fimbench.curvature.KroneckerSum` per layer, in :attr:`layers` order.

        Raises:
            FimbenchError: when their number is not the number of layers.
        """
        if len(approximations) != len(self.layers):
            raise FimbenchError(f"expected {len(self.layers)} approximations (one per layer), got {len(approximations)}")
        for block, approximation in zip(self.kronecker_blocks, approximations):
            block.approximation = approximation
        self.refresh_inverses()
