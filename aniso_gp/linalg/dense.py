r"""Dense Cholesky with escalating jitter: the one place jitter is added.

``cholesky(K)`` tries ``K + eps * mean(diag K) I`` for ``eps`` in
``0, 1e-8, 1e-7, ..., 1e-4`` and returns the first finite factor with the
jitter it used. It is a ``lax.while_loop``, so it also runs under ``jit`` (for
example inside a custom-VJP likelihood); there a failure shows as a non-finite
factor, which the sampler treats as a rejected proposal. ``checked_cholesky``
is the eager wrapper for user-facing code: it raises a ``LinAlgError`` that
says what failed instead of returning NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

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
    levels = jnp.asarray(levels, dtype=K.dtype)
    scale = jnp.mean(jnp.diagonal(K))
    eye = jnp.eye(K.shape[-1], dtype=K.dtype)

    def factor(i):
        return jnp.linalg.cholesky(K + levels[i] * scale * eye)

    def cond(state):
        i, L = state
        return (i < levels.shape[0] - 1) & ~jnp.all(jnp.isfinite(L))

    def body(state):
        i, _ = state
        return i + 1, factor(i + 1)

    i, L = jax.lax.while_loop(cond, body, (0, factor(0)))
    return L, levels[i] * scale


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
