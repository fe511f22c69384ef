"""Error 1 / Error 2 (fimbench.fisher.block_errors): every fast path against the dense computation, and the ordering of
the methods' errors on real statistics of a tiny trained MLP (float64)."""

from __future__ import annotations

import pytest
import torch
from reference import DTYPE, frobenius_error_dense, random_spd, random_symmetric, spectral_error_dense

from fimbench.curvature import approximate
from fimbench.fisher import block_errors as fisher
from fimbench.fisher import spectrum as spectrum_module
from fimbench.fisher.block_errors import (
    ExactFisher,
    approximation_errors,
    exact_block,
    frobenius_error,
    spectral_error,
)
from fimbench.fisher.capture import capture_statistics
from fimbench.fisher.likelihood import Likelihood
from fimbench.fisher.spectrum import SPECTRUM_ATOL, SPECTRUM_RTOL

EXACT = 1e-10  # identities exact in real arithmetic: float64 round-off (and Error² cancellation) only
CONVERGED = 1e-8  # iterative solutions (power SVD at tol 1e-10; Lanczos certified to SPECTRUM_RTOL/ATOL)


SHAPES = [(7, 4, 3), (3, 5, 4), (40, 3, 2), (12, 6, 5)]  # (m, p, q): m < p, m > pq, ...


def random_terms(p: int, q: int, rank: int, generator: torch.Generator, indefinite: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A PSD leading pair plus ``rank − 1`` symmetric (indefinite if asked) corrections."""
    terms = [(random_spd(p, generator), random_spd(q, generator))]
    for _ in range(rank - 1):
        if indefinite:
            terms.append((0.3 * random_symmetric(p, generator), 0.3 * random_symmetric(q, generator)))
        else:
            terms.append((0.3 * random_spd(p, generator), 0.3 * random_spd(q, generator)))
    return terms


@pytest.mark.parametrize("m, p, q", SHAPES)
def test_exact_fisher_gram_quantities_match_dense(make_statistics, m, p, q):
    a, g = make_statistics(m, p, q)
    exact = ExactFisher(a, g)
    F = exact_block(a, g)
    assert exact.squared_norm == pytest.approx(float(F.square().sum()), rel=EXACT)
    dense = torch.linalg.eigvalsh(F).flip(0)
    assert exact.count == min(m, p * q)
    assert torch.allclose(exact.spectrum, dense[: exact.count].clamp_min(0), atol=EXACT * float(dense[0]))
    assert all(abs(value) <= EXACT * float(dense[0]) for value in dense[exact.count :].tolist())  # rank(F) ≤ c
    A, G = random_symmetric(p, torch.Generator().manual_seed(1)), random_symmetric(q, torch.Generator().manual_seed(2))
    assert exact.inner(A, G) == pytest.approx(float((F * torch.kron(A, G)).sum()), rel=EXACT, abs=EXACT)


@pytest.mark.parametrize("m, p, q", SHAPES)
@pytest.mark.parametrize("rank, indefinite", [(1, False), (2, False), (2, True), (3, True)])
def test_error1_gram_identities_equal_dense_frobenius_error(make_statistics, generator, m, p, q, rank, indefinite):
    a, g = make_statistics(m, p, q)
    terms = random_terms(p, q, rank, generator, indefinite)
    fast = frobenius_error(ExactFisher(a, g), terms)
    assert fast.path == "gram"
    assert fast.value == pytest.approx(frobenius_error_dense(a, g, terms).value, rel=EXACT)


@pytest.mark.parametrize("m, p, q", SHAPES)
def test_error1_of_the_best_approximations_is_exact_where_f_is_kronecker(make_statistics, m, p, q):
    """One example: F = ā āᵀ ⊗ g gᵀ exactly, every method recovers it and Error 1 = Error 2 = 0."""
    a, g = make_statistics(1, p, q)
    exact = ExactFisher(a, g)
    for method in ("kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"):
        errors = approximation_errors(exact, approximate(method, a, g, tol=1e-12).terms)
        assert errors.error1.value <= 1e-6 and errors.error2.value <= 1e-6, method


@pytest.mark.parametrize("m, p, q", SHAPES)
@pytest.mark.parametrize("indefinite", [False, True])
def test_kron_path_is_the_outer_product_of_factor_spectra(make_statistics, generator, m, p, q, indefinite):
    a, g = make_statistics(m, p, q)
    A, G = random_spd(p, generator), random_symmetric(q, generator) if indefinite else random_spd(q, generator)
    fast = spectral_error(ExactFisher(a, g), [(A, G)])
    assert fast.path == "kron"
    assert fast.value == pytest.approx(spectral_error_dense(a, g, [(A, G)]).value, rel=EXACT)


@pytest.mark.parametrize("m, p, q", SHAPES)
@pytest.mark.parametrize("rank, indefinite", [(2, False), (2, True), (3, True)])
def test_spectral_dense_path_equals_eigvalsh_of_dense_matrices(make_statistics, generator, m, p, q, rank, indefinite):
    a, g = make_statistics(m, p, q)
    terms = random_terms(p, q, rank, generator, indefinite)
    fast = spectral_error(ExactFisher(a, g), terms)
    assert fast.path == "dense"
    assert fast.value == pytest.approx(spectral_error_dense(a, g, terms).value, rel=EXACT)


def test_negative_definite_and_structurally_singular_sums_sort_like_eigvalsh(make_statistics, generator):
    """F̂ in the span of m < p, q rank-one terms (zero eigenvalues with large multiplicity), indefinite:
    its negative eigenvalues must sort below the zeros, exactly like a dense eigvalsh."""
    m, p, q = 3, 6, 5
    a, g = make_statistics(m, p, q)
    weights = torch.randn(2, m, generator=generator, dtype=DTYPE)
    terms = [((a * w[:, None]).T @ a, -((g * v[:, None]).T @ g)) for w, v in zip(weights, weights.flip(1))]
    fast = spectral_error(ExactFisher(a, g), terms)
    assert fast.value == pytest.approx(spectral_error_dense(a, g, terms).value, rel=EXACT)
    negative = [(-A, G) for A, G in random_terms(p, q, 2, generator, indefinite=False)]
    assert spectral_error(ExactFisher(a, g), negative).value == pytest.approx(
        spectral_error_dense(a, g, negative).value, rel=EXACT
    )


@pytest.fixture
def lanczos_up_to_half(monkeypatch):
    """Random test matrices have flat spectra (real Fisher blocks certify at 2–3 c): allow n/2."""
    monkeypatch.setattr(spectrum_module, "LANCZOS_BUDGET", 1000)


@pytest.mark.parametrize("rank, indefinite", [(2, False), (2, True), (3, True)])
def test_spectral_lanczos_path_equals_eigvalsh_of_dense_matrices(make_statistics, generator, lanczos_up_to_half, rank, indefinite):
    m, p, q = 8, 16, 15  # n = 240 > 4c = 32: the Lanczos path once the dense limit is lowered
    a, g = make_statistics(m, p, q)
    terms = random_terms(p, q, rank, generator, indefinite)
    exact = ExactFisher(a, g)
    spectrum = fisher.kronecker_spectrum(terms, exact.count, exact.spectrum, exact.squared_norm, dense_limit=0)
    assert spectrum.path == "lanczos" and 0 < spectrum.krylov_dim <= p * q // 2
    dense = torch.linalg.eigvalsh(sum(torch.kron(A, G) for A, G in terms)).flip(0)  # type: ignore[arg-type]
    assert torch.allclose(spectrum.top[:3], dense[:3], rtol=1e-6)  # the extreme eigenvalues converge first
    fast = spectral_error(exact, terms, dense_limit=0)
    assert fast.path == "lanczos"
    assert fast.value == pytest.approx(spectral_error_dense(a, g, terms).value, rel=SPECTRUM_RTOL, abs=SPECTRUM_ATOL)


def test_lanczos_handles_multiple_eigenvalues(make_statistics, lanczos_up_to_half):
    """``D_A ⊗ I + I ⊗ D_G`` has four distinct eigenvalues 6, 4.5, 3, 1.5 of multiplicities 1, 14, 15, 210:
    the block Krylov space runs out after four blocks (breakdown) and is refilled with fresh directions."""
    m, p, q = 8, 16, 15
    a, g = make_statistics(m, p, q)
    D_A = torch.diag(torch.tensor([4.0] + [1.0] * (p - 1), dtype=DTYPE))
    D_G = torch.diag(torch.tensor([2.0] + [0.5] * (q - 1), dtype=DTYPE))
    terms = [(D_A, torch.eye(q, dtype=DTYPE)), (torch.eye(p, dtype=DTYPE), D_G)]
    exact = ExactFisher(a, g)
    spectrum = fisher.kronecker_spectrum(terms, exact.count, exact.spectrum, exact.squared_norm, dense_limit=0)
    assert spectrum.path == "lanczos"
    assert torch.allclose(spectrum.top, torch.tensor([6.0] + [4.5] * 7, dtype=DTYPE), rtol=EXACT)
    fast = spectral_error(exact, terms, dense_limit=0)
    assert fast.value == pytest.approx(spectral_error_dense(a, g, terms).value, rel=EXACT)


def test_lanczos_out_of_budget_reports_an_upper_bound(make_statistics, generator, monkeypatch):
    """Ritz values interlace (θ_i ≤ λ_i), so a run stopped early over-estimates Error 2 and says so."""
    monkeypatch.setattr(spectrum_module, "LANCZOS_BUDGET", 2)
    m, p, q = 8, 16, 15
    a, g = make_statistics(m, p, q)
    terms = random_terms(p, q, 2, generator, indefinite=True)
    fast = spectral_error(ExactFisher(a, g), terms, dense_limit=0)
    assert fast.path == "lanczos-bound"
    assert fast.value >= spectral_error_dense(a, g, terms).value - EXACT


def test_vanishing_terms_are_dropped_and_a_zero_block_gives_nan(make_statistics, generator):
    a, g = make_statistics(6, 4, 3)
    A, G = random_spd(4, generator), random_spd(3, generator)
    terms = [(A, G), (torch.zeros(4, 4, dtype=DTYPE), torch.zeros(3, 3, dtype=DTYPE))]
    errors = approximation_errors(ExactFisher(a, g), terms)
    assert errors.path == "gram/kron"
    assert errors.error2.value == pytest.approx(spectral_error_dense(a, g, [(A, G)]).value, rel=EXACT)
    zero = approximation_errors(ExactFisher(a, torch.zeros_like(g)), [(A, G)])
    assert zero.error1.value != zero.error1.value and zero.error2.value != zero.error2.value  # NaN


# ---------------------------------------------------------------- real statistics of a tiny trained MLP


@pytest.fixture(scope="module")
def trained_statistics():
    """(ā, g) of every layer of a 10-8-6-8-10 tanh autoencoder after 30 Adam steps, sampled targets."""
    from fimbench.engines.models import Architecture, Autoencoder

    generator = torch.Generator().manual_seed(0)
    model = Autoencoder(Architecture((10, 8, 6, 8, 10), Likelihood.BERNOULLI, "tanh")).to(DTYPE)
    model.reset_parameters(generator)
    data = (torch.rand(64, 10, generator=generator, dtype=DTYPE) < 0.4).to(DTYPE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model.likelihood.nll(model(data), data).mean().backward()
        optimizer.step()
    return capture_statistics(model, data[:24], model.likelihood, model.linear_layers(), generator=generator)


def test_fast_paths_equal_dense_on_real_statistics(trained_statistics):
    for stats in trained_statistics:
        exact = ExactFisher(stats.a, stats.g)
        for method in ("kfac", "kpsvd", "deflation", "lanczos", "kfac-corrected"):
            terms = approximate(method, stats.a, stats.g).terms
            errors = approximation_errors(exact, terms)
            assert errors.error1.value == pytest.approx(frobenius_error_dense(stats.a, stats.g, terms).value, rel=EXACT)
            assert errors.error2.value == pytest.approx(spectral_error_dense(stats.a, stats.g, terms).value, rel=EXACT)


def test_error1_ordering_of_the_methods_on_real_statistics(trained_statistics):
    """KPSVD ≤ KFAC (best rank 1, eq. 3); Deflation and Lanczos ≤ KPSVD (rank 2); Lanczos rank r+1 ≤ r."""
    for layer, stats in enumerate(trained_statistics, start=1):
        exact = ExactFisher(stats.a, stats.g)

        def error1(method: str, rank: int = 2) -> float:
            return frobenius_error(exact, approximate(method, stats.a, stats.g, tol=1e-10, max_iterations=1000, rank=rank).terms).value

        kfac, kpsvd = error1("kfac"), error1("kpsvd")
        assert kpsvd <= kfac + CONVERGED, layer
        assert error1("deflation") <= kpsvd + CONVERGED, layer
        assert error1("lanczos") <= kpsvd + CONVERGED, layer
        ranks = [error1("lanczos", rank) for rank in (1, 2, 3, 4)]
        assert all(later <= earlier + CONVERGED for earlier, later in zip(ranks, ranks[1:])), (layer, ranks)
        assert ranks[0] == pytest.approx(kpsvd, abs=CONVERGED)  # Lanczos at rank 1 is KPSVD's optimum


def test_float32_approximations_reduce_onto_the_statistics_ranges(trained_statistics):
    """Factors computed in float32 lie in range(āᵀ), range(gᵀ) up to round-off: the projection is
    accepted, and the errors match the dense float64 computation to float32 accuracy."""
    stats = trained_statistics[0]  # 11 × 8 block from 24 examples
    a, g = stats.a.float(), stats.g.float()
    exact = ExactFisher(a, g)
    for method in ("deflation", "lanczos", "kfac-corrected"):
        terms = [(A.double(), G.double()) for A, G in approximate(method, a, g).terms]
        assert fisher.captures_terms(terms, fisher.project_terms(terms, *exact.bases)), method
        errors = approximation_errors(exact, terms)
        assert errors.error1.value == pytest.approx(frobenius_error_dense(a, g, terms).value, rel=1e-6)
        assert errors.error2.value == pytest.approx(spectral_error_dense(a, g, terms).value, rel=1e-6)
