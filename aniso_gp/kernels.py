r"""Stationary 3-D kernels on linearly transformed inputs.

Every kernel here is ``k(x, x') = s^2 phi(|z - z'|)`` with ``z = A^T x`` and
``A A^T = M`` the metric, so ``|z - z'|^2 = (x - x')^T M (x - x')``:

============================  ====================================  ===========================
kernel                        ``A`` (inputs transformed as X @ A)    parameters
============================  ====================================  ===========================
:class:`RotatedAnisotropic`   ``R diag(1/l)``, ``R = so3.exp(a)``   ``lengthscales``, ``axis_angle``
:class:`ARD`                  ``diag(1/l)``                         ``lengthscales``
:class:`FullSPD`              ``L`` lower Cholesky factor of ``M``  ``cholesky``
============================  ====================================  ===========================

and ``phi`` one of the bases (``r`` the Euclidean distance in ``z``):

* ``"rbf"``: ``exp(-r^2/2)``
* ``"matern12"``: ``exp(-r)``
* ``"matern32"``: ``(1 + sqrt3 r) exp(-sqrt3 r)``
* ``"matern52"``: ``(1 + sqrt5 r + 5 r^2/3) exp(-sqrt5 r)``

The pure function :func:`gram` (what the NumPyro models call) takes a parameter
dict; its keys select the kernel. The classes wrap the same functions as GPJax 1.0
``AbstractKernel`` modules, so ``gpx.gps.Prior(kernel=RotatedAnisotropic(...))``
and ``gpx.fit`` work. Inputs are transformed once (N x 3), never per pair.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import equinox as eqx
import gpjax as gpx
import jax
import jax.numpy as jnp
from gpjax.kernels.computations import AbstractKernelComputation
from gpjax.parameters import LowerTriangular, PositiveReal, Real, val

from aniso_gp import _validation as check
from aniso_gp import so3
from aniso_gp.linalg.grid import fold
from aniso_gp.linalg.operators import matmul

_SQRT3 = 3.0**0.5
_SQRT5 = 5.0**0.5


# --------------------------------------------------------------------------- #
# Pure functions
# --------------------------------------------------------------------------- #
#: A kernel's identity is its name (``fit(kernel=...)``, the CLI, the models);
#: the classes below carry it as ``kind``, and parameter dicts are told apart by
#: their keys in :func:`transform_matrix`.
KERNELS = check.KERNELS


def transform_matrix(params: dict) -> jnp.ndarray:
    """The (3, 3) matrix ``A`` with ``M = A A^T``, chosen by the keys of ``params``.

    ``{"lengthscales", "axis_angle"}`` -> rotated; ``{"cholesky"}`` -> full SPD;
    ``{"lengthscales"}`` -> ARD; ``{"transform"}`` -> ``A`` itself (the
    log-metric chart's ``expm(S / 2)``).
    """
    if "transform" in params:
        return params["transform"]
    if "cholesky" in params:
        return jnp.tril(params["cholesky"])
    inv_l = 1.0 / params["lengthscales"]
    if "axis_angle" in params:
        return so3.exp(params["axis_angle"]) * inv_l[None, :]
    return jnp.diag(inv_l)


def metric_of(params: dict) -> jnp.ndarray:
    """Metric ``M = A A^T`` (3, 3) of a kernel parameter dict."""
    A = transform_matrix(params)
    return A @ A.T


def transform(X: jnp.ndarray, params: dict) -> jnp.ndarray:
    """Transformed inputs ``Z = X A`` (N, 3); the kernel is isotropic in ``Z``."""
    return X @ transform_matrix(params)


def _distance(r2: jnp.ndarray) -> jnp.ndarray:
    # sqrt has an infinite derivative at 0: evaluate it on a safe value and
    # select, so gradients stay finite on the diagonal of a gram matrix.
    pos = r2 > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)


class _Base(NamedTuple):
    """One isotropic base: ``phi`` and ``d phi / d(r^2)`` as functions of ``r2``."""

    phi: Callable
    slope: Callable


def _matern12_slope(r2):
    # phi is not differentiable at r = 0; 0 there matches the one-sided
    # derivative of |z - z'| used by autodiff through `_distance`.
    r = _distance(r2)
    return jnp.where(r2 > 0, -0.5 * jnp.exp(-r) / jnp.where(r2 > 0, r, 1.0), 0.0)


def _matern32(r2):
    r = _distance(r2)
    return (1.0 + _SQRT3 * r) * jnp.exp(-_SQRT3 * r)


def _matern52(r2):
    r = _distance(r2)
    return (1.0 + _SQRT5 * r + (5.0 / 3.0) * r2) * jnp.exp(-_SQRT5 * r)


def _matern52_slope(r2):
    r = _distance(r2)
    return -(5.0 / 6.0) * (1.0 + _SQRT5 * r) * jnp.exp(-_SQRT5 * r)


#: The bases by name (the names of ``_validation.BASES``, in order): the one
#: place where a base name turns into functions.
_BASE_FUNCTIONS = dict(zip(check.BASES, (
    _Base(lambda r2: jnp.exp(-0.5 * r2), lambda r2: -0.5 * jnp.exp(-0.5 * r2)),
    _Base(lambda r2: jnp.exp(-_distance(r2)), _matern12_slope),
    _Base(_matern32, lambda r2: -1.5 * jnp.exp(-_SQRT3 * _distance(r2))),
    _Base(_matern52, _matern52_slope),
), strict=True))


def correlation(r2: jnp.ndarray, base: str) -> jnp.ndarray:
    """Isotropic correlation ``phi`` as a function of the squared distance ``r2``."""
    return _BASE_FUNCTIONS[check.base_name(base)].phi(r2)


def correlation_slope(r2: jnp.ndarray, base: str) -> jnp.ndarray:
    """``d phi / d(r^2)`` of ``r2``; finite at 0 except Matérn-1/2 (set to 0 there)."""
    return _BASE_FUNCTIONS[check.base_name(base)].slope(r2)


def squared_distances(Z1: jnp.ndarray, Z2: jnp.ndarray) -> jnp.ndarray:
    """Pairwise squared Euclidean distances (N1, N2), from differences (no cancellation).

    Summed coordinate by coordinate: one elementwise loop over (N1, N2) that XLA
    vectorises along N2, where a reduction over a trailing axis of length D ran
    2.4x slower (N1 = 100,000, N2 = 512, D = 3, CPU).
    """
    return sum((Z1[:, k, None] - Z2[None, :, k]) ** 2 for k in range(Z1.shape[-1]))


def _cross_correlation_jvp(base, primals, tangents):
    # d(r2_ij) = 2 (z_i - w_j).(dz_i - dw_j), expanded into (N1, 3) x (3, N2)
    # products: autodiff through `squared_distances` would hold (N1, N2, 3)
    # differences in both passes, which made the kernel's gradient about 5x
    # its value at N = 5,000, m = 256.
    Z1, Z2 = primals
    dZ1, dZ2 = tangents
    r2 = squared_distances(Z1, Z2)
    dr2 = 2.0 * (jnp.sum(Z1 * dZ1, axis=1)[:, None] + jnp.sum(Z2 * dZ2, axis=1)[None, :]
                 - Z1 @ dZ2.T - dZ1 @ Z2.T)
    return correlation(r2, base), correlation_slope(r2, base) * dr2


_cross_correlation = jax.custom_jvp(
    lambda Z1, Z2, base: correlation(squared_distances(Z1, Z2), base), nondiff_argnums=(2,)
)
_cross_correlation.defjvp(_cross_correlation_jvp)


def gram_transformed(Z1, Z2, variance, base: str = "rbf") -> jnp.ndarray:
    """``s^2 phi(|z_i - z'_j|)`` for already-transformed inputs, (N1, N2).

    Differentiable in ``Z1``, ``Z2`` and ``variance`` by a hand-written JVP
    (``d phi = phi'(r^2) d r^2``, see :func:`correlation_slope`), which reverse
    mode transposes into two thin (N1, N2) x (N2, 3) products.
    """
    return variance * _cross_correlation(Z1, Z2, base)


def _lag_quadratic(M, t0, t1, t2):
    """``tau^T M tau`` on the outer grid of the lag axes (any 3 x 3 ``M``), by broadcasts."""
    t0, t1, t2 = t0[:, None, None], t1[None, :, None], t2[None, None, :]
    q01 = M[0, 0] * t0 * t0 + (M[0, 1] + M[1, 0]) * t0 * t1 + M[1, 1] * t1 * t1
    q2 = (M[0, 2] + M[2, 0]) * t0 + (M[1, 2] + M[2, 1]) * t1 + M[2, 2] * t2
    # M is SPD in use, so this is >= 0 up to round-off.
    return jnp.maximum(q01 + q2 * t2, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lag_kernel(M, variance, t0, t1, t2, base):
    return variance * correlation(_lag_quadratic(M, t0, t1, t2), base)


def _lag_kernel_fwd(M, variance, t0, t1, t2, base):
    k = _lag_kernel(M, variance, t0, t1, t2, base)
    # RBF: phi' = -phi / 2, so the output is all the pullback needs (reading it back
    # beat recomputing tau^T M tau and the exponential: 1.2x at 128^3).
    return k, (M, variance, t0, t1, t2, k if base == "rbf" else None)


def _quadratic_cotangent(h, t0, t1, t2):
    """``sum_tau h(tau) tau tau^T`` (3, 3) over the outer lag grid, ``h`` (m0, m1, m2).

    One product of ``h``, as (m0 m1, m2), with ``[1, t2, t2^2]`` reduces the
    contiguous axis to three planes, whose weighted sums give all six entries.
    (Autodiff of the broadcasts of :func:`_lag_quadratic` made six full
    reductions: the gradient cost 6x the value.)
    """
    m0, m1, m2 = h.shape
    P = (h.reshape(m0 * m1, m2) @ jnp.stack([jnp.ones_like(t2), t2, t2 * t2], axis=1))
    P0, P1, P2 = (P[:, i].reshape(m0, m1) for i in range(3))
    r0, c1 = P0.sum(axis=1), P0.sum(axis=0)
    m01 = t0 @ P0 @ t1
    m02 = t0 @ P1.sum(axis=1)
    m12 = P1.sum(axis=0) @ t1
    return jnp.array([[r0 @ (t0 * t0), m01, m02],
                      [m01, c1 @ (t1 * t1), m12],
                      [m02, m12, jnp.sum(P2)]])


def _lag_kernel_bwd(base, res, g):
    # d k = s^2 phi'(r2) tau^T dM tau + phi ds^2: the cotangent of M is
    # sum_tau h tau tau^T with h = g s^2 phi'(r2); r2 is recomputed rather than stored.
    M, variance, t0, t1, t2, k = res
    if k is None:
        r2 = _lag_quadratic(M, t0, t1, t2)
        h = g * variance * correlation_slope(r2, base)
        dvar = jnp.sum(g * correlation(r2, base))
    else:
        gk = g * k
        h = -0.5 * gk
        dvar = jnp.sum(gk) / variance
    dM = _quadratic_cotangent(h, t0, t1, t2)
    return dM, dvar, jnp.zeros_like(t0), jnp.zeros_like(t1), jnp.zeros_like(t2)


_lag_kernel.defvjp(_lag_kernel_fwd, _lag_kernel_bwd)


def on_lags(lags, A, variance, base: str = "rbf") -> jnp.ndarray:
    r"""Kernel at every lag of an outer grid, ``s^2 phi(tau^T M tau)``, ``M = A A^T``.

    ``lags`` are three 1-D arrays of physical lags ``(m0,)``, ``(m1,)``, ``(m2,)``
    (e.g. :func:`aniso_gp.linalg.grid.lag_axes`); the result is (m0, m1, m2).
    ``tau^T M tau`` is summed from broadcasts of the three axes, so no
    (m0 m1 m2, 3) array of lag vectors is formed. A rotated ``M`` couples the
    signs of the lag components: every signed lag is evaluated.

    Reverse-differentiable in ``A`` and ``variance`` by a hand-written pullback
    that reduces the cotangent one axis at a time (autodiff of the broadcasts
    made six full reductions: the gradient cost 6.4x the value at 64^3 voxels).
    """
    M = A @ A.T
    t0, t1, t2 = (jnp.asarray(t, dtype=jnp.float64) for t in lags)
    return _lag_kernel(M, jnp.asarray(variance, dtype=jnp.float64), t0, t1, t2, base)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _folded_lag_kernel(M, t0, t1, t2, w, base):
    return fold(w * correlation(_lag_quadratic(M, t0, t1, t2), base), (-3, -2))


def _folded_lag_kernel_fwd(M, t0, t1, t2, w, base):
    wk = w * correlation(_lag_quadratic(M, t0, t1, t2), base)
    # RBF: phi' = -phi / 2, so the weighted kernel is all the pullback needs.
    return fold(wk, (-3, -2)), (M, t0, t1, t2, w, wk if base == "rbf" else None)


def _folded_lag_kernel_bwd(base, res, g):
    # The fold's pullback repeats g over the four (tau0, tau1) quadrants; broadcast
    # into the product instead of tiled, so the cotangent h of the lag array is
    # written once and read once by the reduction.
    M, t0, t1, t2, w, wk = res
    m0, m1, m2 = w.shape
    gq = g[None, :, None, :, :]
    if wk is None:
        slope = w * correlation_slope(_lag_quadratic(M, t0, t1, t2), base)
        h = slope.reshape(2, m0 // 2, 2, m1 // 2, m2) * gq
    else:
        h = -0.5 * wk.reshape(2, m0 // 2, 2, m1 // 2, m2) * gq
    dM = _quadratic_cotangent(h.reshape(m0, m1, m2), t0, t1, t2)
    return dM, jnp.zeros_like(t0), jnp.zeros_like(t1), jnp.zeros_like(t2), None


_folded_lag_kernel.defvjp(_folded_lag_kernel_fwd, _folded_lag_kernel_bwd)


def folded_on_lags(lags, A, weights, base: str = "rbf") -> jnp.ndarray:
    r"""``sum_{tau = t mod n} w(tau) phi(tau^T M tau)`` on the first two lag axes, ``M = A A^T``.

    The lag array of :func:`on_lags` (unit variance) times ``weights`` (m0, m1, m2)
    with ``m0 = 2 n0``, ``m1 = 2 n1`` (FFT order, as
    :func:`aniso_gp.linalg.grid.lag_axes` with ``half=True``), folded onto
    (n0, n1, m2) as :func:`aniso_gp.linalg.grid.fold` does: the input of the
    expected periodogram's transform. Fused so that the pullback in ``A`` makes
    one pass over the 4 N lags (``weights`` get no cotangent): on its own the
    fold's tiled cotangent, the product and the kernel's pullback made three.
    """
    M = A @ A.T
    t0, t1, t2 = (jnp.asarray(t, dtype=jnp.float64) for t in lags)
    return _folded_lag_kernel(M, t0, t1, t2, jnp.asarray(weights, dtype=jnp.float64), base)


def gram(X1: jnp.ndarray, X2: jnp.ndarray, params: dict, base: str = "rbf") -> jnp.ndarray:
    """Cross-covariance ``K(X1, X2)`` (N1, N2) of a kernel given by ``params``.

    ``params`` holds the metric parameters (see :func:`transform_matrix`) and an
    optional ``"variance"`` (default 1).
    """
    A = transform_matrix(params)
    variance = params.get("variance", 1.0)
    return gram_transformed(X1 @ A, X2 @ A, variance, base)


def kernel_apply(X1, X2, params, base, V, block=None):
    r"""``K(X1, X2) V`` for ``V`` (N2,) or (N2, r), optionally in row blocks of ``X1``.

    With ``block`` set, ``K`` is never formed: rows of ``X1`` are processed
    ``block`` at a time (O(block * N2) memory) under ``jax.checkpoint``, so
    reverse mode recomputes each block instead of storing it.
    """
    A = transform_matrix(params)
    Z1, Z2 = X1 @ A, X2 @ A
    variance = params.get("variance", 1.0)
    if block is None or X1.shape[0] <= block:
        return matmul(gram_transformed(Z1, Z2, variance, base), V)
    n1 = Z1.shape[0]
    nb = -(-n1 // block)
    # Padding rows only add output rows, which are cut off below.
    Zp = jnp.concatenate([Z1, jnp.zeros((nb * block - n1, 3), Z1.dtype)]).reshape(nb, block, 3)

    @jax.checkpoint
    def rows(Zb):
        return matmul(gram_transformed(Zb, Z2, variance, base), V)

    out = jax.lax.map(rows, Zp)
    return out.reshape((nb * block,) + out.shape[2:])[:n1]


# --------------------------------------------------------------------------- #
# GPJax kernels
# --------------------------------------------------------------------------- #
class _TransformedComputation(AbstractKernelComputation):
    """GPJax compute engine: transform both input sets once, then one dense pass."""

    def _cross_covariance(self, kernel, x, y):
        A = kernel.transform_matrix()
        return gram_transformed(x @ A, y @ A, val(kernel.variance), kernel.base)

    def _diagonal(self, kernel, inputs):
        import lineax as lx

        d = jnp.full((inputs.shape[0],), val(kernel.variance))
        return lx.TaggedLinearOperator(lx.DiagonalLinearOperator(d), lx.positive_semidefinite_tag)


class _Anisotropic3D(gpx.kernels.AbstractKernel):
    """Shared GPJax plumbing: ``__call__`` on a pair, dense engine on transformed inputs."""

    variance: PositiveReal
    base: str = eqx.field(static=True)

    def transform_matrix(self) -> jnp.ndarray:
        raise NotImplementedError

    def params(self) -> dict:
        """The pure-function parameter dict (see :func:`gram`)."""
        raise NotImplementedError

    def metric(self) -> jnp.ndarray:
        A = self.transform_matrix()
        return A @ A.T

    def __call__(self, x, y):
        A = self.transform_matrix()
        d = (x - y) @ A
        return val(self.variance) * correlation(jnp.sum(d * d), self.base)


def _init_common(self, variance, base):
    gpx.kernels.AbstractKernel.__init__(
        self, active_dims=None, n_dims=3, compute_engine=_TransformedComputation()
    )
    self.variance = PositiveReal(check.positive_scalar(variance, "variance"))
    self.base = check.base_name(base)


class RotatedAnisotropic(_Anisotropic3D):
    r"""Rotated anisotropic kernel, ``M = R diag(l^-2) R^T`` with ``R = exp([a]x)``.

    Args:
        lengthscales: (3,) positive principal length-scales ``l``.
        axis_angle: (3,) unconstrained axis-angle vector ``a``.
        variance: signal variance ``s^2``.
        base: ``"rbf"``, ``"matern12"``, ``"matern32"`` or ``"matern52"``.
    """

    name: ClassVar[str] = "RotatedAnisotropic"
    kind: ClassVar[str] = "rotated"
    lengthscales: PositiveReal
    axis_angle: Real

    def __init__(self, lengthscales, axis_angle, variance=1.0, base="rbf"):
        _init_common(self, variance, base)
        self.lengthscales = PositiveReal(check.lengthscales(lengthscales))
        self.axis_angle = Real(check.vector3(axis_angle, "axis_angle"))

    def params(self) -> dict:
        return {
            "lengthscales": val(self.lengthscales),
            "axis_angle": val(self.axis_angle),
            "variance": val(self.variance),
        }

    def transform_matrix(self):
        return transform_matrix(self.params())


class ARD(_Anisotropic3D):
    """Axis-aligned (automatic relevance determination) kernel, ``M = diag(l^-2)``."""

    name: ClassVar[str] = "ARD"
    kind: ClassVar[str] = "ard"
    lengthscales: PositiveReal

    def __init__(self, lengthscales, variance=1.0, base="rbf"):
        _init_common(self, variance, base)
        self.lengthscales = PositiveReal(check.lengthscales(lengthscales))

    def params(self) -> dict:
        return {"lengthscales": val(self.lengthscales), "variance": val(self.variance)}

    def transform_matrix(self):
        return transform_matrix(self.params())


class FullSPD(_Anisotropic3D):
    """Kernel with a free SPD metric ``M = L L^T``.

    Give either ``cholesky`` (lower-triangular, positive diagonal) or ``metric``
    (symmetric positive definite; its Cholesky factor is taken).
    """

    name: ClassVar[str] = "FullSPD"
    kind: ClassVar[str] = "full"
    cholesky: LowerTriangular

    def __init__(self, cholesky=None, metric=None, variance=1.0, base="rbf"):
        _init_common(self, variance, base)
        if (cholesky is None) == (metric is None):
            raise ValueError("FullSPD needs exactly one of `cholesky` or `metric`")
        if metric is not None:
            M = check.matrix3(metric, "metric")
            if not jnp.allclose(M, M.T, rtol=1e-10, atol=1e-12):
                raise ValueError("`metric` must be symmetric")
            L = jnp.linalg.cholesky(M)
            if not bool(jnp.all(jnp.isfinite(L))):
                raise ValueError("`metric` must be positive definite (its Cholesky failed)")
        else:
            L = check.matrix3(cholesky, "cholesky")
            if bool(jnp.any(jnp.triu(L, 1) != 0)):
                raise ValueError("`cholesky` must be lower triangular")
            if bool(jnp.any(jnp.diag(L) <= 0)):
                raise ValueError("`cholesky` must have a strictly positive diagonal")
        self.cholesky = LowerTriangular(L)

    def params(self) -> dict:
        return {"cholesky": val(self.cholesky), "variance": val(self.variance)}

    def transform_matrix(self):
        return transform_matrix(self.params())
