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
* rotated, ``"identifiable"`` (aniso_gp's): the matrix logarithm of the metric,
  ``S = log M = R diag(-2 log l) R^T``, sampled as its six free entries
  ``log_metric = (S_xx, S_yy, S_zz, S_xy, S_xz, S_yz)`` with
  ``S_ii ~ Normal(-2 log l0, 2 s_l^2)`` and ``S_ij ~ Normal(0, s_l^2)``: a
  Gaussian orthogonal ensemble, ``p(S) ~ exp(-|S + 2 log(l0) I|_F^2 / (4 s_l^2))``.
  Its eigenvectors (the axes) are Haar distributed and its eigenvalues
  ``-2 log l`` have density ``~ prod_{i<j} |lam_i - lam_j| exp(-sum (lam_i - mu)^2
  / (4 s_l^2))``; the variances are chosen so ``E sum_i (log l_i - log l0)^2 =
  3 s_l^2``, as under the iid prior. ``S -> M = expm(S)`` is a bijection from
  symmetric matrices onto SPD ones, so every point is one metric: no labelling
  modes, no wrap at pi, and no coordinate singularity where two length-scales
  meet. Lebesgue measure on ``S`` is ``prod_{i<j} |lam_i - lam_j| dlam dR``, so a
  density smooth in ``S`` has that repulsion factor in (l, R) coordinates: where
  two length-scales meet, the rotation about the third axis becomes free, like
  the angle at the origin of polar coordinates. An ordered-length-scale chart
  turns that point into a funnel (2.8-5.2% divergences in the regime-(c)
  benchmark); in ``S`` the posterior is smooth through it.
* ARD: ``log_l`` (3,) iid as above, axes fixed to the coordinate axes.
* full: ``log_l`` (3,) the marginal length-scales along the coordinate axes and a
  correlation Cholesky factor ``corr_chol`` ~ LKJCholesky(3, eta);
  ``M = diag(1/l) C diag(1/l)`` so its Cholesky factor is ``diag(1/l) L_C``.

The observation site ``y`` is a proper distribution: :class:`GaussianProcessMVN`
(a MultivariateNormal whose log density uses the custom-VJP exact likelihood),
or :class:`LowRankGaussian` (a ``LowRankMultivariateNormal`` whose log density
is evaluated in row blocks by :func:`~aniso_gp.likelihoods.lowrank_loglik_streamed`)
for the DTC / FITC approximations, or, for a whole volume (``likelihood="whittle"``),
:class:`WhittleFourier`: independent Gaussian Fourier coefficients of the tapered
volume with the debiased expected periodogram as variances, whose log density is
the debiased spatial Whittle likelihood.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import expm
from numpyro.distributions import constraints
from numpyro.infer.util import unconstrain_fn

from aniso_gp import _validation as check
from aniso_gp import kernels, so3
from aniso_gp.likelihoods import (
    dtc_diagonal,
    exact_loglik,
    fitc_diagonal,
    lowrank_loglik,
    lowrank_loglik_streamed,
    whittle_loglik,
    whittle_terms,
)
from aniso_gp.linalg.grid import transform_folded
from aniso_gp.linalg.nystrom import cross_factor, landmark_cholesky

KERNELS = kernels.KERNELS
PARAMETERIZATIONS = ("axis-angle", "identifiable")
LIKELIHOODS = ("exact", "dtc", "fitc", "whittle")
STREAM_BLOCK = 2048  # rows per block of the low-rank density (fastest of 512-8,192 on CPU)


@dataclasses.dataclass(frozen=True)
class Priors:
    """Prior hyperparameters, in the user's units (docs/design.md section 3).

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
        return cls(**priors)

    def __post_init__(self):
        # Every field is checked here, so Priors(...) and fit(priors={...}) refuse alike.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.default is None:
                continue
            name = f"priors['{f.name}']"
            value = (check.finite_scalar(v, name) if f.name == "mean_loc"
                     else check.positive_scalar(v, name))
            object.__setattr__(self, f.name, value)


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


class LowRankGaussian(dist.LowRankMultivariateNormal):
    """``N(loc, U U^T + diag(d))`` whose ``log_prob`` is :func:`lowrank_loglik`, or
    ``loglik(value - loc)`` when given: the same density computed another way.

    Same density as NumPyro's parent; its gradient comes from the closed-form
    tangent of the Woodbury likelihood instead of autodiff through the parent's
    capacitance algebra (unused parts of the parent, and ``U`` itself when
    ``loglik`` does not read it, are dead code under ``jit``).
    """

    def __init__(self, loc, cov_factor, cov_diag, *, loglik=None, validate_args=None):
        self._factor, self._diag, self._loglik = cov_factor, cov_diag, loglik
        super().__init__(loc, cov_factor, cov_diag, validate_args=validate_args)

    def log_prob(self, value):
        if self._loglik is not None:
            return self._loglik(value - self.loc)
        return lowrank_loglik(self._factor, self._diag, value - self.loc)


class WhittleFourier(dist.Distribution):
    r"""The Whittle model of a tapered volume's Fourier coefficients.

    The value is the real half spectrum of the tapered DFT ``J = rfftn(g x)``
    held as ``(2, n0, n1, n2//2 + 1)`` (real and imaginary parts). Each Fourier
    coordinate is Gaussian with mean ``loc`` (the DFT of the constant mean,
    ``mean * rfftn(g)``) and variance ``Ibar`` (the expected periodogram),
    independently of the others; ``log_prob`` is the density of the orthonormal
    real coordinates (``sqrt 2 Re J``, ``sqrt 2 Im J`` per conjugate pair, ``J``
    at the real frequencies), which is
    :func:`~aniso_gp.likelihoods.whittle_loglik`. ``sample`` draws from the
    same model (white noise through the unitary DFT, scaled by ``sqrt(Ibar)``),
    which keeps the conjugate symmetry of a real field.

    Args:
        loc: (2, n0, n1, m) real and imaginary parts of the mean's DFT.
        expected: (n0, n1, m) expected periodogram ``Ibar > 0`` (the variances).
        weights: (n0, n1, m) multiplicities in the full grid (1 or 2).
        grid_shape: ``(n0, n1, n2)`` (static).
    """

    arg_constraints = {"loc": constraints.real, "expected": constraints.positive}
    support = constraints.real
    pytree_data_fields = ("loc", "expected", "weights")
    pytree_aux_fields = ("grid_shape",)

    def __init__(self, loc, expected, weights, grid_shape, *, validate_args=None):
        self.loc, self.expected, self.weights = loc, expected, weights
        self.grid_shape = tuple(int(n) for n in grid_shape)
        super().__init__(batch_shape=(), event_shape=jnp.shape(loc),
                         validate_args=validate_args)

    def _residual2(self, value):
        d = value - self.loc
        return d[0] ** 2 + d[1] ** 2

    def log_prob(self, value):
        return whittle_loglik(self.expected, self._residual2(value), self.weights)

    def pointwise(self, value):
        """Per-frequency terms (n0, n1, m) that sum to :meth:`log_prob`."""
        return whittle_terms(self.expected, self._residual2(value), self.weights)

    def sample(self, key, sample_shape=()):
        n = self.grid_shape
        z = jnp.fft.rfftn(jax.random.normal(key, tuple(sample_shape) + n),
                          axes=(-3, -2, -1)) / math.sqrt(math.prod(n))
        sd = jnp.sqrt(self.expected)
        return self.loc + jnp.stack([z.real * sd, z.imag * sd], axis=-4)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Static description of a model (hashable: safe as a static jit argument)."""

    kernel: str = "rotated"
    base: str = "rbf"
    parameterization: str = "axis-angle"
    likelihood: str = "exact"
    priors: Priors = Priors(lengthscale_median=0.5, signal_scale=1.0, noise_scale=0.5,
                            mean_loc=0.0, mean_sd=1.0)


_VECH = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def symmetric_from_vech(v: jnp.ndarray) -> jnp.ndarray:
    """(..., 6) ``(S_xx, S_yy, S_zz, S_xy, S_xz, S_yz)`` -> symmetric (..., 3, 3)."""
    idx = jnp.array([[0, 3, 4], [3, 1, 5], [4, 5, 2]])
    return v[..., idx]


def vech(S: jnp.ndarray) -> jnp.ndarray:
    """Inverse of :func:`symmetric_from_vech`: (..., 3, 3) -> (..., 6)."""
    return jnp.stack([S[..., i, j] for i, j in _VECH], axis=-1)


def log_metric_prior(priors: Priors) -> dist.Distribution:
    """Gaussian-orthogonal-ensemble prior on ``vech(log M)`` (see the module docstring)."""
    mu, s = -2.0 * math.log(priors.lengthscale_median), priors.log_lengthscale_sd
    loc = jnp.array([mu, mu, mu, 0.0, 0.0, 0.0])
    scale = jnp.array([math.sqrt(2.0) * s] * 3 + [s] * 3)
    return dist.Normal(loc, scale).to_event(1)


def sample_kernel_params(spec: ModelSpec) -> dict:
    """Sample the metric parameters; return a dict :func:`transform_matrix` reads."""
    p = spec.priors
    if spec.kernel == "rotated" and spec.parameterization == "identifiable":
        S = symmetric_from_vech(numpyro.sample("log_metric", log_metric_prior(p)))
        # expm(S / 2) is the symmetric square root of M = expm(S).
        return {"transform": expm(0.5 * S)}
    loc, scale = math.log(p.lengthscale_median), p.log_lengthscale_sd
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


transform_matrix = kernels.transform_matrix  # reads every dict of sample_kernel_params


def sample_parameters(spec: ModelSpec):
    """Sample the mean, signal sd, noise sd and metric; return ``(mean, signal, noise, A)``.

    ``A`` (``M = A A^T``) is recorded as the deterministic site ``"A"``: the
    labelling-free quantity every summary is built from (no cost in the gradient).
    """
    p = spec.priors
    mean = numpyro.sample("mean", dist.Normal(p.mean_loc, p.mean_sd))
    signal = numpyro.sample("signal", dist.HalfNormal(p.signal_scale))
    noise = numpyro.sample("noise", dist.HalfNormal(p.noise_scale))
    A = numpyro.deterministic("A", transform_matrix(sample_kernel_params(spec)))
    return mean, signal, noise, A


def parameter_model(*, spec: ModelSpec):
    """The parameter sites of :func:`gp_model` alone: for moving draws between the
    constrained and unconstrained spaces without evaluating a likelihood."""
    sample_parameters(spec)


def gp_model(X, y=None, *, spec: ModelSpec, landmarks=None, grid=None):
    """NumPyro model: constant mean + stationary anisotropic GP + Gaussian noise.

    Args:
        X: (N, 3) standardised coordinates (``None`` for ``likelihood="whittle"``).
        y: (N,) standardised values, or None to sample from the prior predictive;
            for ``"whittle"``, the (2, n0, n1, m) tapered DFT of the standardised
            volume (:class:`WhittleFourier`).
        spec: the static :class:`ModelSpec`.
        landmarks: (m, 3) inducing inputs for ``likelihood`` ``"dtc"``/``"fitc"``,
            fixed per fit so the target is a deterministic function of the
            hyperparameters.
        grid: for ``"whittle"``, the Fourier structure of the volume
            (:class:`aniso_gp.gridded.GridData`: lag axes in standardised units,
            mask autocorrelation, half-spectrum weights, DFT of the taper).
    """
    mean, signal, noise, A = sample_parameters(spec)
    if spec.likelihood == "whittle":
        numpyro.sample("y", whittle_site(grid, mean, signal, noise, A, spec.base), obs=y)
        return
    Z = X @ A
    n = X.shape[0]
    loc = jnp.full((n,), mean)
    if spec.likelihood == "exact":
        numpyro.sample("y", GaussianProcessMVN(loc, dense_covariance(Z, signal, noise,
                                                                       spec.base)), obs=y)
        return
    Zm, fitc = landmarks @ A, spec.likelihood == "fitc"
    U, d = lowrank_parts(Z, Zm, signal, noise, spec.base, fitc)
    # The density in row blocks. U is only built for sampling from the model: the
    # compiled potential and gradient hold no (N, m) array. On 2 CPU cores they took
    # 0.26 s against 0.36 s with U held (N = 20,000, m = 256).
    streamed = functools.partial(
        lowrank_loglik_streamed, _kernel_on(signal, spec.base), Z, Zm, noise_var=noise**2,
        kdiag=signal**2 if fitc else None, block_size=STREAM_BLOCK)
    numpyro.sample("y", LowRankGaussian(loc, U, d, loglik=streamed), obs=y)


def whittle_site(grid, mean, signal, noise, A, base) -> WhittleFourier:
    """The :class:`WhittleFourier` distribution of a volume's DFT under these parameters.

    ``Ibar = E I`` of the signal (kernel at every signed lag times the mask
    autocorrelation, folded and transformed) plus the nugget ``noise^2 c_g(0)``;
    the clip at 0 only absorbs FFT round-off of a vanishing signal spectrum.
    """
    # The signal variance scales the small (n0, n1, m) spectrum, not the lag array: its
    # gradient is then one dot product instead of a pass over 4 N lags.
    folded = kernels.folded_on_lags(grid.lags, A, grid.c_half, base)
    expected = (signal**2 * jnp.maximum(transform_folded(folded), 0.0)
                + noise**2 * grid.c_half[0, 0, 0])
    return WhittleFourier(mean * grid.G, expected, grid.weights, grid.shape)


def _kernel_on(signal, base):
    """The kernel on transformed inputs, ``(Z1, Z2) -> s^2 phi(|z - z'|)``."""
    return lambda Z1, Z2: kernels.gram_transformed(Z1, Z2, signal**2, base)


def dense_covariance(Z, signal, noise, base):
    """``signal^2 phi(|z_i - z_j|) + noise^2 delta_ij`` (N, N) on transformed
    coordinates ``Z = X A`` (N, 3)."""
    return kernels.gram_transformed(Z, Z, signal**2, base) + noise**2 * jnp.eye(Z.shape[0])


def lowrank_parts(Z, Zm, signal, noise, base, fitc: bool, Z_new=None):
    """Nystrom factor and diagonal of the DTC / FITC covariance ``U U^T + diag(d)``.

    ``Z`` (N, 3) and ``Zm`` (m, 3) are transformed inputs and landmarks. Returns
    ``(U, d)``, plus the rows ``U_new`` for ``Z_new`` (same landmark factor) if given.
    """
    kfn = _kernel_on(signal, base)
    L = landmark_cholesky(kfn, Zm)
    U = cross_factor(kfn, Z, Zm, L)
    d = fitc_diagonal(U, signal**2, noise**2) if fitc else dtc_diagonal(U, noise**2)
    if Z_new is None:
        return U, d
    return U, d, cross_factor(kfn, Z_new, Zm, L)


def unconstrained_start(spec: ModelSpec, mean, signal, noise, M) -> dict:
    """Unconstrained sampler coordinates of ``(mean, signal, noise, metric M)`` for the
    spec's kernel and parameterisation (standardised units)."""
    lam, V = np.linalg.eigh(M)
    if spec.kernel == "rotated" and spec.parameterization == "identifiable":
        sites = {"log_metric": np.asarray(vech(jnp.asarray((V * np.log(lam)) @ V.T)))}
    elif spec.kernel == "rotated":
        V = V * np.sign(np.linalg.det(V))
        sites = {"log_l": -0.5 * np.log(lam), "axis_angle": np.asarray(so3.log(jnp.asarray(V)))}
    elif spec.kernel == "ard":
        sites = {"log_l": -0.5 * np.log(np.diag(M))}
    else:
        l = 1.0 / np.sqrt(np.diag(M))
        sites = {"log_l": np.log(l), "corr_chol": np.linalg.cholesky(l[:, None] * M * l)}
    params = {"mean": mean, "signal": signal, "noise": noise, **sites}
    params = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items()}
    return jax.device_get(unconstrain_fn(parameter_model, (), {"spec": spec}, params))
