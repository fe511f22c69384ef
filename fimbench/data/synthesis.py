"""curves-synth: synthetic CURVES-like images, generated and cached (with a size and sha256 manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fimbench.data.cache import PROCESSED_FORMAT, read_processed, save_tensors
from fimbench.files import atomic_write_json

SYNTH_SEED = 0
"""curves-synth draws its train/val pool with this seed and its test set with ``SYNTH_SEED + 1``."""
SYNTH_VERSION = 1
"""Bumped whenever :func:`generate_curves_synth` changes, so stale caches are not reused."""


def generate_curves_synth(n: int, seed: int) -> torch.Tensor:
    """``n`` synthetic CURVES-like 28×28 images, flattened to ``(n, 784)`` float32 in [0, 1].

    Each image is a smooth curve through three random points ``P0, P1, P2`` (the quadratic interpolating
    them at ``t = 0, t1, 1`` with centripetal parameter ``t1``), drawn with a random half-width
    ``w ∈ [0.5, 1.5]`` px and anti-aliased as the distance field ``clamp(w + 0.5 − d, 0, 1)``, where ``d``
    is the distance from a pixel centre to 48 points sampled on the curve. Synthetic: it imitates the
    look of Martens' CURVES, it is not that data. Deterministic in ``seed``.

    Args:
        n: How many images.
        seed: The seed of the ``torch.Generator`` they are drawn from.

    Returns:
        The images, (n, 784) float32 in [0, 1].
    """
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 3, 2, generator=g) * 22 + 2.5
    half_width = torch.rand(n, generator=g) + 0.5
    seg = (points[:, 1:] - points[:, :-1]).norm(dim=-1).sqrt()
    t1 = (seg[:, 0] / seg.sum(1).clamp_min(1e-6)).clamp(0.2, 0.8)[:, None]
    t = torch.linspace(0, 1, 48)[None]
    lagrange = torch.stack([(t - t1) * (t - 1) / t1, t * (t - 1) / (t1 * (t1 - 1)), t * (t - t1) / (1 - t1)], dim=-1)
    axis = torch.arange(28, dtype=torch.float32)
    pixels = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(784, 2)
    images = torch.empty(n, 784)
    for start in range(0, n, 512):  # chunks bound the (chunk, 784, 48) distance tensor to ~77 MB
        stop = min(start + 512, n)
        curve = lagrange[start:stop] @ points[start:stop]
        dist = torch.cdist(pixels.expand(stop - start, 784, 2), curve, compute_mode="donot_use_mm_for_euclid_dist")
        images[start:stop] = (half_width[start:stop, None] + 0.5 - dist.amin(dim=-1)).clamp_(0, 1)
    return images


def cached_curves_synth(root: Path, n_train: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The curves-synth pool and test set, from the cache in ``root`` or generated (then cached)."""
    path = root / f"curves-synth-v{SYNTH_VERSION}-seed{SYNTH_SEED}-{n_train}-{n_test}.pt"
    manifest = path.with_suffix(".json")  # {"bytes", "sha256"} of the cache: a damaged one is regenerated
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        expected = None
    blob = read_processed(path, expected) if isinstance(expected, dict) else None
    if blob is not None:
        return blob["train"], blob["test"]
    pool = generate_curves_synth(n_train, SYNTH_SEED)
    test = generate_curves_synth(n_test, SYNTH_SEED + 1)
    try:
        atomic_write_json(manifest, save_tensors(path, {"format": PROCESSED_FORMAT, "train": pool, "test": test}))
    except OSError:
        pass  # read-only data dir: the cache is only a speed-up
    return pool, test
