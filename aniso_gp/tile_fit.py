r"""One tile of an orientation map: the grid likelihood's posterior, summarised.

A tile is a box of a volume, all tiles of a map of one shape (padded with the
mask), fitted with the debiased Whittle likelihood of the identifiable rotated
model (:mod:`aniso_gp.gridded`). Every tile of a map has the same standardised
geometry (one ``x_scale``: the coordinate sd of a complete tile), so the
standardised priors and the :class:`~aniso_gp.models.ModelSpec` are the same for
all of them and each compiled function (potential, score, L-BFGS loop, NUTS) is
compiled once per worker and reused.

Methods are values with a ``posterior(problem, z0, seed)`` that returns draws of
the unconstrained coordinates (:func:`aniso_gp.calibration.flat_layout`):

* :class:`Laplace` (the default for maps): the MAP by L-BFGS (optax), then the
  Gaussian ``N(z_map, Sigma)`` with ``Sigma = (H J^{-1} H + P)^{-1}``, the
  curvature-adjusted (Godambe) precision of the Whittle pseudo-likelihood plus
  the prior's (:mod:`aniso_gp.calibration`); ``calibrate=False`` uses ``J = H``,
  the plain Laplace approximation ``(H + P)^{-1}``.
* :class:`ShortNUTS`: short NUTS chains from the MAP, then the same adjustment
  applied to the draws (as :func:`aniso_gp.inference.fit` does for volumes).

:func:`structure_tensor_metric` is the kernel-free peer: the tile average of the
gradient structure tensor (the ``structure-tensor`` package). For a stationary
field the expected gradient covariance is ``Var(f) M`` for the RBF kernel, so
its leading eigenvector estimates the short axis and, deconvolved from the
derivative filter, it gives each tile a starting metric.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import potential_energy
from scipy import ndimage

from aniso_gp import calibration, gridded, orientation
from aniso_gp.models import ModelSpec, Priors, gp_model, unconstrained_start

INTERVAL = 0.9
CONE_LEVEL = 0.95


# --------------------------------------------------------------------------- #
# The problem of one tile                                                     #
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class TileGeometry:
    """What every tile of a map shares: shape, spacing, standardisation, model."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    base: str = "rbf"
    taper: str | None = None
    priors: Priors = Priors()

    @property
    def x_scale(self) -> float:
        """Coordinate sd of a complete tile (one scale for all axes and all tiles)."""
        return math.sqrt(np.mean([(d * d) * (n * n - 1) / 12.0
                                  for n, d in zip(self.shape, self.spacing, strict=True)]))

    @property
    def extent(self) -> np.ndarray:
        return np.array([(n - 1) * d for n, d in zip(self.shape, self.spacing, strict=True)])

    def spec(self, y_mean: float, y_sd: float) -> ModelSpec:
        return ModelSpec(kernel="rotated", base=self.base, parameterization="identifiable",
                         likelihood="whittle",
                         priors=self.priors.standardised(self.x_scale, y_mean, y_sd,
                                                         float(self.extent.max())))


@dataclasses.dataclass(frozen=True)
class TileProblem:
    """A tile ready to fit (standardised units; see :func:`gridded.fourier_data`)."""

    spec: ModelSpec
    grid: gridded.GridData
    data: jnp.ndarray
    g: np.ndarray
    y_mean: float
    y_sd: float
    x_scale: float


def tile_problem(values, observed, geometry: TileGeometry) -> TileProblem:
    """Check one tile (file dtype values, observed mask) and compute its Fourier data.

    Raises ``ValueError`` (with the reason) for a tile that cannot be fitted: all
    masked, fewer than 10 observed voxels, constant.
    """
    vals = np.where(observed, np.asarray(values, dtype=np.float64), np.nan)
    gv = gridded.as_gridded(vals, spacing=geometry.spacing, mask=np.asarray(observed, bool),
                            taper=geometry.taper)
    obs = gv.values[gv.mask]
    y_mean, y_sd = float(obs.mean()), float(obs.std())
    if not y_sd > 0:
        raise ValueError("the tile is constant over its observed voxels")
    grid, data, g = gridded.fourier_data(gv, geometry.x_scale, y_mean, y_sd)
    return TileProblem(geometry.spec(y_mean, y_sd), grid, data, np.asarray(g), y_mean, y_sd,
                       geometry.x_scale)


# --------------------------------------------------------------------------- #
# Compiled pieces (once per spec, per process)                                #
# --------------------------------------------------------------------------- #
def _potential(z, grid, data, spec):
    return potential_energy(gp_model, (None, data), {"spec": spec, "grid": grid},
                            calibration.flat_layout(spec)(z))


potential = jax.jit(_potential, static_argnames="spec")
potential_grad = jax.jit(jax.grad(_potential), static_argnames="spec")


@functools.partial(jax.jit, static_argnames=("spec", "max_iter"))
def lbfgs(z0, grid, data, tol, *, spec, max_iter):
    """Minimise the potential from ``z0`` by L-BFGS with a zoom line search (optax).

    Returns ``(z, gradient norm, iterations)``; stops when the gradient norm is
    below ``tol`` or after ``max_iter`` iterations.
    """
    fun = functools.partial(_potential, grid=grid, data=data, spec=spec)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        z, state = carry
        value, grad = value_and_grad(z, state=state)
        updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(z, updates), state

    def running(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad = optax.tree_utils.tree_get(state, "grad")
        norm = optax.tree_utils.tree_norm(grad)
        return (count == 0) | ((count < max_iter) & (norm >= tol) & jnp.isfinite(norm))

    z, state = jax.lax.while_loop(running, step, (z0, opt.init(z0)))
    grad = jax.grad(fun)(z)
    return z, jnp.linalg.norm(grad), optax.tree_utils.tree_get(state, "count")


# --------------------------------------------------------------------------- #
# Methods                                                                     #
# --------------------------------------------------------------------------- #
def _map(problem: TileProblem, z0, max_iter: int, tol: float):
    z, gnorm, count = lbfgs(jnp.asarray(z0), problem.grid, problem.data, tol,
                            spec=problem.spec, max_iter=max_iter)
    z = np.asarray(z)
    if not np.all(np.isfinite(z)):
        raise FloatingPointError("the MAP search diverged (non-finite parameters)")
    return z, {"map_grad_norm": float(gnorm), "map_iterations": int(count)}


def _curvature(problem, z_hat, num_bootstrap, calibrate, seed):
    # The smallest torus (2n per axis): J is a Monte Carlo estimate whose error
    # (about sqrt(d / B), 40% at B = 64) dwarfs what clipping a non-PSD embedding's
    # negative eigenvalues does to the draws (1e-3 of the largest for a length-scale a
    # third of the tile); a PSD torus for such a length-scale is 2-4x larger per axis.
    H, J, P, ratio = calibration.curvatures(
        problem.spec, problem.grid, problem.data, problem.g, z_hat,
        num_bootstrap=num_bootstrap if calibrate else 2, seed=seed, warn=False,
        max_factor=2.0)
    return H, (J if calibrate else H), P, ratio


def _newton_polish(problem, z, H, P, steps: int = 2):
    """Newton steps with the curvature already computed: L-BFGS stops at a gradient
    tolerance; these take the last digits cheaply (the Hessian is reused)."""
    Hf = H + P
    for _ in range(steps):
        g = np.asarray(potential_grad(jnp.asarray(z), problem.grid, problem.data,
                                      spec=problem.spec))
        step = np.linalg.solve(Hf, g)
        u0 = float(potential(jnp.asarray(z), problem.grid, problem.data, spec=problem.spec))
        if float(potential(jnp.asarray(z - step), problem.grid, problem.data,
                           spec=problem.spec)) > u0:
            break
        z = z - step
    return z


def _gaussian_draws(z_hat, precision, num: int, seed: int) -> np.ndarray:
    lam, V = np.linalg.eigh(0.5 * (precision + precision.T))
    lam = np.clip(lam, 1e-12 * lam.max(), None)
    eps = np.random.default_rng(seed).standard_normal((num, len(z_hat)))
    return z_hat + (eps / np.sqrt(lam)) @ V.T


@dataclasses.dataclass(frozen=True)
class Laplace:
    """MAP plus a Gaussian with the calibrated curvature (the default for maps).

    Attributes:
        num_draws: draws of the Gaussian for the summaries (intervals, cones).
        num_bootstrap: simulated tiles for the score variance ``J``.
        calibrate: use the Godambe precision ``H J^-1 H + P`` (else ``H + P``).
        max_iter, tol: the L-BFGS stopping rule (gradient norm, unconstrained units).
    """

    num_draws: int = 400
    num_bootstrap: int = 64
    calibrate: bool = True
    max_iter: int = 300
    tol: float = 1e-3

    def posterior(self, problem: TileProblem, z0, seed: int = 0):
        z_map, info = _map(problem, z0, self.max_iter, self.tol)
        H, J, P, ratio = _curvature(problem, z_map, self.num_bootstrap, self.calibrate, seed)
        z_map = _newton_polish(problem, z_map, H, P)
        precision = H @ np.linalg.solve(J, H) + P
        info.update(embedding_ratio=ratio,
                    width_factor=float(np.sqrt(np.max(np.linalg.eigvals(
                        np.linalg.solve(precision, H + P)).real))))
        return _gaussian_draws(z_map, precision, self.num_draws, seed), info


@dataclasses.dataclass(frozen=True)
class ShortNUTS:
    """Short NUTS chains per tile from the MAP, with the curvature adjustment.

    Attributes:
        num_warmup, num_samples, num_chains: the chains (run one after another in
            the worker; the map's parallelism is across tiles).
        num_bootstrap, calibrate: as for :class:`Laplace`.
    """

    num_warmup: int = 200
    num_samples: int = 200
    num_chains: int = 2
    num_bootstrap: int = 64
    calibrate: bool = True

    def posterior(self, problem: TileProblem, z0, seed: int = 0):
        from aniso_gp.diagnostics import max_rhat

        z_map, info = _map(problem, z0, 300, 1e-3)
        H, J, P, ratio = _curvature(problem, z_map, self.num_bootstrap, self.calibrate, seed)
        mcmc = _mcmc(problem.spec, self.num_warmup, self.num_samples)
        init = calibration.flat_layout(problem.spec)(jnp.asarray(z_map))
        keys = jax.random.split(jax.random.PRNGKey(seed), self.num_chains)
        draws, divergences = [], 0
        for k in keys:  # chains in turn: one compiled sampler, reused by every tile
            mcmc.run(k, None, problem.data, grid=problem.grid, init_params=init,
                     extra_fields=("diverging",))
            draws.append(calibration.unconstrained_draws(problem.spec, mcmc.get_samples()))
            divergences += int(np.sum(mcmc.get_extra_fields()["diverging"]))
        z = np.stack(draws)  # (C, D, d)
        rhat = max_rhat(z) if self.num_chains > 1 else float("nan")
        flat = z.reshape(-1, z.shape[-1])
        z_hat = flat.mean(axis=0)
        if self.calibrate:
            B = calibration.adjustment_map(H, J, P)
            flat = z_hat + (flat - z_hat) @ B.T
        info.update(embedding_ratio=ratio, r_hat_max=rhat, divergences=divergences)
        return flat, info


@functools.lru_cache(maxsize=4)
def _mcmc(spec, num_warmup, num_samples):
    """One chain's sampler, with the data as traced arguments (``jit_model_args``), so
    every tile and chain of a worker reuses one compilation."""
    from numpyro.infer import MCMC, NUTS

    model = functools.partial(gp_model, spec=spec)
    return MCMC(NUTS(model, dense_mass=True), num_warmup=num_warmup, num_samples=num_samples,
                num_chains=1, progress_bar=False, jit_model_args=True)


METHODS = {"laplace": Laplace, "nuts": ShortNUTS}


def as_method(method):
    """A method value from a value or its name (``"laplace"``, ``"nuts"``)."""
    if isinstance(method, Laplace | ShortNUTS):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]()
    raise ValueError(f"`method` must be one of {tuple(METHODS)} or a Laplace/ShortNUTS value; "
                     f"got {method!r}")


# --------------------------------------------------------------------------- #
# The kernel-free peer                                                        #
# --------------------------------------------------------------------------- #
# The package orders components (x, y, z) = array axes (2, 1, 0):
# (s_xx, s_yy, s_zz, s_xy, s_xz, s_yz); ours are array axes (0, 1, 2).
_ST_INDEX = np.array([[2, 5, 4], [5, 1, 3], [4, 3, 0]])


def structure_tensor_metric(values, observed, spacing, sigma: float = 1.0,
                            truncate: float = 3.0):
    """The tile's mean gradient structure tensor, as a metric and a short axis.

    With ``T`` (3, 3) the average over the interior observed voxels (farther than
    the derivative filter's reach from a masked voxel or the tile's edge) of
    ``grad f_sigma grad f_sigma^T`` (the ``structure-tensor`` package, derivatives
    of a Gaussian of ``sigma`` voxels, physical units) and ``v`` the variance of
    ``f_sigma`` there: for an RBF field ``T = v (M^-1 + 2 sigma^2 D^2)^-1``, ``D =
    diag(spacing)``, so ``M = ((T/v)^-1 - 2 sigma^2 D^2)^-1`` (eigenvalues clipped
    to length-scales between half a voxel and the tile). The short axis is the
    leading eigenvector of ``T`` (the deconvolution does not move eigenvectors
    when the spacing is isotropic).

    Returns ``(M (3, 3), short_axis (3,))`` in physical units, or ``None`` where no
    interior voxel is left.
    """
    from structure_tensor import structure_tensor_3d

    observed = np.asarray(observed, bool)
    vals = np.asarray(values, dtype=np.float64)
    vals = np.where(observed, vals - vals[observed].mean(), 0.0)
    reach = int(math.ceil(truncate * sigma))
    interior = ndimage.binary_erosion(observed, iterations=reach, border_value=0)
    if interior.sum() < 8:
        return None
    S = structure_tensor_3d(vals, sigma=sigma, rho=0.1, truncate=truncate)
    T_vox = S[:, interior].mean(axis=1)[_ST_INDEX]
    D = np.asarray(spacing, dtype=np.float64)
    T = T_vox / np.outer(D, D)
    v = float(ndimage.gaussian_filter(vals, sigma, truncate=truncate)[interior].var())
    lam, V = np.linalg.eigh(T)
    short = V[:, -1] * np.sign(V[np.argmax(np.abs(V[:, -1])), -1])
    cov = np.linalg.inv(T / v) - 2.0 * sigma**2 * np.diag(D**2)
    lam_c, V_c = np.linalg.eigh(0.5 * (cov + cov.T))
    ext = D * np.asarray(vals.shape)
    lam_c = np.clip(lam_c, (0.5 * D.min()) ** 2, ext.max() ** 2)
    return (V_c / lam_c) @ V_c.T, short


# --------------------------------------------------------------------------- #
# One tile, end to end                                                        #
# --------------------------------------------------------------------------- #
def _start(problem: TileProblem, geometry: TileGeometry, values, observed, st_metric):
    """The better (lower potential) of the moment start and the structure-tensor start."""
    ys = np.where(observed, (np.asarray(values, np.float64) - problem.y_mean) / problem.y_sd,
                  0.0)
    mean, signal, noise, M = gridded.moment_start(
        ys, problem.g, np.asarray(geometry.spacing) / problem.x_scale)
    starts = [unconstrained_start(problem.spec, mean, signal, noise, M)]
    if st_metric is not None:
        starts.append(unconstrained_start(problem.spec, mean, signal, noise,
                                    st_metric * problem.x_scale**2))
    flats = [np.asarray(ravel_pytree(s)[0]) for s in starts]
    values_at = [float(potential(jnp.asarray(f), problem.grid, problem.data, spec=problem.spec))
                 for f in flats]
    values_at = [v if np.isfinite(v) else np.inf for v in values_at]
    return flats[int(np.argmin(values_at))]


def summarise(problem: TileProblem, z_draws, geometry: TileGeometry) -> dict:
    """Length-scales, axes, cones, trend/plunge, flags and the mean metric of the draws."""
    sites = calibration.constrained_draws(problem.spec, z_draws)
    A = sites["A"]
    M = A @ np.swapaxes(A, -1, -2) / problem.x_scale**2
    l, V = orientation.axes_from_metrics(M)
    table = orientation.orientation_table(l, V, interval=INTERVAL, cone_level=CONE_LEVEL,
                                          extent=geometry.extent)
    notes = table["note"].tolist()
    return {
        "lengthscale": table["l_median"].to_numpy(),
        "lengthscale_lo": table["l_lo"].to_numpy(),
        "lengthscale_hi": table["l_hi"].to_numpy(),
        "axis": table[["dir_x", "dir_y", "dir_z"]].to_numpy(),
        "cone": table[f"cone{100 * CONE_LEVEL:g}_deg"].to_numpy(),
        "trend": table["trend_deg"].to_numpy(),
        "plunge": table["plunge_deg"].to_numpy(),
        "weakly_identified": np.array(["weakly identified" in n for n in notes]),
        "not_distinguishable": np.array([("distinguishable" in n or "isotropic" in n)
                                         for n in notes]),
        "longer_than_tile": np.array(["longer than the sampled domain" in n for n in notes]),
        "metric": orientation.log_euclidean_mean(M),
        "signal": float(np.median(sites["signal"])) * problem.y_sd,
        "noise": float(np.median(sites["noise"])) * problem.y_sd,
    }


def fit_tile(values, observed, geometry: TileGeometry, method, *, seed: int = 0,
             st_sigma: float = 1.0, min_observed: float = 0.5) -> dict:
    """Fit one tile and return its record (see :data:`RECORD`); never raises.

    A tile with fewer than ``min_observed`` of its voxels observed, or one that
    cannot be fitted, gets ``status="failed"`` and the reason in ``error``.
    """
    t0 = time.perf_counter()
    observed = np.asarray(observed, bool)
    record = {"observed_fraction": float(observed.mean())}
    try:
        if record["observed_fraction"] < min_observed:
            raise ValueError(f"only {100 * record['observed_fraction']:.0f}% of the tile is "
                             f"observed (min_observed={min_observed:g})")
        problem = tile_problem(values, observed, geometry)
        st = structure_tensor_metric(values, observed, geometry.spacing, sigma=st_sigma)
        z0 = _start(problem, geometry, values, observed, None if st is None else st[0])
        z_draws, info = as_method(method).posterior(problem, z0, seed)
        record.update(summarise(problem, z_draws, geometry), **info)
        if st is not None:
            gp_short = record["axis"][2]
            angle = float(orientation.axial_angles(st[1][None], gp_short)[0])
            record.update(st_axis=st[1], st_angle=angle,
                          st_within_cone=bool(angle <= record["cone"][2]))
        record["status"], record["error"] = "ok", ""
    except Exception as err:  # a failed tile is recorded, not raised (the map goes on)
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc(limit=4)
    record["fit_time_s"] = time.perf_counter() - t0
    return record
