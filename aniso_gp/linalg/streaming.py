r"""A Nyström eigen-factor kept up to date as points arrive (G-REST-style subspace updates).

The column Nyström approximation with landmark set ``S`` (``m`` points) is
``K ~ F F^T``, ``F = K_{:S} L^{-T}``, ``L L^T = K_SS``. Its eigen-form is the
thin SVD ``F = U diag(sigma) W^T``: ``K ~ U diag(sigma^2) U^T`` with ``U``
(N, r) orthonormal, what a Nyström PCG preconditioner, a low-rank likelihood
(``U diag(sigma)`` is a factor) and :class:`~aniso_gp.hypergrad.SpectralReuse`
read. Recomputing it after each batch of new points costs ``N m`` kernel
evaluations and an O(N m^2) SVD; :func:`update` instead works in the span of the
old basis and the new directions, after G-REST (Eini Keleshteri et al.,
*Subspace projection methods for fast spectral embeddings of evolving graphs*):

* **new rows, fixed landmarks** (:func:`add_points`): the new rows of ``F`` are
  exact, ``F_p = K_{pS} L^{-T}`` (``p m`` kernel evaluations), and
  ``[F; F_p] = blockdiag(U, I_p) [diag(sigma) W^T; F_p]``, so the SVD of the
  small ``(r + p) x m`` core gives the new factor: the Rayleigh-Ritz projection
  onto the old basis and the new coordinates, exact when nothing was truncated.
* **new landmarks** (:func:`add_landmarks`): the partial Cholesky grows by the
  Schur complement, ``L' = [[L, 0], [B, C]]``, ``B = K_TS L^{-T}``,
  ``C C^T = K_TT - B B^T``, and ``F' = [F, G]`` with
  ``G = (K_{:T} - F B^T) C^{-T}`` (``N t`` kernel evaluations). ``G``'s residual
  directions ``Q R = (I - U U^T) G`` complete the subspace:
  ``F' = [U, Q] [[diag(sigma), U^T G], [0, R]] blockdiag(W^T, I_t)``; again an SVD
  of a small core.

The state also holds ``F`` itself (N, m), extended exactly by both updates: it is
the factor a low-rank likelihood takes, it makes ``G`` exact, and a refresh is
an SVD of it without kernel evaluations. With ``rank=None`` nothing is truncated
and an update equals the recomputed eigen-form to round-off. With a fixed
``rank`` the energy ``sigma^2`` dropped by a truncation is lost to later updates.
Let ``D`` be the energy dropped since the last recompute
(:attr:`StreamingNystrom.discarded`) and ``F_r`` the best rank-``r`` part of
``F`` (what a recompute keeps). Each core carries all of the energy added, so
``tr(F F^T) - sum(sigma^2) = T_0 + D`` with ``T_0`` the tail a recompute dropped
then; adding rows or columns never shrinks that tail (interlacing), so the excess
error over a recompute is at most ``D``:

.. math:: \mathrm{tr}(F_r F_r^T) - \textstyle\sum_i \sigma_i^2 \le D .

:attr:`StreamingNystrom.drift` is ``D / tr(F F^T)`` and :func:`needs_refresh` is
G-REST's "the basis has drifted: recompute" test on it (a bound, so it fires
early rather than late).

Everything here works on the coordinates the kernel is given (for the kernels of
this package, the transformed inputs ``Z = X A``) and knows nothing of kernels
beyond ``kernel_fn(X1, X2) -> (n1, n2)``. The updates are sequential host-side
algebra on shapes that change with every batch, so they run in NumPy (eager JAX
compiled each primitive anew for each shape: 80 s for 20 small updates against
about 1 s); the kernel is evaluated by ``jax.jit`` on row counts rounded up to
powers of two, so a campaign compiles it a handful of times.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import solve_triangular

from aniso_gp import _validation as check
from aniso_gp.linalg import nystrom, solvers
from aniso_gp.linalg.dense import JITTER_LEVELS
from aniso_gp.linalg.nystrom import KernelFn


class StreamingNystrom(NamedTuple):
    r"""Eigen-form of a column Nyström approximation ``K ~ U diag(sigma^2) U^T`` (NumPy arrays).

    Attributes:
        points: (N, D) every point so far, in arrival order (the rows of ``U``).
        landmarks: (m, D) the landmark points ``S``.
        chol: (m, m) lower ``L`` with ``L L^T = K_SS`` (+ jitter).
        basis: (N, r) ``U``, orthonormal columns.
        singular: (r,) ``sigma``, descending.
        right: (m, r) ``W`` (``F ~ U diag(sigma) W^T``).
        cross: (N, m) the exact ``F = K(points, S) L^{-T}`` (``K ~ F F^T``).
        discarded: the sum of ``sigma^2`` dropped by truncations since the last recompute.
        rank: the largest number of columns kept (``None``: no truncation).
        evaluations: kernel entries evaluated to build this state (every update and
            recompute since the first :func:`nystrom_eigen`): the cost that counts.
    """

    points: np.ndarray
    landmarks: np.ndarray
    chol: np.ndarray
    basis: np.ndarray
    singular: np.ndarray
    right: np.ndarray
    cross: np.ndarray
    discarded: float
    rank: int | None
    evaluations: int = 0

    @property
    def eigenvalues(self) -> np.ndarray:
        """(r,) ``sigma^2``: the eigenvalues of ``F F^T`` that are kept."""
        return self.singular**2

    @property
    def factor(self) -> np.ndarray:
        """(N, r) ``U diag(sigma)``: the rank-``r`` factor (``cross`` is the exact one)."""
        return self.basis * self.singular

    @property
    def trace(self) -> float:
        """``tr(F F^T) = |F|_F^2``."""
        return float(np.sum(self.cross**2))

    @property
    def drift(self) -> float:
        """Energy lost to truncation since the last recompute, relative to ``tr(F F^T)``."""
        return float(self.discarded / self.trace) if self.trace > 0 else 0.0

    def preconditioner(self, shift):
        """``v -> P^{-1} v`` for ``K + shift I`` (:func:`.solvers.nystrom_preconditioner`)."""
        return solvers.nystrom_preconditioner(self.basis, self.eigenvalues, shift)


# --------------------------------------------------------------------------- #
# Kernel evaluations and factors (NumPy)
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=8)
def _jitted(kernel_fn):
    return jax.jit(kernel_fn)


def _bucket(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _padded(A: np.ndarray) -> jnp.ndarray:
    """``A`` with copies of its first row appended up to a power-of-two row count."""
    return jnp.asarray(np.concatenate([A, np.repeat(A[:1], _bucket(A.shape[0]) - A.shape[0],
                                                    axis=0)]))


def _kernel(kernel_fn: KernelFn, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``K(A, B)`` as NumPy, evaluated on padded rows (:func:`_padded`)."""
    return np.asarray(_jitted(kernel_fn)(_padded(A), _padded(B)))[:A.shape[0], :B.shape[0]]


@functools.lru_cache(maxsize=8)
def _jitted_diagonal(kernel_fn):
    return jax.jit(jax.vmap(lambda z: kernel_fn(z[None, :], z[None, :])[0, 0]))


def _diagonal(kernel_fn: KernelFn, A: np.ndarray) -> np.ndarray:
    """``diag K(A, A)`` (n,) from ``n`` kernel entries."""
    return np.asarray(_jitted_diagonal(kernel_fn)(_padded(A)))[:A.shape[0]]


def _cholesky(K: np.ndarray) -> np.ndarray:
    """Lower factor of ``K + jitter I`` at the smallest of ``dense.JITTER_LEVELS`` that works.

    ``dense.cholesky``'s rule in NumPy: the jitted one would compile again for every
    new landmark count.
    """
    K = 0.5 * (K + K.T)
    scale = float(np.mean(np.diag(K)))
    for level in JITTER_LEVELS:
        try:
            return np.linalg.cholesky(K + level * scale * np.eye(K.shape[0]))
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError(
        "the landmarks' kernel matrix is not positive definite even with jitter"
        f" {JITTER_LEVELS[-1]:g} x its mean diagonal: landmarks repeat or nearly repeat"
    )


def _cross(kernel_fn, X, landmarks, L) -> np.ndarray:
    """``K(X, S) L^{-T}`` (n, m)."""
    return solve_triangular(L, _kernel(kernel_fn, landmarks, X), lower=True).T


# --------------------------------------------------------------------------- #
# Checks (at the boundary, before any kernel is evaluated)
# --------------------------------------------------------------------------- #
def _rank(rank):
    return None if rank is None else check.positive_int(rank, "rank")


def _points(X, name: str, dim: int | None = None) -> np.ndarray:
    X = np.asarray(nystrom._points(X, name))
    if dim is not None and X.shape[1] != dim:
        raise ValueError(
            f"`{name}` must have {dim} columns like the points already held; got shape {X.shape}"
        )
    return X


def _truncate(U, sigma, W, rank, discarded):
    """Keep the leading ``rank`` columns of ``(U, sigma, W)``; add the dropped energy."""
    if rank is None or sigma.shape[0] <= rank:
        return U, sigma, W, discarded
    return U[:, :rank], sigma[:rank], W[:, :rank], discarded + float(np.sum(sigma[rank:] ** 2))


# --------------------------------------------------------------------------- #
# Recompute
# --------------------------------------------------------------------------- #
def nystrom_eigen(kernel_fn: KernelFn, X, landmarks, rank: int | None = None) -> StreamingNystrom:
    r"""The eigen-form of the column Nyström approximation, computed from scratch.

    Args:
        kernel_fn: ``(X1, X2) -> K(X1, X2)`` (n1, n2), JAX-traceable.
        X: (N, D) points.
        landmarks: (m, D) landmark points (``X[select_landmarks(...)]`` or any others).
        rank: keep the leading ``rank`` eigenpairs (``None``: all ``m``).

    Returns:
        A :class:`StreamingNystrom`; ``N m + m^2`` kernel evaluations and an
        O(N m^2) SVD.

    Example:
        >>> import jax.numpy as jnp, numpy as np
        >>> from aniso_gp.linalg import streaming
        >>> k = lambda a, b: jnp.exp(-0.5 * jnp.sum((a[:, None] - b[None]) ** 2, -1))
        >>> X = np.random.default_rng(0).uniform(0, 4, (200, 3))
        >>> f = streaming.nystrom_eigen(k, X[:150], X[:40])
        >>> f = streaming.update(f, k, X[150:], num_landmarks=10)
        >>> g = streaming.nystrom_eigen(k, X, f.landmarks)
        >>> bool(np.allclose(f.eigenvalues, g.eigenvalues, rtol=1e-8, atol=1e-8))
        True
    """
    X = _points(X, "X")
    S = _points(landmarks, "landmarks", X.shape[1])
    rank = _rank(rank)
    L = _cholesky(_kernel(kernel_fn, S, S))
    F = _cross(kernel_fn, X, S, L)
    cost = S.shape[0] * (S.shape[0] + X.shape[0])
    empty = np.zeros((0,))
    return _eigen(StreamingNystrom(X, S, L, empty, empty, empty, F, 0.0, rank, cost))


def _eigen(state: StreamingNystrom) -> StreamingNystrom:
    """The eigen-form recomputed from the exact ``F`` the state holds (drift reset)."""
    U, sigma, Wt = np.linalg.svd(state.cross, full_matrices=False)
    # A recompute's own truncation is the baseline that drift is measured against.
    U, sigma, W, _ = _truncate(U, sigma, Wt.T, state.rank, 0.0)
    return state._replace(basis=U, singular=sigma, right=W, discarded=0.0)


# --------------------------------------------------------------------------- #
# Updates
# --------------------------------------------------------------------------- #
def add_points(state: StreamingNystrom, kernel_fn: KernelFn, X_new) -> StreamingNystrom:
    r"""Append points, landmarks fixed: ``p m`` kernel evaluations, an SVD of ``(r + p) x m``.

    ``[F; F_p] = blockdiag(U, I_p) M`` with ``M = [diag(sigma) W^T; F_p]`` and
    ``F_p = K(X_new, S) L^{-T}``; ``M = U_M Sigma W_M^T`` gives
    ``U' = blockdiag(U, I_p) U_M``, ``sigma' = Sigma``, ``W' = W_M``.
    """
    X_new = _points(X_new, "X_new", state.points.shape[1])
    return _add_rows(state, X_new, _cross(kernel_fn, X_new, state.landmarks, state.chol))


def _add_rows(state, X_new, Fp):
    core = np.concatenate([state.singular[:, None] * state.right.T, Fp], axis=0)
    Um, sigma, Wmt = np.linalg.svd(core, full_matrices=False)
    r = state.basis.shape[1]
    U = np.concatenate([state.basis @ Um[:r], Um[r:]], axis=0)
    U, sigma, W, discarded = _truncate(U, sigma, Wmt.T, state.rank, state.discarded)
    return state._replace(
        points=np.concatenate([state.points, X_new], axis=0), basis=U, singular=sigma, right=W,
        cross=np.concatenate([state.cross, Fp], axis=0), discarded=discarded,
        evaluations=state.evaluations + Fp.size,
    )


def _orthonormal_complement(U, G):
    """``(U^T G, Q, R)`` with ``Q R = (I - U U^T) G``, ``Q`` orthonormal and orthogonal to ``U``.

    Classical Gram-Schmidt twice ("twice is enough", Giraud et al. 2005): one pass
    leaves ``U^T Q`` at ``eps kappa``, which the Rayleigh-Ritz core would then
    treat as exact.
    """
    C = U.T @ G
    Rg = G - U @ C
    C2 = U.T @ Rg
    Q, R = np.linalg.qr(Rg - U @ C2)
    return C + C2, Q, R


def add_landmarks(state: StreamingNystrom, kernel_fn: KernelFn, new_landmarks) -> StreamingNystrom:
    r"""Grow the landmark set by ``t`` points: ``N t + t m + t^2`` kernel evaluations.

    ``B = K_TS L^{-T}`` (t, m), ``C C^T = K_TT - B B^T`` (jittered Cholesky of the
    Schur complement), ``G = (K(X, T) - F B^T) C^{-T}`` (N, t); ``U^T G`` and
    ``Q R = (I - U U^T) G`` give the core ``[[diag(sigma), U^T G], [0, R]]``, whose
    SVD is the Rayleigh-Ritz update.
    The new landmarks should add information (a Schur complement that is not
    round-off): pick them with :func:`select_new_landmarks`.
    """
    T = _points(new_landmarks, "new_landmarks", state.points.shape[1])
    B = _cross(kernel_fn, T, state.landmarks, state.chol)
    state = _add_columns(state, kernel_fn, T, B)
    return state._replace(evaluations=state.evaluations + B.size)


def _add_columns(state, kernel_fn, T, B):
    t, m = T.shape[0], state.landmarks.shape[0]
    r = state.basis.shape[1]
    C = _cholesky(_kernel(kernel_fn, T, T) - B @ B.T)
    G = solve_triangular(C, (_kernel(kernel_fn, state.points, T) - state.cross @ B.T).T,
                         lower=True).T
    UtG, Q, R = _orthonormal_complement(state.basis, G)
    core = np.block([[np.diag(state.singular), UtG], [np.zeros((t, r)), R]])
    Um, sigma, Wmt = np.linalg.svd(core, full_matrices=False)
    U = np.concatenate([state.basis, Q], axis=1) @ Um
    W = np.block([[state.right, np.zeros((m, t))], [np.zeros((t, r)), np.eye(t)]]) @ Wmt.T
    U, sigma, W, discarded = _truncate(U, sigma, W, state.rank, state.discarded)
    return state._replace(
        landmarks=np.concatenate([state.landmarks, T], axis=0),
        chol=np.block([[state.chol, np.zeros((m, t))], [B, C]]), basis=U, singular=sigma,
        right=W, cross=np.concatenate([state.cross, G], axis=1), discarded=discarded,
        evaluations=state.evaluations + t * (t + state.points.shape[0]),
    )


#: A candidate whose residual variance is below this fraction of the largest kernel
#: diagonal adds nothing as a landmark.
PIVOT_TOL = 1e-6


def select_new_landmarks(state: StreamingNystrom, kernel_fn: KernelFn, X_new, num: int,
                         rel_tol: float = PIVOT_TOL) -> np.ndarray:
    r"""Indices into ``X_new`` of up to ``num`` new landmarks, by greedy pivoted Cholesky.

    The residual kernel of the candidates given the current landmarks,
    ``K_pp - F_p F_p^T``, is factored with largest-diagonal pivoting: each pick is
    the candidate that the landmarks and the earlier picks explain least. Stops
    early when the largest residual falls below ``rel_tol`` times the largest
    kernel diagonal (the candidates add nothing). ``p (m + 1 + num)`` kernel evaluations.
    """
    X_new = _points(X_new, "X_new", state.points.shape[1])
    num = check.positive_int(num, "num")
    Fp = _cross(kernel_fn, X_new, state.landmarks, state.chol)
    return _pivots(kernel_fn, X_new, Fp, num, rel_tol)


def _pivots(kernel_fn, X_new, Fp, num, rel_tol):
    """Greedy pivoted Cholesky of ``K_pp - Fp Fp^T`` from its diagonal and the picked columns."""
    p = X_new.shape[0]
    kdiag = _diagonal(kernel_fn, X_new)
    d = kdiag - np.sum(Fp * Fp, axis=1)
    floor = rel_tol * float(np.max(kdiag))
    cols, picks = np.zeros((p, 0)), []
    for _ in range(min(num, p)):
        i = int(np.argmax(d))
        if d[i] <= floor:
            break
        residual_col = _kernel(kernel_fn, X_new, X_new[i:i + 1])[:, 0] - Fp @ Fp[i]
        g = (residual_col - cols @ cols[i]) / np.sqrt(d[i])
        cols = np.column_stack([cols, g])
        picks.append(i)
        d = d - g * g
        d[picks] = -np.inf
    return np.asarray(picks, dtype=np.int64)


def update(state: StreamingNystrom, kernel_fn: KernelFn, X_new,
           num_landmarks: int = 0) -> StreamingNystrom:
    """New points, and up to ``num_landmarks`` of them as new landmarks.

    :func:`add_points` with the landmarks fixed, then :func:`add_landmarks` with the
    candidates :func:`select_new_landmarks` picks among ``X_new``.
    """
    X_new = _points(X_new, "X_new", state.points.shape[1])
    num_landmarks = check.integer(num_landmarks, "num_landmarks", minimum=0)
    Fp = _cross(kernel_fn, X_new, state.landmarks, state.chol)  # serves both steps
    state = _add_rows(state, X_new, Fp)
    if not num_landmarks:
        return state
    picks = _pivots(kernel_fn, X_new, Fp, num_landmarks, PIVOT_TOL)
    state = state._replace(evaluations=state.evaluations + X_new.shape[0] * (1 + picks.size))
    # The new landmarks' rows of F are the B of add_landmarks: already evaluated.
    return _add_columns(state, kernel_fn, X_new[picks], Fp[picks]) if picks.size else state


def needs_refresh(state: StreamingNystrom, tol: float = 1e-3) -> bool:
    """G-REST's test: truncations since the last recompute dropped over ``tol`` of the trace
    (which bounds the excess trace error over a recompute, relative to ``tr(F F^T)``)."""
    return state.drift > check.tolerance(tol, "tol")


def refresh(state: StreamingNystrom) -> StreamingNystrom:
    """The eigen-form recomputed by an SVD of the exact ``F`` held: O(N m^2), no kernel
    evaluations; resets :attr:`~StreamingNystrom.drift`."""
    return _eigen(state)
