r"""Iterative solvers for symmetric positive definite systems ``A x = b``.

Every solver returns ``(x, SolveInfo)``. ``A`` is given as a function
``matvec(v) -> A v`` on 1-D arrays ``v`` (n,); ``b`` is (n,).

* :func:`cg` / :func:`pcg`: (preconditioned) conjugate gradients in a
  ``lax.while_loop``; they stop when ``|b - A x| <= tol |b|`` (recursive
  residual) or after ``maxiter`` iterations.
* :func:`neumann` / :func:`preconditioned_neumann`: the truncated series
  ``x = lr sum_{k<steps} (I - lr P A)^k P b`` (``P = I`` for the plain one),
  which converges when ``0 < lr < 2 / lambda_max(P A)``.
* :func:`richardson`: ``x <- x + lr P^{-1} (b - A x)`` from ``x = 0``, whose iterates
  are the partial sums of the preconditioned Neumann series, stopped like CG at
  ``|b - A x| <= tol |b|``; :func:`largest_eigenvalue` (power iteration) picks a
  safe ``lr``.
* :func:`nystrom_preconditioner`: ``P^{-1} = (lam_k + mu) U (Lam + mu I)^{-1} U^T
  + (I - U U^T)`` for ``A = K + mu I`` with ``K ~ U Lam U^T`` (Frangella, Tropp
  & Udell 2023); with rank at least the effective dimension the PCG iteration
  count stops growing with ``n`` and the conditioning of ``K``.

Gradients. Each solve is wrapped in ``lax.custom_linear_solve(symmetric=True)``:
``x`` is differentiated as ``A^{-1} b`` by implicit differentiation (one more
solve of the same kind per tangent/cotangent), so reverse mode never unrolls
the iterations and needs O(n) memory. For the Neumann solvers the same
truncated series serves as the approximate inverse in the backward pass. The
``SolveInfo`` record is returned alongside with ``stop_gradient`` applied; it
describes the primal solve.

Cost, counted in ``matvec`` calls: ``iterations`` (one per CG step or Neumann
term), plus one for the reported true residual, plus one for the initial
residual when ``x0`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from aniso_gp import _validation as check
from aniso_gp.linalg.operators import matmul

Matvec = Callable[[jnp.ndarray], jnp.ndarray]


class SolveInfo(NamedTuple):
    """Diagnostics of one solve.

    Attributes:
        iterations: int array, CG iterations (or Neumann terms) spent.
        residual_norm: float array, true relative residual ``|b - A x| / |b|``
            of the returned ``x`` (0 when ``b = 0``).
        converged: bool array, ``residual_norm <= tol``.
    """

    iterations: jnp.ndarray
    residual_norm: jnp.ndarray
    converged: jnp.ndarray


def _norm(v):
    return jnp.sqrt(jnp.sum(v * v))


def _check_b(b) -> jnp.ndarray:
    b = jnp.asarray(b, dtype=jnp.float64)
    if b.ndim != 1:
        raise ValueError(f"`b` must be a 1-D array (n,); got shape {b.shape}")
    return b


def _info(matvec, rhs, x, iterations, tol) -> SolveInfo:
    bnorm = _norm(rhs)
    rel = jnp.where(bnorm > 0, _norm(rhs - matvec(x)) / jnp.where(bnorm > 0, bnorm, 1.0), 0.0)
    return SolveInfo(
        iterations=jnp.asarray(iterations, dtype=jnp.int32),
        residual_norm=rel,
        converged=rel <= tol,
    )


def _warm_start(matvec, rhs, x0):
    """``(x, r)`` from ``x0`` if it beats zero on the residual, else from zero.

    The same solve function serves the primal system and, inside
    ``custom_linear_solve``, the tangent/cotangent systems; ``x0`` only helps
    the former, and this choice keeps it from hurting the others.
    """
    zero = jnp.zeros_like(rhs)
    if x0 is None:
        return zero, rhs
    r0 = rhs - matvec(x0)
    better = _norm(r0) < _norm(rhs)
    return jnp.where(better, x0, zero), jnp.where(better, r0, rhs)


def _pcg_iterate(matvec, precond, rhs, tol, maxiter, x0) -> tuple[jnp.ndarray, SolveInfo]:
    target = tol * _norm(rhs)
    x, r = _warm_start(matvec, rhs, x0)
    z = precond(r)
    rz = jnp.dot(r, z)

    def cond(state):
        k, _, _, _, _, rnorm, healthy = state
        return (k < maxiter) & (rnorm > target) & healthy

    def body(state):
        k, x, r, p, rz, _, _ = state
        Ap = matvec(p)
        pAp = jnp.dot(p, Ap)
        # A non-positive curvature (A or P not SPD, or round-off at convergence)
        # would make the step meaningless: stop instead of producing NaN.
        healthy = (pAp > 0) & jnp.isfinite(pAp) & (rz > 0)
        alpha = jnp.where(healthy, rz / jnp.where(healthy, pAp, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * Ap
        z = precond(r)
        rz_new = jnp.dot(r, z)
        beta = jnp.where(rz > 0, rz_new / jnp.where(rz > 0, rz, 1.0), 0.0)
        return k + 1, x, r, z + beta * p, rz_new, _norm(r), healthy

    init = (jnp.asarray(0, jnp.int32), x, r, z, rz, _norm(r), jnp.asarray(True))
    k, x, *_ = jax.lax.while_loop(cond, body, init)
    return x, _info(matvec, rhs, x, k, tol)


def _identity(v):
    return v


def _solve_with_info(matvec, b, solve):
    x, info = jax.lax.custom_linear_solve(matvec, b, solve, symmetric=True, has_aux=True)
    return x, jax.tree_util.tree_map(jax.lax.stop_gradient, info)


def pcg(
    matvec: Matvec,
    b,
    precond: Matvec,
    *,
    tol: float = 1e-8,
    maxiter: int | None = None,
    x0=None,
) -> tuple[jnp.ndarray, SolveInfo]:
    r"""Preconditioned conjugate gradients for SPD ``A x = b``.

    Args:
        matvec: ``v -> A v`` on (n,) arrays, ``A`` symmetric positive definite.
        b: (n,) right-hand side.
        precond: ``v -> P^{-1} v``, ``P`` symmetric positive definite.
        tol: relative tolerance, stop when ``|b - A x| <= tol |b|``.
        maxiter: iteration cap (default ``10 n``).
        x0: optional (n,) warm start (not differentiated through).

    Returns:
        ``(x, info)``: ``x`` (n,) and a :class:`SolveInfo`.
    """
    b = _check_b(b)
    tol = check.tolerance(tol)
    maxiter = 10 * b.shape[0] if maxiter is None else check.positive_int(maxiter, "maxiter")
    if x0 is not None:
        x0 = jax.lax.stop_gradient(jnp.asarray(x0, dtype=b.dtype))
        if x0.shape != b.shape:
            raise ValueError(f"`x0` must have the shape of `b` {b.shape}; got {x0.shape}")

    def solve(mv, rhs):
        return _pcg_iterate(mv, precond, rhs, tol, maxiter, x0)

    return _solve_with_info(matvec, b, solve)


def cg(
    matvec: Matvec, b, *, tol: float = 1e-8, maxiter: int | None = None, x0=None
) -> tuple[jnp.ndarray, SolveInfo]:
    """Conjugate gradients for SPD ``A x = b``; :func:`pcg` with ``P = I``."""
    return pcg(matvec, b, _identity, tol=tol, maxiter=maxiter, x0=x0)


def _neumann_series(matvec, precond, rhs, steps, lr):
    """``lr sum_{k<steps} (I - lr P A)^k P rhs`` by the recurrence ``v <- v - lr P A v``."""

    def body(_, state):
        x, v = state
        return x + v, v - lr * precond(matvec(v))

    v0 = precond(rhs)
    x, _ = jax.lax.fori_loop(0, steps, body, (jnp.zeros_like(rhs), v0))
    return lr * x


def preconditioned_neumann(
    matvec: Matvec, b, precond: Matvec, *, steps: int, lr: float, tol: float = 1e-8
) -> tuple[jnp.ndarray, SolveInfo]:
    r"""Preconditioned Neumann series ``x = lr sum_{k<steps} (I - lr P^{-1} A)^k P^{-1} b``.

    It approximates ``A^{-1} b`` when the spectrum of ``P^{-1} A`` lies in
    ``(0, 2/lr)``; the error contracts by ``max |1 - lr lambda(P^{-1} A)|`` per
    step. The operator ``p(P^{-1} A) P^{-1}`` is symmetric, so it also serves as
    the approximate inverse in the backward pass.

    Args:
        matvec: ``v -> A v`` on (n,) arrays.
        b: (n,) right-hand side.
        precond: ``v -> P^{-1} v``, symmetric positive definite.
        steps: number of series terms (= matvecs), a positive int.
        lr: step size ``> 0``.
        tol: only sets ``info.converged`` (``residual_norm <= tol``); the series
            always runs ``steps`` terms.
    """
    b = _check_b(b)
    steps = check.positive_int(steps, "steps")
    if check.violated(lambda: ~(jnp.asarray(lr) > 0)):
        raise ValueError(f"`lr` must be strictly positive; got {lr!r}")

    def solve(mv, rhs):
        x = _neumann_series(mv, precond, rhs, steps, lr)
        return x, _info(mv, rhs, x, steps, tol)

    return _solve_with_info(matvec, b, solve)


def neumann(
    matvec: Matvec, b, *, steps: int, lr: float, tol: float = 1e-8
) -> tuple[jnp.ndarray, SolveInfo]:
    """Truncated Neumann series ``x = lr sum_{k<steps} (I - lr A)^k b``.

    See :func:`preconditioned_neumann` (this is ``P = I``).
    """
    return preconditioned_neumann(matvec, b, _identity, steps=steps, lr=lr, tol=tol)


def _richardson_iterate(matvec, precond, rhs, lr, tol, maxiter, x0):
    target = tol * _norm(rhs)
    x, r = _warm_start(matvec, rhs, x0)

    def cond(state):
        k, _, _, rnorm = state
        # A residual that is not finite (or blew up: lr too large) ends the loop.
        return (k < maxiter) & (rnorm > target) & (rnorm < 1e8 * _norm(rhs) + 1.0)

    def body(state):
        k, x, r, _ = state
        x = x + lr * precond(r)
        r = rhs - matvec(x)  # the true residual: no drift over thousands of steps
        return k + 1, x, r, _norm(r)

    k, x, *_ = jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), x, r, _norm(r)))
    return x, _info(matvec, rhs, x, k, tol)


def richardson(
    matvec: Matvec, b, precond: Matvec | None = None, *, lr, tol: float = 1e-8,
    maxiter: int | None = None, x0=None,
) -> tuple[jnp.ndarray, SolveInfo]:
    r"""Preconditioned Richardson iteration ``x <- x + lr P^{-1} (b - A x)``.

    From ``x = 0`` the iterates are the partial sums of the Neumann series
    ``lr sum_k (I - lr P^{-1} A)^k P^{-1} b``; unlike :func:`preconditioned_neumann`
    it stops at ``|b - A x| <= tol |b|``. The error contracts by
    ``max |1 - lr lambda(P^{-1} A)|`` per step: it converges for
    ``0 < lr < 2 / lambda_max(P^{-1} A)`` (see :func:`largest_eigenvalue`), in
    about ``kappa log(1/tol)`` steps with ``lr = 1/lambda_max`` and ``kappa`` the
    condition number of ``P^{-1} A``. One ``matvec`` per step.

    Args:
        matvec: ``v -> A v`` on (n,) arrays, ``A`` symmetric positive definite.
        b: (n,) right-hand side.
        precond: ``v -> P^{-1} v`` (symmetric positive definite), default ``I``.
        lr: step size ``> 0``.
        tol: relative tolerance.
        maxiter: iteration cap (default ``100 n``).
        x0: optional (n,) warm start.

    Returns:
        ``(x, info)``: ``x`` (n,) and a :class:`SolveInfo`; a step size too large
        for ``A`` shows as ``converged = False`` with a large residual.
    """
    b = _check_b(b)
    tol = check.tolerance(tol)
    lr = check.positive_scalar(lr, "lr")
    maxiter = 100 * b.shape[0] if maxiter is None else check.positive_int(maxiter, "maxiter")
    precond = _identity if precond is None else precond
    if x0 is not None:
        x0 = jax.lax.stop_gradient(jnp.asarray(x0, dtype=b.dtype))

    def solve(mv, rhs):
        return _richardson_iterate(mv, precond, rhs, lr, tol, maxiter, x0)

    return _solve_with_info(matvec, b, solve)


def largest_eigenvalue(matvec: Matvec, n: int, key, *, iterations: int = 20,
                       precond: Matvec | None = None) -> jnp.ndarray:
    r"""Power-iteration estimate of ``lambda_max(P^{-1} A)`` (``P = I`` by default).

    ``v`` is ``P^{-1} A`` applied ``iterations`` times to a Gaussian start; the
    estimate is the Rayleigh quotient of ``A^{1/2} P^{-1} A^{1/2}`` (the same
    eigenvalues as ``P^{-1} A``) at ``A^{1/2} v``,
    ``(A v)^T P^{-1} (A v) / (v^T A v)``: a lower bound that rises towards the
    largest eigenvalue. ``iterations + 1`` matvecs. Scale it up by a margin
    before using ``1 / lambda`` as a Richardson step.
    """
    precond = _identity if precond is None else precond

    def body(_, v):
        w = precond(matvec(v))
        return w / _norm(w)

    v = jax.random.normal(key, (n,), dtype=jnp.float64)
    v = jax.lax.fori_loop(0, iterations, body, v / _norm(v))
    Av = matvec(v)
    return jnp.dot(Av, precond(Av)) / jnp.dot(v, Av)


def nystrom_preconditioner(U, lam, mu) -> Matvec:
    r"""Inverse Nyström preconditioner for ``A = K + mu I`` with ``K ~ U diag(lam) U^T``.

    ``P^{-1} v = (lam_k + mu) U (Lam + mu I)^{-1} U^T v + (v - U U^T v)``,
    ``lam_k`` the smallest kept eigenvalue. It maps the captured eigenvalues
    ``lam_i + mu`` of ``A`` to about ``lam_k + mu`` and leaves the rest, which
    are below ``lam_k + mu``, in place.

    Args:
        U: (n, k) orthonormal columns (e.g. from
            :func:`~aniso_gp.linalg.nystrom.randomized_nystrom`).
        lam: (k,) non-negative eigenvalues, sorted descending.
        mu: shift ``> 0`` (the regularisation / noise variance in ``A``).

    Returns:
        A function ``v -> P^{-1} v`` on (n,) or (n, j) arrays.
    """
    U = jnp.asarray(U, dtype=jnp.float64)
    lam = jnp.asarray(lam, dtype=jnp.float64)
    if U.ndim != 2:
        raise ValueError(f"`U` must be a 2-D (n, k) array; got shape {U.shape}")
    if lam.shape != (U.shape[1],):
        raise ValueError(f"`lam` must have shape ({U.shape[1]},) to match `U`; got {lam.shape}")
    if check.violated(lambda: ~(jnp.asarray(mu) > 0)):
        raise ValueError(f"`mu` must be strictly positive; got {mu!r}")
    if check.violated(lambda: jnp.any(lam < 0)):
        raise ValueError("`lam` must be non-negative")
    # The minimum equals lam[-1] for sorted input and is robust to ties/order.
    scale = (jnp.min(lam) + mu) / (lam + mu)

    def apply(v):
        p = matmul(U.T, v)
        inside = p * scale if v.ndim == 1 else p * scale[:, None]
        return matmul(U, inside - p) + v

    return apply
