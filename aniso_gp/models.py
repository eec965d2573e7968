r"""NumPyro models for the rotated, ARD and full-SPD kernels, with the priors in one place.

All models work on *standardised* data (coordinates centred and divided by one
common scale, so rotations are preserved; values centred and scaled to unit sd).
:func:`Priors.standardised` converts priors given in the user's units.

Sites (standardised units):

* ``mean`` ~ Normal(mean_loc, mean_sd); ``signal`` ~ HalfNormal(signal_scale) (sd);
  ``noise`` ~ HalfNormal(noise_scale) (sd).
* rotated, ``"axis-angle"`` (the paper's): ``log_l`` (3,) iid
  Normal(log l0, s_l), exchangeable; ``axis_angle`` (3,) ~ Normal(0, 1.5^2 I).
  The posterior has 24 x (wraps) equivalent modes; draws are canonicalised later.
* rotated, ``"identifiable"`` (aniso_gp's): ``log_l_sorted`` (3,) the order
  statistics of the same iid prior (so l_1 > l_2 > l_3: no permutation modes),
  and the rotation in a local chart ``R = R0 exp([delta]x)`` around a fixed frame
  ``R0`` (a pilot MAP estimate, passed as ``frame``). ``delta`` (3,) carries the
  Haar (uniform) prior on SO(3) written in exponential coordinates,
  ``p(delta) ~ (1 - cos|delta|) / |delta|^2``. The four sign patterns of the axes
  are rotations by pi about a principal axis, so they sit on the chart's
  boundary ``|delta| = pi``: inside it the labelling is unique and the geometry
  near-Euclidean, with no wrap.
* ARD: ``log_l`` (3,) iid as above, axes fixed to the coordinate axes.
* full: ``log_l`` (3,) the marginal length-scales along the coordinate axes and a
  correlation Cholesky factor ``corr_chol`` ~ LKJCholesky(3, eta);
  ``M = diag(1/l) C diag(1/l)`` so its Cholesky factor is ``diag(1/l) L_C``.

The observation site ``y`` is a proper distribution: :class:`GaussianProcessMVN`
(a MultivariateNormal whose log density uses the custom-VJP exact likelihood),
or NumPyro's ``LowRankMultivariateNormal`` for the DTC / FITC approximations.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from aniso_gp import kernels, so3
from aniso_gp.likelihoods import dtc_diagonal, exact_loglik, fitc_diagonal
from aniso_gp.linalg.nystrom import cross_factor, landmark_cholesky

jax.config.update("jax_enable_x64", True)

KERNELS = ("rotated", "ard", "full")
PARAMETERIZATIONS = ("axis-angle", "identifiable")
LIKELIHOODS = ("exact", "dtc", "fitc")


@dataclasses.dataclass(frozen=True)
class Priors:
    """Prior hyperparameters, in the user's units (DESIGN.md section 3).

    ``None`` fields take data-driven defaults in :func:`Priors.standardised`:
    ``lengthscale_median = extent / 4`` (extent: the largest side of the data's
    bounding box), ``signal_scale = sd(y)``, ``noise_scale = sd(y) / 2``,
    ``mean_loc = mean(y)``, ``mean_sd = sd(y)``.
    """

    lengthscale_median: float | None = None
    log_lengthscale_sd: float = 1.0
    axis_angle_sd: float = 1.5
    signal_scale: float | None = None
    noise_scale: float | None = None
    mean_loc: float | None = None
    mean_sd: float | None = None
    lkj_concentration: float = 2.0

    def standardised(self, x_scale: float, y_mean: float, y_sd: float, extent: float) -> Priors:
        """The same priors in standardised units (x / x_scale, (y - y_mean) / y_sd)."""

        def pick(v, default):
            return default if v is None else v

        return Priors(
            lengthscale_median=pick(self.lengthscale_median, extent / 4.0) / x_scale,
            log_lengthscale_sd=self.log_lengthscale_sd,
            axis_angle_sd=self.axis_angle_sd,
            signal_scale=pick(self.signal_scale, y_sd) / y_sd,
            noise_scale=pick(self.noise_scale, 0.5 * y_sd) / y_sd,
            mean_loc=(pick(self.mean_loc, y_mean) - y_mean) / y_sd,
            mean_sd=pick(self.mean_sd, y_sd) / y_sd,
            lkj_concentration=self.lkj_concentration,
        )

    @classmethod
    def from_user(cls, priors) -> Priors:
        if priors is None:
            return cls()
        if isinstance(priors, Priors):
            return priors
        if not isinstance(priors, dict):
            raise ValueError(f"`priors` must be a dict or Priors; got {type(priors).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(priors) - fields
        if unknown:
            raise ValueError(
                f"`priors` has unknown keys {sorted(unknown)}; known: {sorted(fields)}")
        for k, v in priors.items():
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                if not (k == "mean_loc" and isinstance(v, int | float) and math.isfinite(v)):
                    raise ValueError(f"`priors['{k}']` must be a finite positive number; got {v!r}")
        return cls(**priors)


class SortedNormal(dist.Distribution):
    """Order statistics (ascending) of ``n`` iid Normal(loc, scale) draws.

    Density ``n! prod_i N(x_i; loc, scale)`` on ``x_1 < ... < x_n``: the exchangeable
    iid prior restricted to one labelling, so both parameterisations of the
    rotated kernel share the same prior on the metric.
    """

    support = constraints.ordered_vector
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    reparametrized_params = ["loc", "scale"]

    def __init__(self, loc, scale, n: int, *, validate_args=None):
        self.loc, self.scale, self.n = loc, scale, n
        super().__init__(batch_shape=(), event_shape=(n,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, sample_shape + (self.n,))
        return jnp.sort(self.loc + self.scale * eps, axis=-1)

    def log_prob(self, value):
        lp = dist.Normal(self.loc, self.scale).log_prob(value).sum(-1)
        return lp + math.lgamma(self.n + 1)


class GaussianProcessMVN(dist.MultivariateNormal):
    """MultivariateNormal whose ``log_prob`` is :func:`exact_loglik` (custom VJP).

    The parent's Cholesky (computed in its constructor) is dead code under ``jit``
    whenever only ``log_prob`` is used, so it costs nothing in the sampler.
    """

    def __init__(self, loc, covariance_matrix, *, validate_args=None):
        self._cov = covariance_matrix
        super().__init__(loc, covariance_matrix=covariance_matrix, validate_args=validate_args)

    def log_prob(self, value):
        return exact_loglik(self._cov, value - self.loc)


class HaarExpCoords(dist.Distribution):
    """Haar measure on SO(3) in exponential coordinates.

    ``p(d) = (1 - cos t) / (4 pi^2 t^2)`` with ``t = |d|``.

    Normalised on the ball ``t <= pi`` (each rotation once). The density is
    extended to all of R^3 for the sampler; it vanishes at ``t = 2 pi``, which
    acts as a barrier, and a posterior concentrated near the chart's centre never
    gets there.
    """

    support = constraints.real_vector
    arg_constraints = {}

    def __init__(self, *, validate_args=None):
        super().__init__(batch_shape=(), event_shape=(3,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        q = jax.random.normal(key, sample_shape + (4,))
        return so3.log(so3.from_quaternion(q))

    def log_prob(self, value):
        t2 = jnp.sum(value * value, axis=-1)
        small = t2 < 1e-6
        t2s = jnp.where(small, 1.0, t2)
        # (1 - cos t) / t^2 = 2 sin^2(t/2) / t^2, with its Taylor series near 0.
        ratio = jnp.where(small, 0.5 - t2 / 24.0, 2.0 * jnp.sin(0.5 * jnp.sqrt(t2s)) ** 2 / t2s)
        return jnp.log(ratio) - math.log(4.0 * math.pi**2)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Static description of a model (hashable: safe as a static jit argument)."""

    kernel: str = "rotated"
    base: str = "rbf"
    parameterization: str = "axis-angle"
    likelihood: str = "exact"
    priors: Priors = Priors(lengthscale_median=0.5, signal_scale=1.0, noise_scale=0.5,
                            mean_loc=0.0, mean_sd=1.0)


def sample_kernel_params(spec: ModelSpec, frame=None) -> dict:
    """Sample the metric parameters; return the :func:`kernels.gram` parameter dict.

    ``frame`` (3, 3) is the chart centre ``R0`` of the identifiable parameterisation.
    """
    p = spec.priors
    loc, scale = math.log(p.lengthscale_median), p.log_lengthscale_sd
    if spec.kernel == "rotated" and spec.parameterization == "identifiable":
        log_l = numpyro.sample("log_l_sorted", SortedNormal(loc, scale, 3))[..., ::-1]
        delta = numpyro.sample("delta", HaarExpCoords())
        R0 = jnp.eye(3) if frame is None else frame
        return {"rotation": R0 @ so3.exp(delta), "lengthscales": jnp.exp(log_l)}
    log_l = numpyro.sample("log_l", dist.Normal(loc, scale).expand([3]).to_event(1))
    l = jnp.exp(log_l)
    if spec.kernel == "ard":
        return {"lengthscales": l}
    if spec.kernel == "rotated":
        a = numpyro.sample(
            "axis_angle", dist.Normal(0.0, p.axis_angle_sd).expand([3]).to_event(1)
        )
        return {"lengthscales": l, "axis_angle": a}
    corr = numpyro.sample("corr_chol", dist.LKJCholesky(3, p.lkj_concentration))
    return {"cholesky": corr / l[:, None]}


def transform_matrix(kparams: dict) -> jnp.ndarray:
    """``A`` with ``M = A A^T`` for any parameter dict from :func:`sample_kernel_params`."""
    if "rotation" in kparams:
        return kparams["rotation"] / kparams["lengthscales"][None, :]
    return kernels.transform_matrix(kparams)


def gp_model(X, y=None, *, spec: ModelSpec, landmarks=None, frame=None):
    """NumPyro model: constant mean + stationary anisotropic GP + Gaussian noise.

    Args:
        X: (N, 3) standardised coordinates.
        y: (N,) standardised values, or None to sample from the prior predictive.
        spec: the static :class:`ModelSpec`.
        landmarks: (m, 3) inducing inputs for ``likelihood`` ``"dtc"``/``"fitc"``,
            fixed per fit so the target is a deterministic function of the
            hyperparameters.
        frame: (3, 3) chart centre for the identifiable parameterisation.
    """
    p = spec.priors
    mean = numpyro.sample("mean", dist.Normal(p.mean_loc, p.mean_sd))
    signal = numpyro.sample("signal", dist.HalfNormal(p.signal_scale))
    noise = numpyro.sample("noise", dist.HalfNormal(p.noise_scale))
    kparams = sample_kernel_params(spec, frame)
    # Recorded per draw (no cost in the gradient): the metric M = A A^T is the
    # labelling-free quantity every summary is built from.
    A = numpyro.deterministic("A", transform_matrix(kparams))
    Z = X @ A
    n = X.shape[0]
    loc = jnp.full((n,), mean)
    if spec.likelihood == "exact":
        C = kernels.gram_transformed(Z, Z, signal**2, spec.base) + noise**2 * jnp.eye(n)
        numpyro.sample("y", GaussianProcessMVN(loc, C), obs=y)
        return
    U, d = lowrank_parts(Z, landmarks @ A, signal, noise, spec.base, spec.likelihood == "fitc")
    numpyro.sample("y", dist.LowRankMultivariateNormal(loc, U, d), obs=y)


def lowrank_parts(Z, Zm, signal, noise, base, fitc: bool, Z_new=None):
    """Nystrom factor and diagonal of the DTC / FITC covariance ``U U^T + diag(d)``.

    ``Z`` (N, 3) and ``Zm`` (m, 3) are transformed inputs and landmarks. Returns
    ``(U, d)``, plus the rows ``U_new`` for ``Z_new`` (same landmark factor) if given.
    """

    def kfn(Z1, Z2):
        return kernels.gram_transformed(Z1, Z2, signal**2, base)

    L = landmark_cholesky(kfn, Zm)
    U = cross_factor(kfn, Z, Zm, L)
    d = fitc_diagonal(U, signal**2, noise**2) if fitc else dtc_diagonal(U, noise**2)
    if Z_new is None:
        return U, d
    return U, d, cross_factor(kfn, Z_new, Zm, L)
