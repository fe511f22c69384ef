"""The preconditioner's settings (fimbench/preconditioner/settings.py): every default written once, the
approximation options they carry, and the one check that names the first setting a preconditioner cannot
run with."""

from __future__ import annotations

import dataclasses

import pytest

from fimbench.curvature import ApproximationOptions
from fimbench.errors import FimbenchError
from fimbench.methods import Method
from fimbench.preconditioner.settings import PreconditionerSettings, check_settings


@pytest.mark.parametrize(
    "field, value",
    [
        ("damping", 0.0), ("damping", -1.0), ("stats_every", 0), ("inverse_every", 0), ("ema_decay", 1.0),
        ("ema_decay", -0.1), ("fisher_fraction", 0.0), ("fisher_fraction", 1.5), ("kl_clip", 0.0),
        ("lanczos_rank", 3), ("lanczos_rank", 0), ("damping_schedule", "cosine"), ("damping_every", 0),
        ("damping_min", 0.0), ("step_rule", "newton"),
    ],
)  # fmt: skip
def test_a_setting_out_of_range_is_named(field: str, value: object) -> None:
    settings = dataclasses.replace(PreconditionerSettings(), **{field: value})
    with pytest.raises(FimbenchError, match=f"invalid optimizer setting {field}="):
        check_settings(settings, Method.LANCZOS)


def test_the_defaults_pass_for_every_preconditioned_method() -> None:
    for method in (Method.KFAC, Method.DEFLATION, Method.EKFAC, Method.EXACT_NG):
        check_settings(PreconditionerSettings(), method)


def test_a_coarse_space_needs_a_block_diagonal_method() -> None:
    settings = PreconditionerSettings(coarse="nicolaides")
    check_settings(settings, Method.EKFAC)
    with pytest.raises(FimbenchError, match="coarse=nicolaides corrects a block-diagonal method .* not exact-ng"):
        check_settings(settings, Method.EXACT_NG)
    with pytest.raises(FimbenchError, match="coarse"):
        check_settings(PreconditionerSettings(coarse="galerkin"), Method.KFAC)


def test_adaptive_damping_starts_inside_its_bounds() -> None:
    inside = PreconditionerSettings(damping=1.0, damping_schedule="adaptive", damping_min=0.1, damping_max=10.0)
    check_settings(inside, Method.KFAC)
    with pytest.raises(FimbenchError, match=r"starts inside \[damping_min, damping_max\] = \[0.1, 10\], got damping=20"):
        check_settings(dataclasses.replace(inside, damping=20.0), Method.KFAC)
    check_settings(dataclasses.replace(inside, damping=20.0, damping_schedule="fixed"), Method.KFAC)  # bounds unused


def test_damping_form_is_checked() -> None:
    with pytest.raises(FimbenchError, match="damping"):
        check_settings(PreconditionerSettings(damping_form="diagonal"), Method.KFAC)


def test_approximation_options_carry_the_settings() -> None:
    settings = PreconditionerSettings(tol=1e-4, max_iterations=7, lanczos_rank=1, krylov_dim=5)
    assert settings.approximation_options() == ApproximationOptions(tol=1e-4, max_iterations=7, rank=1, krylov_dim=5)
    assert PreconditionerSettings().approximation_options() == ApproximationOptions()  # one set of defaults
