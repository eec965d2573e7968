r"""Structured covariance operators: low rank plus diagonal, and the eigen-form.

Two operators share one interface (``matvec``, ``solve``, ``logdet``,
``inv_quad_logdet``, ``diagonal``, ``sqrt_matvec``, ``sample``, ``to_dense``):

* :class:`LowRankPlusDiagonal` ``A = U U^T + diag(d)``, ``U`` (N, m), ``d`` (N,) > 0.
  With the capacitance ``C = I_m + U^T D^{-1} U = L_C L_C^T`` (m, m)::

      A^{-1} v   = D^{-1} v - D^{-1} U C^{-1} U^T D^{-1} v          (Woodbury)
      log|A|     = sum(log d) + 2 sum(log diag L_C)                  (determinant lemma)

  ``C`` has every eigenvalue >= 1, so its plain Cholesky needs no jitter. Cost
  O(N m^2) time and O(N m) memory; nothing N x N is formed (except ``to_dense``).

* :class:`EigenLowRankPlusShift` ``A = U diag(lam) U^T + s I`` with ``U``
  orthonormal (``U^T U = I_m``), ``lam >= 0``, ``s > 0`` (docs/design.md section 4)::

      A^{-1} v = U (lam + s)^{-1} U^T v + (v - U U^T v) / s
      log|A|   = sum(log(lam + s)) + (N - m) log s

  which avoids the ``1/s^2`` cancellation of the generic Woodbury form when
  ``s`` is small.

Both are equinox Modules (pytrees), so they pass through ``jit``, ``vmap`` and
``grad``; the constructor checks shapes always and values only when they are
concrete (outside ``jit``). Square roots: ``S = [diag(sqrt d), U]`` (N, N + m)
has ``S S^T = A``, so a draw is ``S eps`` with ``eps ~ N(0, I_{N+m})``.

Matmuls use ``precision=HIGHEST`` so that a GPU never rounds through TF32.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from aniso_gp import _validation as check

HIGHEST = jax.lax.Precision.HIGHEST


def matmul(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``a @ b`` at full precision (no TF32/bf16 passes on accelerators)."""
    return jnp.matmul(a, b, precision=HIGHEST)


@jax.custom_vjp
def self_gram(V: jnp.ndarray) -> jnp.ndarray:
    """``V V^T`` (m, m) for ``V`` (m, n), with the symmetric pullback ``(G + G^T) V``.

    Autodiff treats the two factors as independent and spends two (m, m) x (m, n)
    products on the cotangent of ``V``; the symmetric form needs one.
    """
    return matmul(V, V.T)


def _self_gram_fwd(V):
    return self_gram(V), V


def _self_gram_bwd(V, G):
    return (matmul(G + G.T, V),)


self_gram.defvjp(_self_gram_fwd, _self_gram_bwd)


@jax.custom_vjp
def left_matmul(A: jnp.ndarray, X: jnp.ndarray) -> jnp.ndarray:
    """``A X`` for a small square ``A`` (m, m) and a wide ``X`` (m, n), whose pullback
    ``(G X^T, A^T G)`` forms ``A^T`` explicitly.

    Autodiff folds the transpose into the product, contracting over the leading
    axis of both operands, which XLA's CPU backend ran at 35 ms against 13 ms for
    the same flops with ``A^T`` materialised (m = 512, n = 4,096).
    """
    return matmul(A, X)


def _left_matmul_fwd(A, X):
    return matmul(A, X), (A, X)


def _left_matmul_bwd(res, G):
    A, X = res
    # The barrier keeps XLA from folding the transpose back into the product.
    return matmul(G, X.T), matmul(jax.lax.optimization_barrier(A.T), G)


left_matmul.defvjp(_left_matmul_fwd, _left_matmul_bwd)


def _as_float(x, name: str) -> jnp.ndarray:
    if check.is_traced(x):
        return x
    if not isinstance(x, jax.Array):  # NumPy, pandas, lists: coerce once on the host
        try:
            x = np.asarray(x.to_numpy() if hasattr(x, "to_numpy") else x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"`{name}` must be a numeric array; got {type(x).__name__}") from err
    # A device array stays on the device: only the finiteness flag comes back.
    arr = jnp.asarray(x, dtype=jnp.float64)
    if check.violated(lambda: ~jnp.all(jnp.isfinite(arr))):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return arr


def _check_vector_operand(v: jnp.ndarray, n: int, name: str = "v") -> None:
    # Vectors (N,) and blocks (N, k) are both accepted; the shape is static even under jit.
    if v.ndim not in (1, 2) or v.shape[0] != n:
        raise ValueError(f"`{name}` must have shape ({n},) or ({n}, k); got {v.shape}")


def _scale_rows(d: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """``diag(d) v`` for ``v`` of shape (N,) or (N, k)."""
    return d * v if v.ndim == 1 else d[:, None] * v


class _LowRankOperator(eqx.Module):
    """What the two low-rank operators share: ``U`` (N, m) and a square root
    ``S`` (N, N + m) with ``S S^T = A`` (each defines ``sqrt_matvec``)."""

    U: eqx.AbstractVar[jnp.ndarray]

    @property
    def shape(self) -> tuple[int, int]:
        n = self.U.shape[0]
        return (n, n)

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @eqx.filter_jit
    def sample(self, key, shape: tuple[int, ...] = ()) -> jnp.ndarray:
        """Draws from ``N(0, A)``, shape ``shape + (N,)``: ``S eps`` (see ``sqrt_matvec``)."""
        n, m = self.U.shape
        eps = jax.random.normal(key, tuple(shape) + (n + m,), dtype=self.U.dtype)
        return self.sqrt_matvec(eps)


class LowRankPlusDiagonal(_LowRankOperator):
    r"""``A = U U^T + diag(d)``, symmetric positive definite.

    Args:
        U: (N, m) low-rank factor.
        d: (N,) strictly positive diagonal (e.g. noise variance, or the FITC
            correction plus noise).

    Raises:
        ValueError: ``U`` not 2-D, ``d`` not (N,), non-finite or non-positive ``d``.
    """

    U: jnp.ndarray
    d: jnp.ndarray

    def __init__(self, U, d):
        U = _as_float(U, "U")
        d = _as_float(d, "d")
        if U.ndim != 2:
            raise ValueError(f"`U` must be a 2-D (N, m) array; got shape {U.shape}")
        if d.ndim != 1 or d.shape[0] != U.shape[0]:
            raise ValueError(
                f"`d` must have shape ({U.shape[0]},) to match `U` {U.shape}; got {d.shape}"
            )
        if not check.is_traced(d) and check.violated(lambda: jnp.any(d <= 0)):
            raise ValueError(
                f"`d` must be strictly positive; got minimum {float(jnp.min(d)):.3g}"
                f" ({int(jnp.sum(d <= 0))} entries <= 0)"
            )
        self.U = U
        self.d = d

    @classmethod
    def from_eigen(cls, U, lam, shift) -> EigenLowRankPlusShift:
        """The eigen-form ``U diag(lam) U^T + shift I`` (see :class:`EigenLowRankPlusShift`)."""
        return EigenLowRankPlusShift(U, lam, shift)

    @eqx.filter_jit
    def matvec(self, v: jnp.ndarray) -> jnp.ndarray:
        """``A v`` for ``v`` (N,) or (N, k); O(N m k)."""
        _check_vector_operand(v, self.shape[0])
        return matmul(self.U, matmul(self.U.T, v)) + _scale_rows(self.d, v)

    @eqx.filter_jit
    def capacitance_cholesky(self) -> jnp.ndarray:
        """Lower Cholesky factor (m, m) of ``C = I + U^T D^{-1} U`` (eigenvalues >= 1)."""
        W = self.U / self.d[:, None]
        C = jnp.eye(self.rank, dtype=self.U.dtype) + matmul(self.U.T, W)
        return jnp.linalg.cholesky(C)

    @eqx.filter_jit
    def solve_with_capacitance(self, L: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
        """``A^{-1} v`` given ``L = capacitance_cholesky()``, to reuse one factorisation."""
        Dv = _scale_rows(1.0 / self.d, v)
        t = solve_triangular(L, matmul(self.U.T, Dv), lower=True)
        t = solve_triangular(L.T, t, lower=False)
        return Dv - _scale_rows(1.0 / self.d, matmul(self.U, t))

    @eqx.filter_jit
    def solve(self, v: jnp.ndarray) -> jnp.ndarray:
        """``A^{-1} v`` for ``v`` (N,) or (N, k) by Woodbury; O(N m^2 + N m k)."""
        _check_vector_operand(v, self.shape[0])
        return self.solve_with_capacitance(self.capacitance_cholesky(), v)

    @eqx.filter_jit
    def logdet(self) -> jnp.ndarray:
        """``log|A| = sum log d + log|C|`` (matrix determinant lemma)."""
        L = self.capacitance_cholesky()
        return jnp.sum(jnp.log(self.d)) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))

    @eqx.filter_jit
    def inv_quad_logdet(self, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        r"""``(y^T A^{-1} y, log|A|)`` from one capacitance factorisation.

        ``y^T A^{-1} y = y^T D^{-1} y - |L_C^{-1} U^T D^{-1} y|^2`` for ``y`` (N,).
        """
        _check_vector_operand(y, self.shape[0], "y")
        if y.ndim != 1:
            raise ValueError(f"`y` must have shape ({self.shape[0]},); got {y.shape}")
        L = self.capacitance_cholesky()
        Dy = y / self.d
        t = solve_triangular(L, matmul(self.U.T, Dy), lower=True)
        quad = jnp.dot(y, Dy) - jnp.dot(t, t)
        logdet = jnp.sum(jnp.log(self.d)) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
        return quad, logdet

    @eqx.filter_jit
    def diagonal(self) -> jnp.ndarray:
        """``diag(A) = rowsum(U^2) + d`` (N,)."""
        return jnp.sum(self.U * self.U, axis=1) + self.d

    @eqx.filter_jit
    def sqrt_matvec(self, eps: jnp.ndarray) -> jnp.ndarray:
        """``S eps`` with ``S = [diag(sqrt d), U]`` (N, N + m), ``S S^T = A``.

        ``eps`` has shape (..., N + m); returns (..., N).
        """
        n, m = self.U.shape
        if eps.shape[-1] != n + m:
            raise ValueError(f"`eps` must have last dimension N + m = {n + m}; got {eps.shape}")
        return jnp.sqrt(self.d) * eps[..., :n] + matmul(eps[..., n:], self.U.T)

    @eqx.filter_jit
    def to_dense(self) -> jnp.ndarray:
        """The (N, N) matrix; for tests and small N only."""
        return matmul(self.U, self.U.T) + jnp.diag(self.d)


class EigenLowRankPlusShift(_LowRankOperator):
    r"""``A = U diag(lam) U^T + s I`` with orthonormal ``U`` (a truncated eigen-decomposition).

    Args:
        U: (N, m) with orthonormal columns, ``U^T U = I_m`` (checked by random
            probes when concrete, to 1e-8).
        lam: (m,) non-negative eigenvalues of the low-rank part.
        shift: scalar ``s > 0``.

    The solve ``U (lam + s)^{-1} U^T v + (v - U U^T v)/s`` touches no inverse
    and no Cholesky; the square root is ``S = [sqrt(s) I, U diag(sqrt lam)]``.
    """

    U: jnp.ndarray
    lam: jnp.ndarray
    shift: jnp.ndarray

    def __init__(self, U, lam, shift):
        U = _as_float(U, "U")
        lam = _as_float(lam, "lam")
        shift = _as_float(shift, "shift")
        if U.ndim != 2:
            raise ValueError(f"`U` must be a 2-D (N, m) array; got shape {U.shape}")
        if lam.ndim != 1 or lam.shape[0] != U.shape[1]:
            raise ValueError(f"`lam` must have shape ({U.shape[1]},) to match `U`; got {lam.shape}")
        if jnp.ndim(shift) != 0:
            raise ValueError(f"`shift` must be a scalar; got shape {jnp.shape(shift)}")
        if not check.is_traced(lam) and check.violated(lambda: jnp.any(lam < 0)):
            raise ValueError(f"`lam` must be non-negative; got minimum {float(jnp.min(lam)):.3g}")
        if not check.is_traced(shift) and check.violated(lambda: ~(shift > 0)):
            raise ValueError(f"`shift` must be strictly positive; got {float(shift):.3g}")
        if not check.is_traced(U) and U.shape[1] > 0:
            # U^T U = I implies U^T (U g) = g for every g: an O(N m) probe instead of O(N m^2).
            g = np.random.default_rng(0).standard_normal((U.shape[1], 2))
            err = jnp.max(jnp.abs(matmul(U.T, matmul(U, g)) - g)) / np.max(np.abs(g))
            if check.violated(lambda: err > 1e-8):
                raise ValueError(
                    f"`U` must have orthonormal columns (U^T U = I); probe error {float(err):.2e}"
                )
        self.U = U
        self.lam = lam
        self.shift = shift

    def _project(self, v):
        return matmul(self.U.T, v)

    @eqx.filter_jit
    def matvec(self, v: jnp.ndarray) -> jnp.ndarray:
        """``A v`` for ``v`` (N,) or (N, k)."""
        _check_vector_operand(v, self.shape[0])
        return matmul(self.U, _scale_rows(self.lam, self._project(v))) + self.shift * v

    @eqx.filter_jit
    def solve(self, v: jnp.ndarray) -> jnp.ndarray:
        """``U (lam + s)^{-1} U^T v + (v - U U^T v) / s`` for ``v`` (N,) or (N, k)."""
        _check_vector_operand(v, self.shape[0])
        p = self._project(v)
        inside = matmul(self.U, _scale_rows(1.0 / (self.lam + self.shift), p))
        return inside + (v - matmul(self.U, p)) / self.shift

    @eqx.filter_jit
    def logdet(self) -> jnp.ndarray:
        """``sum log(lam + s) + (N - m) log s``."""
        n, m = self.U.shape
        return jnp.sum(jnp.log(self.lam + self.shift)) + (n - m) * jnp.log(self.shift)

    @eqx.filter_jit
    def inv_quad_logdet(self, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(y^T A^{-1} y, log|A|)`` for ``y`` (N,)."""
        if y.ndim != 1 or y.shape[0] != self.shape[0]:
            raise ValueError(f"`y` must have shape ({self.shape[0]},); got {y.shape}")
        p = self._project(y)
        outside = y - matmul(self.U, p)
        quad = jnp.sum(p * p / (self.lam + self.shift)) + jnp.dot(outside, outside) / self.shift
        return quad, self.logdet()

    @eqx.filter_jit
    def diagonal(self) -> jnp.ndarray:
        """``rowsum(U^2 lam) + s`` (N,)."""
        return jnp.sum(self.U * self.U * self.lam, axis=1) + self.shift

    @eqx.filter_jit
    def sqrt_matvec(self, eps: jnp.ndarray) -> jnp.ndarray:
        """``S eps``, ``S = [sqrt(s) I, U diag(sqrt lam)]``; ``eps`` (..., N + m) -> (..., N)."""
        n, m = self.U.shape
        if eps.shape[-1] != n + m:
            raise ValueError(f"`eps` must have last dimension N + m = {n + m}; got {eps.shape}")
        return jnp.sqrt(self.shift) * eps[..., :n] + matmul(
            eps[..., n:] * jnp.sqrt(self.lam), self.U.T
        )

    @eqx.filter_jit
    def to_dense(self) -> jnp.ndarray:
        """The (N, N) matrix; for tests and small N only."""
        n = self.shape[0]
        return matmul(self.U * self.lam, self.U.T) + self.shift * jnp.eye(n, dtype=self.U.dtype)
