r"""Curvature adjustment of a pseudo-posterior (the whole-volume Whittle fits).

The debiased Whittle likelihood ``ell`` treats Fourier coordinates as
independent; masks, tapers and the finite domain correlate them, so the
pseudo-posterior's curvature ``H = -grad^2 ell(theta_hat)`` differs from the
variance of the score ``J = Var[grad ell(theta_hat)]``, and the frequentist
covariance of the estimator is the sandwich ``H^{-1} J H^{-1}`` (Godambe).
The curvature adjustment of composite likelihoods (Ribatet, Cooley & Davison
2012; for the debiased Whittle likelihood Goodwin, Guillaumin, Quiroz, Villani &
Kohn, arXiv 2505.23330) replaces ``ell(theta)`` by ``ell(theta_hat + C (theta -
theta_hat))`` with ``C^T H C = H J^{-1} H``, whose curvature is the Godambe
information. Draws ``theta`` of the unadjusted pseudo-posterior become draws of
the adjusted one by the inverse map,

.. math::
    \theta' = \hat\theta + B (\theta - \hat\theta), \qquad B = C^{-1},
    \qquad B H^{-1} B^T = H^{-1} J H^{-1},

here with the symmetric choice ``B = S^{1/2} H^{1/2}``, ``S = H^{-1} J H^{-1}``
(``B = I`` when ``J = H``, a correctly specified likelihood). Everything is in
the sampler's unconstrained coordinates (log signal, log noise, the metric's
free parameters, the mean), where the posterior is closest to Gaussian.
``theta_hat`` is the posterior mean there, ``H`` the Hessian of the
pseudo-log-likelihood at it (central differences of the compiled score), and
``J`` the sample covariance of the score over volumes simulated from the model
at ``theta_hat`` (a parametric bootstrap, by circulant embedding on the same
grid, mask and taper).

The prior's curvature ``P`` (with the Jacobian of the unconstrained transform)
is kept: the raw posterior's precision is ``H + P`` and the adjusted one's
``H J^{-1} H + P``, so

.. math::
    B = \Sigma_a^{1/2} (H + P)^{1/2}, \qquad \Sigma_a = (H J^{-1} H + P)^{-1},

which is the map above when ``P = 0``. Where the data barely inform a
direction (a length-scale long against the grid: ``H`` small, ``J`` noisy),
the prior holds the map near the identity there; without ``P`` the map divided
by a near-zero curvature and threw draws to length-scales of 1e8.

The rotated kernel's axis-angle chart is adjusted in the log-metric chart
(``vech(log M)``, as ``parameterization="identifiable"``): its draws of one
metric can sit in several of the 24 labellings, whose average in axis-angle
coordinates is no point of the posterior. Each adjusted metric goes back as its
canonical ``(l, a)``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from aniso_gp import gridded, kernels, so3
from aniso_gp.linalg.grid import tapered_dft
from aniso_gp.models import gp_model, parameter_model, vech

SITES_FIXED = ("A",)  # deterministic, recomputed from the adjusted draws


@dataclasses.dataclass(frozen=True)
class Adjustment:
    """The linear map applied to the draws, and what it was computed from.

    ``z_hat`` (d,), ``B``, ``H``, ``J``, ``P`` (d, d) in the unconstrained coordinates
    ordered as ``jax.flatten_util.ravel_pytree`` orders the sites (sorted names).
    ``embedding_ratio`` is the smallest circulant eigenvalue over the largest of
    the bootstrap's embedding (``> -1e-10``: exact draws).
    """

    z_hat: np.ndarray
    B: np.ndarray
    H: np.ndarray
    J: np.ndarray
    P: np.ndarray
    num_bootstrap: int
    embedding_ratio: float

    def width_factors(self) -> np.ndarray:
        """Singular values of ``B``: how much wider (> 1) or narrower the adjusted
        posterior is than the raw one along its principal directions."""
        return np.linalg.svd(self.B, compute_uv=False)

    def as_dict(self) -> dict:
        return {"method": "curvature adjustment (Ribatet et al. 2012; Goodwin et al. 2025)",
                "J": f"parametric bootstrap, {self.num_bootstrap} simulated volumes",
                "embedding_ratio": self.embedding_ratio,
                "width_factors": [float(v) for v in self.width_factors()]}


def _sqrtm(S: np.ndarray) -> np.ndarray:
    lam, V = np.linalg.eigh(0.5 * (S + S.T))
    return (V * np.sqrt(np.clip(lam, 0.0, None))) @ V.T


def _psd(S: np.ndarray) -> np.ndarray:
    lam, V = np.linalg.eigh(0.5 * (S + S.T))
    return (V * np.clip(lam, 0.0, None)) @ V.T


def adjustment_map(H, J, P=None) -> np.ndarray:
    """``B = Sigma_a^{1/2} (H + P)^{1/2}`` with ``Sigma_a = (H J^{-1} H + P)^{-1}``.

    So ``B (H + P)^{-1} B^T = Sigma_a``: draws with the raw posterior's covariance
    get the adjusted one's. ``P = 0`` (the default) gives ``Sigma_a = H^{-1} J H^{-1}``,
    the sandwich. ``H``, ``J`` (d, d) SPD; ``P`` (d, d) is projected onto PSD.
    """
    H = 0.5 * (np.asarray(H) + np.asarray(H).T)
    J = 0.5 * (np.asarray(J) + np.asarray(J).T)
    P = np.zeros_like(H) if P is None else _psd(np.asarray(P))
    precision = _psd(H @ np.linalg.solve(J, H)) + P
    lam, V = np.linalg.eigh(0.5 * (precision + precision.T))
    lam = np.clip(lam, 1e-12 * lam.max(), None)
    return (V / np.sqrt(lam)) @ V.T @ _sqrtm(H + P)


def _jacobian_by_differences(f, x, h: float = 1e-4) -> np.ndarray:
    """``d f / d x`` (m, d) by central differences, one column per coordinate."""
    cols = [(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.size)]
    return np.stack(cols, axis=1)


def _site_loglik(z, grid, data, spec):
    """``log p(data | theta(z))`` of the observed (Whittle) site only."""
    params = constrain_fn(parameter_model, (), {"spec": spec}, flat_layout(spec)(z))
    tr = handlers.trace(handlers.substitute(gp_model, params)).get_trace(
        None, data, spec=spec, grid=grid)
    return tr["y"]["fn"].log_prob(tr["y"]["value"])


@functools.lru_cache(maxsize=32)
def flat_layout(spec):
    """``unravel``: flat unconstrained coordinates (d,) -> the sites of ``spec``'s
    parameters (sorted names, as NumPyro and ``ravel_pytree`` order them)."""
    tr = handlers.trace(handlers.seed(parameter_model, 0)).get_trace(spec=spec)
    params = {k: v["value"] for k, v in tr.items()
              if v["type"] == "sample" and not v["is_observed"]}
    return ravel_pytree(unconstrain_fn(parameter_model, (), {"spec": spec}, params))[1]


# Compiled once per spec; the grid and the data are arguments, so every volume (every
# tile of a map) of one shape reuses them.
score = jax.jit(jax.grad(_site_loglik), static_argnames="spec")


@functools.partial(jax.jit, static_argnames="spec")
def prior_hessian(z, spec):
    """Hessian (d, d) of the prior's potential (with the Jacobian of the transforms)."""
    return jax.hessian(lambda v: potential_energy(
        parameter_model, (), {"spec": spec}, flat_layout(spec)(v)))(z)


@functools.partial(jax.jit, static_argnames=("torus", "shape", "num"))
def _simulated_dfts(lam, noise, mean, g, key, *, torus, shape, num):
    vols = gridded.simulate((torus, lam, None), shape, noise, mean, key, num)
    J = tapered_dft(vols, g)
    return jnp.stack([J.real, J.imag], axis=1)


def curvatures(spec, grid, data, g, z_hat, *, num_bootstrap: int = 200, seed: int = 0,
               batch: int = 8, warn: bool = True, max_factor: float = 8.0):
    """``(H, J, P, embedding_ratio)`` at ``z_hat`` (d,) in ``spec``'s flat coordinates.

    ``H = -grad^2 ell`` by central differences of the compiled score (made positive
    definite where ``z_hat`` is not a mode of ``ell``), ``J`` the covariance of the
    score over ``num_bootstrap`` volumes simulated at ``z_hat`` (the same grid, mask
    and taper), ``P`` the prior's Hessian. ``max_factor`` caps the simulation torus
    per axis (:func:`~aniso_gp.gridded.psd_torus`).
    """
    z_hat = np.asarray(z_hat, dtype=np.float64)
    H = -_jacobian_by_differences(
        lambda v: np.asarray(score(jnp.asarray(v), grid, data, spec=spec)), z_hat)
    H = 0.5 * (H + H.T)
    lam, V = np.linalg.eigh(H)
    if lam.min() <= 1e-10 * lam.max():  # not at a mode of ell: keep the curvature positive
        H = (V * np.clip(np.abs(lam), 1e-10 * lam.max(), None)) @ V.T
    P = np.asarray(prior_hessian(jnp.asarray(z_hat), spec=spec))
    P = 0.5 * (P + P.T)
    at = {k: v[0] for k, v in constrained_draws(spec, z_hat[None]).items()}
    lag_spacing = [float(t[1]) for t in grid.lags]
    torus, eig, ratio = gridded.psd_torus(grid.shape, lag_spacing, jnp.asarray(at["A"]),
                                          float(at["signal"]) ** 2, spec.base,
                                          max_factor=max_factor)
    if warn and ratio < -1e-6:
        warnings.warn(
            f"the parametric bootstrap of the curvature adjustment is approximate: no circulant "
            f"embedding up to {torus} voxels is positive definite at the posterior mean "
            f"(smallest eigenvalue {ratio:.1e} of the largest), because a length-scale "
            "is long against the grid; the adjusted intervals of that length-scale are "
            "unreliable", UserWarning, stacklevel=3)
    # A batch of volumes at a time, so memory stays at `batch` volumes.
    keys = jax.random.split(jax.random.PRNGKey(seed), -(-int(num_bootstrap) // batch))
    g = jnp.asarray(g)
    scores = np.stack([
        np.asarray(score(jnp.asarray(z_hat), grid, d, spec=spec))
        for k in keys
        for d in _simulated_dfts(eig, at["noise"], at["mean"], g, k, torus=tuple(torus),
                                 shape=tuple(grid.shape), num=batch)])[:num_bootstrap]
    return H, np.cov(scores.T), P, float(ratio)


@functools.partial(jax.jit, static_argnames="spec")
def _unconstrain(sites, spec):
    z = jax.vmap(lambda p: unconstrain_fn(parameter_model, (), {"spec": spec}, p))(sites)
    return jax.vmap(lambda p: ravel_pytree(p)[0])(z)


def unconstrained_draws(spec, samples: dict) -> np.ndarray:
    """Flat unconstrained draws (S, d) (:func:`flat_layout`) from constrained samples
    (S, ...) of the parameter sites."""
    sites = {k: jnp.asarray(v) for k, v in samples.items() if k not in SITES_FIXED}
    return np.asarray(_unconstrain(sites, spec=spec))


@functools.partial(jax.jit, static_argnames="spec")
def _constrain(z_flat, spec):
    return jax.vmap(lambda z: constrain_fn(parameter_model, (), {"spec": spec},
                                           flat_layout(spec)(z),
                                           return_deterministic=True))(z_flat)


def constrained_draws(spec, z_flat) -> dict:
    """Inverse of :func:`unconstrained_draws`: constrained sites and ``A`` per draw."""
    return {k: np.asarray(v) for k, v in _constrain(jnp.asarray(z_flat), spec=spec).items()}


def _log_metric_draws(samples: dict) -> dict:
    """Axis-angle draws -> the same metrics as ``log_metric = vech(log M)`` draws."""
    A = jnp.asarray(samples["A"])
    lam, V = jnp.linalg.eigh(A @ jnp.swapaxes(A, -1, -2))
    S = (V * jnp.log(lam)[..., None, :]) @ jnp.swapaxes(V, -1, -2)
    out = {k: samples[k] for k in ("mean", "signal", "noise")}
    return {**out, "log_metric": np.asarray(vech(S)), "A": samples["A"]}


def _axis_angle_draws(samples: dict) -> dict:
    """Log-metric draws -> the axis-angle chart's sites, each metric in canonical form."""
    A = jnp.asarray(samples["A"])
    l, V = so3.principal_axes(A @ jnp.swapaxes(A, -1, -2))
    l, a = so3.canonicalize(l, so3.log(V))
    A = jax.vmap(lambda l, a: kernels.transform_matrix({"lengthscales": l, "axis_angle": a}))(
        l, a)
    out = {k: samples[k] for k in ("mean", "signal", "noise")}
    return {**out, "log_l": np.asarray(jnp.log(l)), "axis_angle": np.asarray(a),
            "A": np.asarray(A)}


# Above this share of the grid's extent along its axis, a length-scale's adjusted 90%
# intervals were measured to under-cover: over 40 replicate 24^3 volumes each, 0.70 at
# 0.27, against 0.875 at 0.15 and 0.90 at 0.11 (reports/benchmarks.md, volume_scaling
# section 5). The 32^3 end-to-end case (0.20) put the long axes 10 deg off.
LONG_AGAINST_GRID = 0.2


def extent_ratios(lengthscales, axes, sides) -> np.ndarray:
    """Each principal length-scale over the grid's extent along its axis, (..., 3).

    ``lengthscales`` (..., 3), ``axes`` (..., 3, 3) with the principal axes as columns,
    ``sides`` (3,) the grid's side lengths ``n_d * spacing_d``; the extent of the box
    along a unit vector ``u`` is ``sum_d |u_d| side_d``.
    """
    extent = np.einsum("...dk,d->...k", np.abs(np.asarray(axes)), np.asarray(sides, float))
    return np.asarray(lengthscales) / extent


def whittle_adjustment(spec, grid, data, g, samples: dict, *, num_bootstrap: int = 200,
                       seed: int = 0, batch: int = 8) -> tuple[Adjustment, dict]:
    """Compute the curvature adjustment of a Whittle fit and apply it to its draws.

    Args:
        spec: the fit's :class:`~aniso_gp.models.ModelSpec` (``likelihood="whittle"``).
        grid: its :class:`~aniso_gp.gridded.GridData`; ``data`` the observed DFT.
        g: (n0, n1, n2) taper weights (0 off the mask).
        samples: constrained draws (S, ...) of the parameter sites (chains flattened).
        num_bootstrap: simulated volumes for ``J``.

    Returns:
        ``(adjustment, adjusted)``: the :class:`Adjustment` and the adjusted draws,
        a dict like ``samples`` with ``"A"`` recomputed.
    """
    if spec.kernel == "rotated" and spec.parameterization == "axis-angle":
        chart = dataclasses.replace(spec, parameterization="identifiable")
        adj, adjusted = whittle_adjustment(chart, grid, data, g, _log_metric_draws(samples),
                                           num_bootstrap=num_bootstrap, seed=seed, batch=batch)
        return adj, _axis_angle_draws(adjusted)
    z = unconstrained_draws(spec, samples)
    z_hat = z.mean(axis=0)
    H, Jmat, P, ratio = curvatures(spec, grid, data, g, z_hat, num_bootstrap=num_bootstrap,
                                   seed=seed, batch=batch)
    B = adjustment_map(H, Jmat, P)
    adjusted = constrained_draws(spec, z_hat + (z - z_hat) @ B.T)
    adj = Adjustment(z_hat=z_hat, B=B, H=H, J=Jmat, P=P, num_bootstrap=int(num_bootstrap),
                     embedding_ratio=ratio)
    return adj, adjusted
