r"""Nyström approximations: landmark selection, stable factors, randomized sketches.

Column Nyström. With landmarks ``X_m = X[idx]`` (m of the N points)::

    K ~ K_nm K_mm^{-1} K_mn = U U^T,   U = K_nm L^{-T},   L L^T = K_mm (+ jitter)

:func:`nystrom_factor` computes ``U`` (N, m) by a triangular solve against the
jittered Cholesky of ``K_mm`` (never an explicit inverse). Landmarks should be
chosen on the *transformed* coordinates, where the kernel is isotropic
(:func:`select_landmarks`).

Matrix-free. :func:`randomized_nystrom` builds ``A ~ U diag(lam) U^T`` (``U``
orthonormal) from products with a Gaussian test matrix, stabilised by a tiny
shift (Frangella, Tropp & Udell 2023, Alg. 2.1).

This module knows nothing of kernels: it takes a kernel callable
``kernel_fn(X1, X2) -> (n1, n2)`` that must be JAX-traceable.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from aniso_gp import _validation as check
from aniso_gp.linalg import dense
from aniso_gp.linalg.operators import matmul

KernelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
LANDMARK_METHODS = ("uniform", "kmeans++", "rpcholesky")


# --------------------------------------------------------------------------- #
# Differentiable jittered Cholesky
# --------------------------------------------------------------------------- #
@jax.custom_jvp
def jittered_cholesky(K: jnp.ndarray) -> jnp.ndarray:
    r"""Lower factor of ``K + jitter I`` by :func:`aniso_gp.linalg.dense.cholesky`, with gradients.

    The jitter comes from a discrete search (a ``lax.while_loop`` inside
    ``dense.cholesky``), so it is a constant of the tangent map: ``d(L L^T) = dK``
    gives the usual rule ``dL = L Phi(L^{-1} dK L^{-T})``, ``Phi`` = lower triangle
    with the diagonal halved. Reverse mode thus never differentiates the search
    itself, whatever form it takes. NaN if every jitter level failed.
    """
    return dense.cholesky(K)[0]


@jittered_cholesky.defjvp
def _jittered_cholesky_jvp(primals, tangents):
    (K,), (dK,) = primals, tangents
    L = dense.cholesky(K)[0]
    dK = 0.5 * (dK + dK.T)
    inner = solve_triangular(L, dK, lower=True)
    inner = solve_triangular(L, inner.T, lower=True)  # L^-1 dK L^-T (symmetric)
    phi = jnp.tril(inner) - 0.5 * jnp.diag(jnp.diagonal(inner))
    return L, matmul(L, phi)


# --------------------------------------------------------------------------- #
# Input checks
# --------------------------------------------------------------------------- #
def _points(Z, name: str) -> jnp.ndarray:
    if check.is_traced(Z):
        return Z
    arr = np.asarray(Z.to_numpy() if hasattr(Z, "to_numpy") else Z, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"`{name}` must be a 2-D (N, D) array of points; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return jnp.asarray(arr)


def _num_landmarks(m, n: int) -> int:
    m = check.positive_int(m, "m")
    if m > n:
        raise ValueError(f"`m` = {m} landmarks exceeds the number of points N = {n}")
    return int(m)


def _landmark_indices(idx, n: int) -> jnp.ndarray:
    if check.is_traced(idx):
        return idx
    arr = np.asarray(idx)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"`landmark_idx` must be a non-empty 1-D integer array; got {arr.dtype} {arr.shape}"
        )
    if arr.size > n:
        raise ValueError(f"`landmark_idx` has {arr.size} landmarks but X has only N = {n} points")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(
            f"`landmark_idx` must lie in [0, {n}); got range [{arr.min()}, {arr.max()}]"
        )
    if np.unique(arr).size != arr.size:
        raise ValueError("`landmark_idx` contains repeated indices (K_mm would be singular)")
    return jnp.asarray(arr)


# --------------------------------------------------------------------------- #
# Landmark selection
# --------------------------------------------------------------------------- #
def _sample_index(key, weights, chosen, scale):
    """One index drawn with probability proportional to ``weights`` over unchosen points.

    When the weights are exhausted (all remaining residual below round-off,
    e.g. fewer distinct points than ``m``), fall back to uniform over the
    unchosen points so that the ``m`` indices stay distinct.
    """
    w = jnp.where(chosen, 0.0, jnp.maximum(weights, 0.0))
    exhausted = jnp.sum(w) <= 1e-12 * scale
    w = jnp.where(exhausted, jnp.where(chosen, 0.0, 1.0), w)
    return jax.random.categorical(key, jnp.log(w))


@partial(jax.jit, static_argnums=(1,))
def _kmeanspp(Z, m, key):
    n = Z.shape[0]
    key, sub = jax.random.split(key)
    first = jax.random.randint(sub, (), 0, n)

    def body(i, state):
        idx, mind2, chosen, key, last = state
        d = Z - Z[last]
        mind2 = jnp.minimum(mind2, jnp.sum(d * d, axis=1))
        key, sub = jax.random.split(key)
        nxt = _sample_index(sub, mind2, chosen, jnp.max(mind2) + 1e-300)
        return idx.at[i].set(nxt), mind2, chosen.at[nxt].set(True), key, nxt

    idx = jnp.zeros(m, int).at[0].set(first)
    chosen = jnp.zeros(n, bool).at[first].set(True)
    state = (idx, jnp.full(n, jnp.inf), chosen, key, first)
    return jax.lax.fori_loop(1, m, body, state)[0]


@partial(jax.jit, static_argnums=(1, 3))
def rpcholesky(Z, m: int, key, kernel_fn: KernelFn):
    r"""Randomly pivoted partial Cholesky of the kernel matrix on ``Z`` (Chen et al. 2023).

    Each pivot is drawn with probability proportional to the diagonal of the
    residual ``K - F F^T``. ``F`` (N, m) is the column Nyström approximation at
    the pivots, ``F F^T = K_{:S} K_{SS}^{-1} K_{S:}``, built from ``m`` kernel
    columns (N m kernel evaluations) and O(N m^2) flops: no matrix-vector
    product with ``K``. Returns ``(F, idx)``; idx (m,) are the pivots in order.
    """
    n = Z.shape[0]
    diag = jax.vmap(lambda z: kernel_fn(z[None, :], z[None, :])[0, 0])(Z)
    trace = jnp.sum(diag)

    def body(i, state):
        F, resid, idx, chosen, key = state
        key, sub = jax.random.split(key)
        s = _sample_index(sub, resid, chosen, trace)
        # Column s of the residual kernel K - F F^T; F's unfilled columns are zero.
        g = kernel_fn(Z, Z[s][None, :])[:, 0] - matmul(F, F[s])
        pivot = g[s]
        f = jnp.where(pivot > 0, g / jnp.sqrt(jnp.where(pivot > 0, pivot, 1.0)), 0.0)
        resid = (resid - f * f).at[s].set(0.0)
        return F.at[:, i].set(f), resid, idx.at[i].set(s), chosen.at[s].set(True), key

    state = (jnp.zeros((n, m)), diag, jnp.zeros(m, int), jnp.zeros(n, bool), key)
    F, _, idx, _, _ = jax.lax.fori_loop(0, m, body, state)
    return F, idx


def select_landmarks(
    Z, m: int, method: str = "uniform", seed: int = 0, kernel_fn: KernelFn | None = None
) -> np.ndarray:
    r"""Choose ``m`` distinct landmark points among the rows of ``Z``.

    Args:
        Z: (N, D) points, normally the kernel's *transformed* inputs (where the
            kernel is isotropic), so that distances mean correlation.
        m: number of landmarks, ``1 <= m <= N``.
        method:
            * ``"uniform"``: uniformly at random without replacement;
            * ``"kmeans++"``: D^2 seeding, each next point drawn with probability
              proportional to its squared distance to the nearest chosen one;
            * ``"rpcholesky"``: randomly pivoted Cholesky (Chen, Epperly, Tropp &
              Webber 2023): each pivot drawn proportional to the diagonal of the
              residual kernel ``K - F F^T``; O(N m^2) time, O(N m) memory, and
              ``m`` kernel columns. Needs ``kernel_fn``.
        seed: integer seed; the result is a deterministic function of it.
        kernel_fn: JAX-traceable ``(Z1, Z2) -> K(Z1, Z2)`` of shape (n1, n2);
            required for ``"rpcholesky"``, ignored otherwise.

    Returns:
        (m,) sorted int64 NumPy array of row indices.
    """
    Z = _points(Z, "Z")
    m = _num_landmarks(m, Z.shape[0])
    check.one_of(method, LANDMARK_METHODS, "method")
    if method == "uniform":
        idx = np.random.default_rng(seed).choice(Z.shape[0], size=m, replace=False)
    elif method == "kmeans++":
        idx = np.asarray(_kmeanspp(Z, m, jax.random.PRNGKey(seed)))
    else:
        if kernel_fn is None or not callable(kernel_fn):
            raise ValueError("`kernel_fn` (Z1, Z2) -> K is required for method='rpcholesky'")
        idx = np.asarray(rpcholesky(Z, m, jax.random.PRNGKey(seed), kernel_fn)[1])
    return np.sort(idx.astype(np.int64))


# --------------------------------------------------------------------------- #
# Column Nyström factor
# --------------------------------------------------------------------------- #
def landmark_cholesky(kernel_fn: KernelFn, X_landmarks: jnp.ndarray) -> jnp.ndarray:
    """Lower factor (m, m) of ``K_mm`` (+ the smallest jitter that works), differentiable."""
    Kmm = kernel_fn(X_landmarks, X_landmarks)
    return jittered_cholesky(0.5 * (Kmm + Kmm.T))


def cross_factor(kernel_fn: KernelFn, X: jnp.ndarray, X_landmarks, L) -> jnp.ndarray:
    """``K(X, X_m) L^{-T}`` (n, m); rows of ``U`` for any points ``X``.

    A product with the explicit ``L^{-1}`` (blocked, O(m^3)) rather than a
    triangular solve: XLA's CPU triangular solve with n right-hand sides ran at
    about a fifth of the matrix-product rate (N = 5,000, m = 256), and so did
    its reverse pass. ``L`` is a jittered kernel factor (condition number at
    most about 1e6 at the jitter levels used), where the two agree to 1e-9 in
    ``U`` and 1e-12 in the FITC diagonal ``k - rowsum(U^2)``.
    """
    Knm = kernel_fn(X, X_landmarks)
    return matmul(Knm, dense.triangular_inverse(L).T)


def nystrom_factor(kernel_fn: KernelFn, X, landmark_idx) -> jnp.ndarray:
    r"""Nyström factor ``U = K_nm L^{-T}`` (N, m), so that ``K ~ U U^T``.

    Args:
        kernel_fn: JAX-traceable ``(X1, X2) -> K(X1, X2)`` (n1, n2).
        X: (N, D) points (for the kernels here, the transformed inputs ``Z``).
        landmark_idx: (m,) distinct indices into ``X`` (from :func:`select_landmarks`).

    ``L`` is the jittered Cholesky factor of ``K_mm`` (:func:`jittered_cholesky`);
    ``U`` is exact on the landmark rows (``U_m U_m^T = L L^T``), and
    ``diag(K) - rowsum(U^2) >= 0`` up to round-off and jitter. Differentiable in
    whatever ``kernel_fn`` closes over and in ``X``. O(N m^2) time, O(N m) memory.
    """
    X = _points(X, "X")
    idx = _landmark_indices(landmark_idx, X.shape[0])
    Xm = X[idx]
    return cross_factor(kernel_fn, X, Xm, landmark_cholesky(kernel_fn, Xm))


# --------------------------------------------------------------------------- #
# Randomized Nyström for matrix-free PSD operators
# --------------------------------------------------------------------------- #
@partial(jax.jit, static_argnums=(1, 2))
def _orthonormal_sketch(key, n: int, rank: int) -> jnp.ndarray:
    return jnp.linalg.qr(jax.random.normal(key, (n, rank), dtype=jnp.float64))[0]


def randomized_nystrom(
    matvec: Callable[[jnp.ndarray], jnp.ndarray],
    n: int,
    rank: int,
    key,
    *,
    batched: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    r"""Randomized Nyström approximation ``A ~ U diag(lam) U^T`` of a symmetric PSD operator.

    Frangella, Tropp & Udell (2023), Algorithm 2.1: ``Omega`` (n, r) an
    orthonormalised Gaussian sketch, ``Y = A Omega``, shift
    ``nu = sqrt(n) eps |Y|_F``, ``Y_nu = Y + nu Omega``, ``C = chol(Omega^T Y_nu)``,
    ``B = Y_nu C^{-T}``, thin SVD ``B = U Sigma V^T``, ``lam = max(Sigma^2 - nu, 0)``.
    The shift keeps the Cholesky well defined in floating point; removing it
    afterwards leaves the approximation unbiased by it.

    Args:
        matvec: ``v -> A v``. With ``batched=False`` (default) it takes a vector
            (n,) and is ``vmap``-ed over the r sketch columns; with ``batched=True``
            it is called once on the (n, r) block and must return (n, r).
        n: dimension of ``A``.
        rank: sketch size r, ``1 <= r <= n``.
        key: JAX PRNG key.

    Returns:
        ``(U, lam)``: ``U`` (n, r) orthonormal columns, ``lam`` (r,) >= 0 sorted descending.
    """
    n, rank = check.positive_int(n, "n"), check.positive_int(rank, "rank")
    if rank > n:
        raise ValueError(f"`rank` = {rank} exceeds the dimension n = {n}")
    omega = _orthonormal_sketch(key, n, rank)
    Y = matvec(omega) if batched else jax.vmap(matvec, in_axes=1, out_axes=1)(omega)
    if Y.shape != (n, rank):
        raise ValueError(f"`matvec` returned shape {Y.shape} for the sketch; expected {(n, rank)}")
    return _nystrom_from_sketch(omega, Y)


@jax.jit
def _nystrom_from_sketch(omega, Y):
    """Steps after the products: shift, Cholesky of the core, thin SVD, unshift."""
    n = omega.shape[0]
    nu = jnp.sqrt(n) * jnp.finfo(jnp.float64).eps * jnp.linalg.norm(Y)
    Y = Y + nu * omega
    core = matmul(omega.T, Y)
    C = jittered_cholesky(0.5 * (core + core.T))
    B = jax.lax.linalg.triangular_solve(C, Y, left_side=False, lower=True, transpose_a=True)
    U, sigma, _ = jnp.linalg.svd(B, full_matrices=False)
    return U, jnp.maximum(sigma * sigma - nu, 0.0)
