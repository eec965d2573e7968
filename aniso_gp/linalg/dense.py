r"""Dense Cholesky with escalating jitter: the one place jitter is added.

``cholesky(K)`` tries ``K + eps * mean(diag K) I`` for ``eps`` in
``0, 1e-8, 1e-7, ..., 1e-4`` and returns the first finite factor with the
jitter it used. It is a ``lax.while_loop``, so it also runs under ``jit`` (for
example inside a custom-VJP likelihood); there a failure shows as a non-finite
factor, which the sampler treats as a rejected proposal. ``checked_cholesky``
is the eager wrapper for user-facing code: it raises a ``LinAlgError`` that
says what failed instead of returning NaN.

``triangular_inverse`` and ``inverse_from_cholesky`` give ``L^-1`` and ``C^-1``
from the factor with blocked products that exploit the triangular structure;
they are the reverse pass of the exact GP likelihood.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

JITTER_LEVELS = (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4)


def cholesky(K: jnp.ndarray, levels=JITTER_LEVELS) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Lower Cholesky factor of ``K + jitter I`` with the smallest jitter that works.

    Args:
        K: (N, N) symmetric positive (semi-)definite matrix.
        levels: relative jitter levels tried in order (times ``mean(diag K)``).

    Returns:
        ``(L, jitter)``: ``L`` (N, N) lower triangular, ``jitter`` the absolute
        amount added to the diagonal. ``L`` is NaN if every level failed.
    """
    # Jitted (levels static) so eager calls do not re-trace and re-compile the
    # cond/while_loop each time; custom JVP because while_loop has no reverse mode.
    return _cholesky(jnp.asarray(K), tuple(float(v) for v in levels))


def _factor(K, levels):
    levels = jnp.asarray(levels, dtype=K.dtype)
    scale = jnp.mean(jnp.diagonal(K))
    eye = jnp.eye(K.shape[-1], dtype=K.dtype)
    L0 = jnp.linalg.cholesky(K)

    def escalate():
        def cond(state):
            i, L = state
            return (i < levels.shape[0] - 1) & ~jnp.all(jnp.isfinite(L))

        def body(state):
            i, _ = state
            return i + 1, jnp.linalg.cholesky(K + levels[i + 1] * scale * eye)

        i, L = jax.lax.while_loop(cond, body, (0, L0))
        return L, levels[i] * scale

    # The common case (K already positive definite) takes the plain factor: the
    # escalation loop sits in a cond branch that only runs when it is needed.
    return jax.lax.cond(
        jnp.all(jnp.isfinite(L0)), lambda: (L0, jnp.zeros((), K.dtype)), escalate
    )


_factor_ad = jax.custom_jvp(_factor, nondiff_argnums=(1,))


@_factor_ad.defjvp
def _factor_jvp(levels, primals, tangents):
    # Derivative of chol(K + eps mean(diag K) I) at the chosen level eps, as in
    # jax.lax.linalg: dL = L Phi(L^-1 dC L^-T), Phi = lower triangle, halved diagonal.
    (K,), (dK,) = primals, tangents
    L, jitter = _factor(K, levels)
    n = K.shape[-1]
    scale = jnp.mean(jnp.diagonal(K))
    djitter = jnp.where(jitter > 0, jitter / jnp.where(scale != 0, scale, 1.0), 0.0) * jnp.mean(
        jnp.diagonal(dK)
    )
    dC = 0.5 * (dK + dK.T) + djitter * jnp.eye(n, dtype=K.dtype)
    W = jax.scipy.linalg.solve_triangular(L, dC, lower=True)
    W = jax.scipy.linalg.solve_triangular(L, W.T, lower=True)
    phi = jnp.tril(W) - 0.5 * jnp.diag(jnp.diagonal(W))
    return (L, jitter), (L @ phi, djitter)


_cholesky = jax.jit(_factor_ad, static_argnums=1)


def checked_cholesky(K, name: str = "covariance matrix") -> tuple[jnp.ndarray, float]:
    """Eager :func:`cholesky` that raises a clear error when even 1e-4 jitter fails."""
    K = jnp.asarray(K)
    if not bool(jnp.all(jnp.isfinite(K))):
        raise np.linalg.LinAlgError(f"the {name} contains NaN or infinite entries")
    L, jitter = cholesky(K)
    if not bool(jnp.all(jnp.isfinite(L))):
        raise np.linalg.LinAlgError(
            f"Cholesky of the {name} failed even with jitter {JITTER_LEVELS[-1]:g} x mean diagonal"
            " added: it is not positive definite (duplicate points with no noise, or a"
            " length-scale far larger than the domain?)"
        )
    return L, float(jitter)


@functools.cache
def _one_at_a_time(fn, block: int):
    """``fn(L, block)`` that runs a loop, not batched ops, under ``vmap``.

    Batched, the blocked recursions below hung XLA's CPU runtime at random
    (JAX 0.10.2: 0% CPU, a result never ready; 2 in 4 runs of 100 batches of
    8 at n = 500, none one matrix at a time). A loop also keeps each matrix's
    blocked flop count.
    """
    return jax.custom_batching.sequential_vmap(functools.partial(fn, block=block))


def triangular_inverse(L: jnp.ndarray, block: int = 128) -> jnp.ndarray:
    r"""Inverse of a lower-triangular ``L`` (n, n) by recursive 2 x 2 blocking.

    .. math::
        \begin{pmatrix} A & 0 \\ B & D \end{pmatrix}^{-1}
        = \begin{pmatrix} A^{-1} & 0 \\ -D^{-1} B A^{-1} & D^{-1} \end{pmatrix}

    Blocks of at most ``block`` rows are inverted by a triangular solve. About
    ``2/3 n^3`` flops in matrix products, against ``n^3`` for a triangular solve
    with the identity as right-hand side (which does not know its result is
    triangular). Returns a lower-triangular (n, n) array; differentiable (forward
    and reverse); under ``vmap`` it loops over the batch.
    """
    return _triangular_inverse_diff(L, block)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _triangular_inverse_diff(L, block):
    return _one_at_a_time(_triangular_inverse, block)(L)


@_triangular_inverse_diff.defjvp
def _triangular_inverse_jvp(block, primals, tangents):
    # d(L^-1) = -L^-1 dL L^-1; only the lower triangle of L is read. The batching
    # wrapper has no autodiff rule of its own, so this is what makes it differentiable.
    (L,), (dL,) = primals, tangents
    Li = _triangular_inverse_diff(L, block)
    return Li, -(Li @ jnp.tril(dL) @ Li)


def _triangular_inverse(L: jnp.ndarray, block: int) -> jnp.ndarray:
    n = L.shape[-1]
    if n <= block:
        return jax.scipy.linalg.solve_triangular(L, jnp.eye(n, dtype=L.dtype), lower=True)
    h = n // 2
    Ai = _triangular_inverse(L[:h, :h], block)
    Di = _triangular_inverse(L[h:, h:], block)
    lower_left = -(Di @ (L[h:, :h] @ Ai))
    return jnp.block([[Ai, jnp.zeros((h, n - h), L.dtype)], [lower_left, Di]])


def _lower_gram(X: jnp.ndarray, block: int) -> jnp.ndarray:
    """``X^T X`` for lower-triangular ``X``: the two diagonal blocks recursively."""
    n = X.shape[-1]
    if n <= block:
        return X.T @ X
    h = n // 2
    B, D = X[h:, :h], X[h:, h:]
    top_left = _lower_gram(X[:h, :h], block) + B.T @ B
    top_right = B.T @ D
    return jnp.block([[top_left, top_right], [top_right.T, _lower_gram(D, block)]])


def inverse_from_cholesky(L: jnp.ndarray, block: int = 128) -> jnp.ndarray:
    r"""``C^{-1} = L^{-T} L^{-1}`` (n, n) from the lower Cholesky factor ``L`` of ``C``.

    Both steps exploit the triangular structure (:func:`triangular_inverse` and a
    blocked ``L^{-T} L^{-1}``): about ``4/3 n^3`` flops, against ``3 n^3`` for a
    triangular solve followed by a dense product, and ``2 n^3`` for ``cho_solve``
    with the identity. This is the reverse pass of the exact GP likelihood; like
    :func:`triangular_inverse`, it loops under ``vmap``.
    """
    return _one_at_a_time(_inverse_from_cholesky, block)(L)


def _inverse_from_cholesky(L: jnp.ndarray, block: int) -> jnp.ndarray:
    return _lower_gram(_triangular_inverse(L, block), block)
