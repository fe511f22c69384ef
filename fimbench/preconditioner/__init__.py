"""Natural-gradient preconditioning with Kronecker-factored Fisher blocks (§2.2, App. E).

Usage in a plain PyTorch loop::

    preconditioner = KroneckerPreconditioner(model, Likelihood.BERNOULLI, "deflation", damping=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    for x in batches:
        optimizer.zero_grad()
        model.likelihood.nll(model(x), x).mean().backward()
        preconditioner.step(x)          # statistics every T1, inverses every T2, grad ← ν F̃⁻¹ grad
        optimizer.step()                # momentum SGD on the preconditioned gradient

Per layer, every step: ``P = F̃⁻¹ ∇_W h`` — ``G_inv @ grad @ A_inv`` for one term, §3.4's solve for two.
Then KL-clipping (App. E): ``ν = min(1, sqrt(c / Σ_i |⟨P_i, ∇_{W_i} h⟩|))`` and ``grad ← ν P``.
Every T1 steps the statistics ``(ā, g)`` are captured on a Fisher sub-batch with targets sampled from
the model, and each block's approximation is refreshed towards the EMA estimate
``ρ F̂_old + (1 − ρ) F_batch`` (K-FAC: its factors), ``ρ = min(1 − 1/k, α)`` for the k-th update,
warm-started from the previous solution. Every T2 steps the damped blocks are re-factorised.
Weight decay and momentum are those of the torch optimizer, applied to ``ν P`` as in the authors' code.

Damping: ``damped(λ, π)`` (:mod:`fimbench.curvature.kronecker_sum`; ``damping_form="exact"``: ``A₁ ⊗ G₁ + λI``
in the first term's eigenbasis; EKFAC is always damped exactly), λ fixed or adapted every T3 steps by
Levenberg–Marquardt (:mod:`~fimbench.preconditioner.damping`, ``adapt_damping``). Two-level (``coarse=``):
``F̃⁻¹ ∇`` gets the cross-layer correction ``R₀ (R₀ᵀ (F + λI) R₀)⁻¹ R₀ᵀ ∇`` before KL-clipping
(:mod:`~fimbench.preconditioner.two_level`). ``step_rule="qmodel"``: ``step()`` itself sets
``θ ← θ + α Δ + μ δ₀``, Δ = −F̃⁻¹(∇h + η θ), α and μ minimising ``M(δ)`` with the exact Fisher :attr:`fisher`
of this step's Fisher sub-batch, with no torch optimizer, KL-clip, lr or momentum on top
(:mod:`~fimbench.preconditioner.step_rule`).

``step`` touches the selected layers' ``.grad`` and its own state; the statistics pass leaves the model's
buffers, dropout modes and the user's random streams as they were (:mod:`fimbench.fisher.capture`), and the
targets come from the preconditioner's own generator (:func:`~fimbench.preconditioner.distributed.sampling_generator`).
What cannot be done right is refused with one ``FimbenchError``.

Diagnostics at every refresh: ``alignment``, the mean over layers of ``cos(F̃⁻¹∇, ∇)`` (1.0 means the
preconditioned direction is the gradient's: the damping swamps the curvature), and ``correction_scale``,
the smallest safeguard τ over the layers of a rank-2 method (near 0: it fell back to about rank 1).

This package holds :class:`~fimbench.preconditioner.kronecker_preconditioner.KroneckerPreconditioner` and
everything only it uses (docs/design.md §0): its settings, the curvature blocks it inverts (Kronecker sums,
EKFAC, the exact references, the two-level correction), damping, the step rule, KL-clipping, mixed
precision, layer selection, data-parallel statistics, diagnostics and its saved state. The public import
path is :mod:`fimbench.optim`; nothing here imports the engines or the CLI.
"""
