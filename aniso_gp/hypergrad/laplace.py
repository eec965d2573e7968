r"""Laplace-approximation GP with a Poisson (log link) or Student-t likelihood: the
mode by Newton in whitened coordinates, the log marginal differentiated
implicitly.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from aniso_gp import _validation as check
from aniso_gp import kernels
from aniso_gp.hypergrad.implicit import ImplicitSolution, implicit_solution
from aniso_gp.hypergrad.solvers import (
    _all_finite,
    _require,
    as_solver,
    plain_errors,
)
from aniso_gp.linalg import nystrom
from aniso_gp.linalg.operators import matmul

# --------------------------------------------------------------------------- #
# Laplace-approximation GP
# --------------------------------------------------------------------------- #
LAPLACE_LIKELIHOODS = ("poisson", "student_t")


def log_likelihood(likelihood: str, y, f, lik_params: dict) -> jnp.ndarray:
    r"""``sum_i log p(y_i | f_i)``.

    * ``"poisson"`` (log link): ``y f - exp(f) - log y!``.
    * ``"student_t"``: location ``f``, scale ``sigma``, ``df`` ``nu``:
      ``log Gamma((nu+1)/2) - log Gamma(nu/2) - log(nu pi sigma^2)/2
      - (nu+1)/2 log(1 + (y - f)^2/(nu sigma^2))``.
    """
    check.one_of(likelihood, LAPLACE_LIKELIHOODS, "likelihood")
    if likelihood == "poisson":
        return jnp.sum(y * f - jnp.exp(f) - jax.scipy.special.gammaln(y + 1.0))
    nu, sigma = lik_params["df"], lik_params["scale"]  # student_t
    r2 = (y - f) ** 2 / (nu * sigma**2)
    const = (
        jax.scipy.special.gammaln(0.5 * (nu + 1.0))
        - jax.scipy.special.gammaln(0.5 * nu)
        - 0.5 * jnp.log(nu * jnp.pi * sigma**2)
    )
    return jnp.sum(const - 0.5 * (nu + 1.0) * jnp.log1p(r2))


def _neg_curvature(likelihood, y, f, lik_params):
    """``W = -d^2 log p / df^2`` (diagonal, (N,)); the likelihood factorises over points."""

    def grad_f(ff):
        return jax.grad(lambda g: log_likelihood(likelihood, y, g, lik_params))(ff)

    return -jax.jvp(grad_f, (f,), (jnp.ones_like(f),))[1]


def _whitened_loss(likelihood):
    """``Psi(z; h) = -log p(y | m + L z) + |z|^2 / 2``, ``h = {"L", "mean", "lik"}``."""

    def loss(z, h, y):
        f = h["mean"] + matmul(h["L"], z)
        return -log_likelihood(likelihood, y, f, h["lik"]) + 0.5 * jnp.dot(z, z)

    return loss


class LaplaceMode(NamedTuple):
    """Posterior mode of a Laplace GP.

    Attributes:
        f: (N,) latent mode ``m + L z``.
        z: (N,) whitened mode.
        W: (N,) negative log-likelihood curvature at ``f``.
        iterations: Newton iterations.
        grad_norm: max-norm of the gradient of the whitened objective at the mode.
        converged: ``grad_norm <= tol``.
    """

    f: jnp.ndarray
    z: jnp.ndarray
    W: jnp.ndarray
    iterations: jnp.ndarray
    grad_norm: jnp.ndarray
    converged: jnp.ndarray


def _newton_whitened(likelihood, h, y, max_iter: int, tol: float):
    r"""Newton on ``Psi(z)`` with Armijo backtracking; where the Student-t likelihood
    makes the Hessian indefinite, ``W`` is clipped at 0 for that step."""
    loss = _whitened_loss(likelihood)
    L = h["L"]
    n = L.shape[0]
    eye = jnp.eye(n, dtype=L.dtype)

    def psi(z):
        return loss(z, h, y)

    def cond(state):
        it, _, _, _, go_on = state
        return (it < max_iter) & go_on

    def body(state):
        it, z, val, gnorm_prev, _ = state
        g = jax.grad(psi)(z)
        W = _neg_curvature(likelihood, y, h["mean"] + matmul(L, z), h["lik"])
        # The true Hessian where it is positive definite (always near a mode:
        # quadratic convergence); else W clipped at 0, whose I + L^T W+ L has every
        # eigenvalue >= 1 (a descent direction, no jitter needed).
        C = jnp.linalg.cholesky(eye + matmul(L.T * W, L))
        C = jax.lax.cond(
            _all_finite(C),
            lambda: C,
            lambda: jnp.linalg.cholesky(eye + matmul(L.T * jnp.maximum(W, 0.0), L)),
        )
        d = cho_solve((C, True), g)
        slope = jnp.dot(g, d)
        # Round-off slack: at the mode Psi cannot resolve decreases below eps |Psi|.
        slack = 1e-14 * jnp.abs(val)

        def ls_cond(s):
            a, v = s
            return (v > val - 1e-4 * a * slope + slack) & (a > 1e-10)

        def ls_body(s):
            a, _ = s
            return 0.5 * a, psi(z - 0.5 * a * d)

        a, v = jax.lax.while_loop(ls_cond, ls_body, (1.0, psi(z - d)))
        z_new = jnp.where(v <= val + slack, z - a * d, z)
        g_new = jax.grad(psi)(z_new)
        gnorm = jnp.max(jnp.abs(g_new))
        # One Newton step past the tolerance: quadratic convergence takes the mode
        # to round-off, so that the log-determinant (first order in the mode) and
        # finite differences of it are not limited by `tol`.
        return it + 1, z_new, jnp.minimum(v, val), gnorm, gnorm_prev > tol

    z0 = jnp.zeros(n, dtype=L.dtype)
    g0 = jnp.max(jnp.abs(jax.grad(psi)(z0)))
    init = (jnp.asarray(0, jnp.int32), z0, psi(z0), g0, jnp.asarray(True))
    it, z, _, gnorm, _ = jax.lax.while_loop(cond, body, init)
    jax.debug.callback(_warn_unconverged, gnorm, it, tol, max_iter)
    return z, it, gnorm


def _warn_unconverged(gnorm, iterations, tol: float, max_iter: int) -> None:
    gnorm, iterations = float(np.max(gnorm)), int(np.max(iterations))
    if not gnorm <= tol:
        warnings.warn(
            f"Laplace mode not converged: Newton stopped after {iterations} of max_iter="
            f"{max_iter} iterations with max |grad Psi| = {gnorm:.3g} > tol = {tol:g}; the "
            "mode, and the log-marginal and gradients built on it, are approximate (raise "
            "max_iter)", RuntimeWarning, stacklevel=2)


def _laplace_check(theta, X, y, likelihood, base, max_iter, tol):
    """Eager input checks; returns coerced ``X`` (N, 3) and ``y`` (N,)."""
    check.tolerance(tol)
    check.one_of(likelihood, LAPLACE_LIKELIHOODS, "likelihood")
    X = check.coordinates(X, "X", min_points=2)
    y = check.values(y, X.shape[0], "y")
    check.base_name(base)
    check.positive_int(max_iter, "max_iter")
    if not isinstance(theta, dict) or "kernel" not in theta:
        raise ValueError('`theta` must be a dict {"kernel": {...}, "mean": m, "likelihood": {...}}')
    try:
        jax.eval_shape(lambda k: kernels.gram(X[:2], X[:2], k, base), theta["kernel"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"`theta['kernel']` is not a kernel parameter dict (see "
                         f"kernels.gram): {type(err).__name__}: {err}") from None
    lik = theta.get("likelihood", {})
    if likelihood == "student_t":
        for name in ("df", "scale"):
            if name not in lik:
                raise ValueError(f'student_t needs theta["likelihood"]["{name}"]')
            if not check.is_traced(lik[name]) and not float(lik[name]) > 0:
                raise ValueError(f'theta["likelihood"]["{name}"] must be > 0; got {lik[name]}')
    elif not check.is_traced(y):
        yn = np.asarray(y)
        if np.any(yn < 0) or np.any(yn != np.round(yn)):
            raise ValueError("poisson likelihood needs non-negative integer counts `y`")
    return X, y


def _laplace_prior(theta, X, base):
    """``h = {"L": chol K, "mean", "lik"}``: everything the whitened inner problem depends on."""
    K = kernels.gram(X, X, theta["kernel"], base)
    # dense.cholesky's jitter, with a tangent rule that reverse mode can use.
    L = nystrom.jittered_cholesky(K)
    L = _require(L, _all_finite(L), "the prior kernel matrix is not positive definite")
    lik = dict(theta.get("likelihood", {}))
    return {"L": L, "mean": jnp.asarray(theta.get("mean", 0.0), jnp.float64), "lik": lik}


_LAPLACE_STATIC = ("likelihood", "base", "max_iter", "tol")


@functools.partial(jax.jit, static_argnames=_LAPLACE_STATIC)
def _laplace_mode_jit(theta, X, y, likelihood, base, max_iter, tol):
    h = _laplace_prior(theta, X, base)
    z, it, gnorm = _newton_whitened(likelihood, h, y, max_iter, tol)
    f = h["mean"] + matmul(h["L"], z)
    W = _neg_curvature(likelihood, y, f, h["lik"])
    return LaplaceMode(f, z, W, it, gnorm, gnorm <= tol)


@plain_errors
def laplace_mode(
    theta: dict,
    X,
    y,
    likelihood: str = "poisson",
    base: str = "rbf",
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> LaplaceMode:
    r"""Posterior mode of a GP with a non-Gaussian likelihood, by Newton iterations.

    Prior ``f ~ N(m, K)`` with ``K = L L^T`` (``linalg.dense.cholesky``); the mode is
    found in whitened coordinates ``f = m + L z``, where the Hessian of
    ``Psi(z) = -log p(y|f) + |z|^2/2`` is ``I + L^T W L`` (eigenvalues >= 1 where
    ``W >= 0``), far better conditioned than ``W + K^{-1}``.

    Args:
        theta: ``{"kernel": kernel params (see kernels.gram), "mean": m,
            "likelihood": {} (poisson) or {"df": nu, "scale": sigma} (student_t)}``.
        X: (N, 3) inputs. y: (N,) counts (poisson) or values (student_t).
        likelihood: ``"poisson"`` or ``"student_t"``.
        base: kernel base.
        max_iter, tol: Newton cap and max-norm gradient tolerance.
    """
    X, y = _laplace_check(theta, X, y, likelihood, base, max_iter, tol)
    return _laplace_mode_jit(
        theta, X, y, likelihood=likelihood, base=base, max_iter=max_iter, tol=float(tol)
    )


def _laplace_objective(theta, X, y, sink, likelihood, base, solver, max_iter, tol):
    h = _laplace_prior(theta, X, base)
    loss = _whitened_loss(likelihood)
    sol = implicit_solution(
        lambda hh, yy: _newton_whitened(likelihood, hh, yy, max_iter, tol)[0], loss, solver
    )
    z = sol.with_sink(h, sink, y)
    f = h["mean"] + matmul(h["L"], z)
    W = _neg_curvature(likelihood, y, f, h["lik"])
    n = z.shape[0]
    B = jnp.eye(n) + matmul(h["L"].T * W, h["L"])
    # At a mode B is positive definite (second-order condition): a failed
    # factorisation means no Laplace approximation exists there, reported as NaN.
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(0.5 * (B + B.T)))))
    return log_likelihood(likelihood, y, f, h["lik"]) - 0.5 * jnp.dot(z, z) - 0.5 * logdet


@functools.partial(jax.jit, static_argnames=_LAPLACE_STATIC + ("solver",))
def _laplace_objective_jit(theta, X, y, likelihood, base, solver, max_iter, tol):
    sink = ImplicitSolution.sink()
    return _laplace_objective(theta, X, y, sink, likelihood, base, solver, max_iter, tol)


@functools.partial(jax.jit, static_argnames=_LAPLACE_STATIC + ("solver",))
def _laplace_value_and_grad_jit(theta, X, y, likelihood, base, solver, max_iter, tol):
    def objective(th, sink):
        return _laplace_objective(th, X, y, sink, likelihood, base, solver, max_iter, tol)

    return jax.value_and_grad(objective, argnums=(0, 1))(theta, ImplicitSolution.sink())


@plain_errors
def laplace_log_marginal(theta: dict, X, y, likelihood: str = "poisson", base: str = "rbf",
                         solver="auto", *, max_iter: int = 100, tol: float = 1e-10) -> jnp.ndarray:
    r"""Laplace approximation of ``log p(y | theta)``, differentiable in ``theta``.

    .. math::
        \log q(y) = \log p(y | \hat f) - \tfrac12 \hat z^T \hat z
                    - \tfrac12 \log |I + L^T \hat W L|

    (``hat f = m + L hat z`` the mode, ``|I + L^T W L| = |I + W^{1/2} K W^{1/2}|``).
    ``jax.grad`` of it differentiates the mode implicitly (:func:`implicit_solution`,
    iHVPs with ``solver``), the Cholesky of ``K`` and the log-determinant by
    ordinary autodiff. ``theta`` as in :func:`laplace_mode`. Compiled once per
    (likelihood, base, solver, max_iter, tol) and input shapes.
    """
    X, y = _laplace_check(theta, X, y, likelihood, base, max_iter, tol)
    solver = as_solver(solver)
    return _laplace_objective_jit(
        theta, X, y, likelihood=likelihood, base=base, solver=solver, max_iter=max_iter,
        tol=float(tol),
    )


@plain_errors
def laplace_value_and_grad(theta: dict, X, y, likelihood: str = "poisson", base: str = "rbf",
                           solver="auto", *, max_iter: int = 100, tol: float = 1e-10):
    """``(log q, d log q / d theta, info)``: :func:`laplace_log_marginal`, its gradient
    (a dict like ``theta``) and the :class:`IHVPInfo` of the implicit solve."""
    X, y = _laplace_check(theta, X, y, likelihood, base, max_iter, tol)
    solver = as_solver(solver)
    value, (g, sink_grad) = _laplace_value_and_grad_jit(
        theta, X, y, likelihood=likelihood, base=base, solver=solver, max_iter=max_iter,
        tol=float(tol),
    )
    return value, g, ImplicitSolution.info(sink_grad)
