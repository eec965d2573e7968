"""Data sets with known truth (synthetic fields) and shipped real data."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aniso_gp import _validation as check
from aniso_gp import kernels, so3
from aniso_gp.linalg.dense import checked_cholesky

jax.config.update("jax_enable_x64", True)

DESIGNS = ("uniform", "jittered_grid", "grid")


@dataclasses.dataclass(frozen=True)
class Truth:
    """Generating parameters of a synthetic field (canonical labelling)."""

    lengthscales: np.ndarray  # (3,), sorted descending
    axis_angle: np.ndarray  # (3,), canonical
    metric: np.ndarray  # (3, 3)
    axes: np.ndarray  # (3, 3) principal directions as columns, matching lengthscales
    variance: float
    noise_sd: float
    base: str
    mean: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}


@dataclasses.dataclass(frozen=True)
class Field:
    """Points ``X`` (n, 3), values ``y`` (n,), optionally the noise-free ``f`` and the truth."""

    X: np.ndarray
    y: np.ndarray
    truth: Truth | None = None
    f: np.ndarray | None = None

    def __len__(self) -> int:
        return self.X.shape[0]

    def subset(self, idx) -> Field:
        return Field(self.X[idx], self.y[idx], self.truth, None if self.f is None else self.f[idx])

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[Field, Field]:
        """Random train/test split; ``test_fraction`` in (0, 1)."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be in (0, 1); got {test_fraction}")
        n = len(self)
        n_test = int(round(test_fraction * n))
        if n_test < 1 or n_test > n - 1:
            raise ValueError(f"`test_fraction`={test_fraction} leaves an empty split of {n} points")
        perm = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(perm[n_test:])), self.subset(np.sort(perm[:n_test]))


def design_points(n: int, design: str = "uniform", extent: float = 1.0, seed: int = 0):
    """Sampling locations in the box ``[0, extent]^3``, shape (n, 3).

    ``"grid"`` needs ``n = k^3`` and places cell centres; ``"jittered_grid"``
    takes the smallest ``k^3 >= n`` cells, jitters each point uniformly within its
    cell and keeps a random ``n`` of them.
    """
    if design not in DESIGNS:
        raise ValueError(f"`design` must be one of {DESIGNS}; got {design!r}")
    if int(n) != n or n < 2:
        raise ValueError(f"`n` must be an integer >= 2; got {n!r}")
    extent = check.positive_scalar(extent, "extent")
    rng = np.random.default_rng(seed)
    if design == "uniform":
        return rng.uniform(0.0, extent, size=(n, 3))
    k = int(round(n ** (1 / 3)))
    if design == "grid" and k**3 != n:
        raise ValueError(f"`design`='grid' needs `n` to be a perfect cube; got n={n}")
    while k**3 < n:
        k += 1
    h = extent / k
    centres = (np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5)
    if design == "grid":
        return centres * h
    pts = (centres + rng.uniform(-0.5, 0.5, size=centres.shape)) * h
    return pts[np.sort(rng.choice(len(pts), size=n, replace=False))]


def synthetic_field(
    n: int,
    lengthscales,
    axis_angle,
    base: str = "rbf",
    variance: float = 1.0,
    noise_sd: float = 0.1,
    design: str = "uniform",
    extent: float = 1.0,
    seed: int = 0,
) -> Field:
    """Draw a zero-mean GP field with a rotated anisotropic kernel and known truth.

    ``y = f + eps``, ``f ~ GP(0, s^2 phi)`` with metric ``R diag(l^-2) R^T``,
    ``eps ~ N(0, noise_sd^2)``. The draw uses the exact kernel and a jittered
    Cholesky, and is reproducible by ``seed``.
    """
    l = np.asarray(check.lengthscales(lengthscales))
    a = np.asarray(check.vector3(axis_angle, "axis_angle"))
    base = check.base_name(base)
    variance = check.positive_scalar(variance, "variance")
    noise_sd = check.positive_scalar(noise_sd, "noise_sd", allow_zero=True)
    X = design_points(n, design, extent, seed)
    params = {"lengthscales": jnp.asarray(l), "axis_angle": jnp.asarray(a), "variance": variance}
    K = kernels.gram(jnp.asarray(X), jnp.asarray(X), params, base)
    L, _ = checked_cholesky(K, "synthetic field's kernel matrix")
    rng = np.random.default_rng(seed + 1)
    f = np.asarray(L @ rng.standard_normal(n))
    y = f + noise_sd * rng.standard_normal(n)
    lc, ac = (np.asarray(v) for v in so3.canonicalize(l, a))
    truth = Truth(
        lengthscales=lc,
        axis_angle=ac,
        metric=np.asarray(so3.metric(l, a)),
        axes=np.asarray(so3.exp(ac)),
        variance=variance,
        noise_sd=noise_sd,
        base=base,
    )
    return Field(X=X, y=y, truth=truth, f=f)
