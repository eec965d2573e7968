r"""Gaussian-process marginal likelihoods, predictions and closed-form leave-one-out.

Exact (dense Cholesky) routines work on the full covariance of the observations
``C = K + s^2 I`` (N, N) and the centred residual ``r = y - m`` (N,):

.. math::
    \log p(y) = -\tfrac12 r^T C^{-1} r - \tfrac12 \log|C| - \tfrac{N}{2}\log 2\pi .

Its gradient has the closed form ``dlogp/dC = (alpha alpha^T - C^{-1}) / 2`` with
``alpha = C^{-1} r``; :func:`exact_loglik` implements it as a custom VJP, so the
reverse pass costs one triangular inverse and one product instead of
differentiating through the Cholesky factorisation: about ``4/3 N^3`` flops
(:func:`~aniso_gp.linalg.dense.inverse_from_cholesky`) on top of the ``N^3/3``
of the factorisation.

Closed-form GP leave-one-out (Rasmussen & Williams 2006, eq. 5.12): the
predictive of ``y_i`` given the other points is
``N(y_i - alpha_i / [C^-1]_ii, 1 / [C^-1]_ii)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular

from aniso_gp import _validation as check
from aniso_gp.linalg.dense import cholesky, inverse_from_cholesky, triangular_inverse
from aniso_gp.linalg.nystrom import landmark_cholesky
from aniso_gp.linalg.operators import LowRankPlusDiagonal, left_matmul, matmul, self_gram

_LOG_2PI = math.log(2.0 * math.pi)


def _loglik_from_factor(L, r):
    alpha = cho_solve((L, True), r)
    n = r.shape[-1]
    ll = -0.5 * jnp.dot(r, alpha) - jnp.sum(jnp.log(jnp.diagonal(L))) - 0.5 * n * _LOG_2PI
    return ll, alpha


@jax.custom_vjp
def exact_loglik(C: jnp.ndarray, r: jnp.ndarray) -> jnp.ndarray:
    """Log density of ``r ~ N(0, C)``; ``C`` (N, N) SPD, ``r`` (N,).

    Jitter escalates inside :func:`aniso_gp.linalg.dense.cholesky`; if even the
    largest level fails the result is NaN (a rejected proposal under NUTS).
    """
    L, _ = cholesky(C)
    return _loglik_from_factor(L, r)[0]


def _exact_fwd(C, r):
    L, _ = cholesky(C)
    ll, alpha = _loglik_from_factor(L, r)
    return ll, (L, alpha)


def _exact_bwd(res, g):
    L, alpha = res
    Cinv = inverse_from_cholesky(L)
    dC = 0.5 * g * (jnp.outer(alpha, alpha) - Cinv)
    return dC, -g * alpha


exact_loglik.defvjp(_exact_fwd, _exact_bwd)


def loo_pointwise(C: jnp.ndarray, r: jnp.ndarray):
    """Closed-form leave-one-out predictive of each observation.

    Returns ``(loglik, mean_residual, var)``, each (N,): the log density of
    ``r_i`` under its leave-one-out predictive, the LOO residual
    ``r_i - E[r_i | r_-i] = alpha_i / [C^-1]_ii`` and the LOO variance
    ``1 / [C^-1]_ii``.
    """
    L, _ = cholesky(C)
    alpha = cho_solve((L, True), r)
    # [C^-1]_ii = sum_k (L^-1)_ki^2: no need for the full inverse.
    d = jnp.sum(triangular_inverse(L) ** 2, axis=0)
    resid = alpha / d
    var = 1.0 / d
    loglik = -0.5 * _LOG_2PI + 0.5 * jnp.log(d) - 0.5 * alpha**2 / d
    return loglik, resid, var


def exact_predict(C: jnp.ndarray, r: jnp.ndarray, K_cross: jnp.ndarray, k_diag: jnp.ndarray):
    """Posterior of the latent field at new points.

    Args:
        C: (N, N) covariance of the observations (kernel plus noise).
        r: (N,) centred observations.
        K_cross: (N, P) kernel between training and new points.
        k_diag: (P,) prior variance at the new points.

    Returns:
        ``(mean, var)`` (P,) each: ``K_*^T C^-1 r`` and ``k_** - diag(K_*^T C^-1 K_*)``
        (clipped at 0 against round-off).
    """
    L, _ = cholesky(C)
    alpha = cho_solve((L, True), r)
    V = solve_triangular(L, K_cross, lower=True)
    mean = K_cross.T @ alpha
    var = jnp.maximum(k_diag - jnp.sum(V * V, axis=0), 0.0)
    return mean, var


# --------------------------------------------------------------------------- #
# Low-rank likelihoods: subset of regressors / DTC and FITC
# --------------------------------------------------------------------------- #
# Low-rank likelihoods. With a Nyström factor ``U`` (N, m), ``Q = U U^T ~ K``:
#
# * DTC / subset of regressors: ``r ~ N(0, Q + s^2 I)``;
# * FITC: ``r ~ N(0, Q + diag(k - rowsum(U^2)) + s^2 I)``, which restores the
#   exact prior variance ``k_ii`` on the diagonal.
#
# Both are ``N(0, U U^T + diag(d))`` evaluated by :class:`LowRankPlusDiagonal`
# (Woodbury + determinant lemma): O(N m^2) time, O(N m) memory, nothing N x N.
# With every point a landmark (m = N) both equal :func:`exact_loglik` (up to the
# jitter of ``K_mm``). :func:`lowrank_loglik_streamed` evaluates the same
# densities from a kernel callable in row blocks, never holding ``U``.


def _noise_variance(noise_var):
    if not check.is_traced(noise_var):
        if jnp.ndim(noise_var) != 0 or not float(noise_var) > 0:
            raise ValueError(f"`noise_var` must be a strictly positive scalar; got {noise_var!r}")
    return noise_var


def _as_float64(x):
    return x if check.is_traced(x) else jnp.asarray(x, dtype=jnp.float64)


def _centred(y_centered, n: int):
    r = _as_float64(y_centered)
    if r.ndim != 1 or r.shape[0] != n:
        raise ValueError(f"`y_centered` must have shape ({n},) to match `U`; got {r.shape}")
    return r


def _factor(U):
    U = _as_float64(U)
    if U.ndim != 2:
        raise ValueError(f"`U` must be a 2-D (N, m) array; got shape {U.shape}")
    return U


def _kdiag_vector(kdiag, n: int):
    kdiag = jnp.asarray(kdiag, dtype=jnp.float64)
    if kdiag.ndim == 0:
        return jnp.full((n,), kdiag)
    if kdiag.shape != (n,):
        raise ValueError(f"`kdiag` must be a scalar or have shape ({n},); got {kdiag.shape}")
    return kdiag


def dtc_diagonal(U, noise_var) -> jnp.ndarray:
    """DTC diagonal ``s^2`` repeated (N,): the ``d`` of ``U U^T + diag(d)``."""
    U = _factor(U)
    return jnp.full((U.shape[0],), _noise_variance(noise_var), dtype=U.dtype)


def fitc_diagonal(U, kdiag, noise_var) -> jnp.ndarray:
    """FITC diagonal ``max(k_ii - rowsum(U^2)_i, 0) + s^2`` (N,).

    ``k_ii >= Q_ii`` in exact arithmetic; the clip only absorbs round-off (and
    makes the correction's gradient zero where it is active).
    """
    U = _factor(U)
    kdiag = _kdiag_vector(kdiag, U.shape[0])
    return jnp.maximum(kdiag - jnp.sum(U * U, axis=1), 0.0) + _noise_variance(noise_var)


def _lowrank_logpdf_value(U, d, r):
    quad, logdet = LowRankPlusDiagonal(U, d).inv_quad_logdet(r)
    return -0.5 * (quad + logdet + r.shape[0] * _LOG_2PI)


_lowrank_logpdf = jax.custom_jvp(_lowrank_logpdf_value)


@_lowrank_logpdf.defjvp
def _lowrank_logpdf_jvp(primals, tangents):
    r"""Closed-form tangent of ``log N(r | 0, C)``, ``C = U U^T + diag(d)``.

    With ``S = dlogp/dC = (alpha alpha^T - C^{-1})/2``, ``alpha = C^{-1} r`` and
    Woodbury's ``C^{-1} U = W C_m^{-1}`` (``W = D^{-1} U``, ``C_m = I + U^T W``)::

        dlogp = <2 S U, dU> + <diag S, dd> - <alpha, dr>
        2 S U  = alpha (U^T alpha)^T - W C_m^{-1}
        diag S = (alpha^2 - 1/d + rowsum(W C_m^{-1} * W)) / 2

    Reverse mode transposes this into the gradient at about 4 N m^2 flops beyond
    the value, where autodiff through the Woodbury algebra and its triangular
    solves costs several more passes over the (N, m) factor.
    """
    U, d, r = primals
    dU, dd, dr = tangents
    op = LowRankPlusDiagonal(U, d)
    L = op.capacitance_cholesky()
    W = U / d[:, None]
    t = solve_triangular(L, matmul(W.T, r), lower=True)
    beta = solve_triangular(L.T, t, lower=False)
    alpha = r / d - matmul(W, beta)
    value = -0.5 * (jnp.dot(r, alpha) + jnp.sum(jnp.log(d))
                    + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))) + r.shape[0] * _LOG_2PI)
    # C_m^{-1} explicitly (m x m) and one product: XLA's CPU triangular solve
    # with N right-hand sides runs far below the matrix-product rate.
    Li = triangular_inverse(L)
    WCinv = matmul(W, Li.T @ Li)  # (N, m)
    gU = jnp.outer(alpha, matmul(U.T, alpha)) - WCinv
    gd = 0.5 * (alpha * alpha - 1.0 / d + jnp.sum(WCinv * W, axis=1))
    return value, jnp.sum(gU * dU) + jnp.dot(gd, dd) - jnp.dot(alpha, dr)


# The cores are jitted so eager calls compile once per shape instead of op by op;
# inside an outer jit/grad they simply inline. The operator's constructor checks
# U and d (values only when concrete) before they get here.
@jax.jit
def _loglik_core(op: LowRankPlusDiagonal, r):
    return _lowrank_logpdf(op.U, op.d, r)


def lowrank_loglik(U, d, y_centered) -> jnp.ndarray:
    r"""Log density ``log N(r | 0, U U^T + diag(d))``, the low-rank :func:`exact_loglik`.

    Args:
        U: (N, m) low-rank factor.
        d: (N,) strictly positive diagonal (:func:`dtc_diagonal`, :func:`fitc_diagonal`).
        y_centered: (N,) centred observations.

    Returns:
        Scalar log density including ``-N/2 log 2 pi``; O(N m^2), nothing N x N.
    """
    op = LowRankPlusDiagonal(_factor(U), d)
    return _loglik_core(op, _centred(y_centered, op.U.shape[0]))


def dtc_loglik(U, y_centered, noise_var) -> jnp.ndarray:
    r"""DTC / subset-of-regressors log density ``log N(r | 0, U U^T + s^2 I)``.

    Args:
        U: (N, m) Nyström factor (:func:`~aniso_gp.linalg.nystrom.nystrom_factor`).
        y_centered: (N,) centred observations ``r = y - mean``.
        noise_var: noise variance ``s^2 > 0``.

    Returns:
        Scalar log density (including ``-N/2 log 2 pi``), as :func:`exact_loglik`.
    """
    return lowrank_loglik(U, dtc_diagonal(U, noise_var), y_centered)


def fitc_loglik(U, kdiag, y_centered, noise_var) -> jnp.ndarray:
    r"""FITC log density ``log N(r | 0, U U^T + diag(k - rowsum(U^2)) + s^2 I)``.

    Args:
        U: (N, m) Nyström factor.
        kdiag: prior variances ``k(x_i, x_i)``, scalar (stationary kernel) or (N,).
        y_centered: (N,) centred observations.
        noise_var: noise variance ``s^2 > 0``.
    """
    return lowrank_loglik(U, fitc_diagonal(U, kdiag, noise_var), y_centered)


@jax.jit
def _loo_core(op: LowRankPlusDiagonal, r):
    L = op.capacitance_cholesky()
    alpha = op.solve_with_capacitance(L, r)
    W = solve_triangular(L, (op.U / op.d[:, None]).T, lower=True)  # (m, N)
    cinv_diag = 1.0 / op.d - jnp.sum(W * W, axis=0)
    loglik = -0.5 * _LOG_2PI + 0.5 * jnp.log(cinv_diag) - 0.5 * alpha**2 / cinv_diag
    return loglik, alpha / cinv_diag, 1.0 / cinv_diag


def lowrank_loo_pointwise(U, d, y_centered):
    """Closed-form leave-one-out under ``C = U U^T + diag(d)`` (DTC or FITC ``d``).

    The same formulas as :func:`loo_pointwise`, with
    ``diag(C^{-1}) = 1/d - colsum((L_C^{-1} U^T D^{-1})^2)`` by Woodbury, O(N m^2).

    Returns:
        ``(loglik, mean_residual, var)``, each (N,).
    """
    op = LowRankPlusDiagonal(_factor(U), d)
    return _loo_core(op, _centred(y_centered, op.U.shape[0]))


@jax.jit
def _predict_core(op: LowRankPlusDiagonal, r, U_new, k_new):
    L = op.capacitance_cholesky()
    t = solve_triangular(L, matmul(op.U.T, r / op.d), lower=True)
    V = jax.lax.linalg.triangular_solve(L, U_new, left_side=False, lower=True, transpose_a=True)
    var = k_new - jnp.sum(U_new * U_new, axis=1) + jnp.sum(V * V, axis=1)
    return matmul(V, t), jnp.maximum(var, 0.0)


def lowrank_predict(U, d, y_centered, U_new, k_diag_new):
    r"""Posterior of the latent field at new points under ``C = U U^T + diag(d)``.

    ``d`` is :func:`dtc_diagonal` (DTC) or :func:`fitc_diagonal` (FITC); with
    ``C_m = I + U^T D^{-1} U = L_C L_C^T`` (Quinonero-Candela & Rasmussen 2005)::

        mean = U_* C_m^{-1} U^T D^{-1} r
        var  = k_** - rowsum(U_*^2) + rowsum((U_* L_C^{-T})^2)

    which are the DTC and FITC predictive equations alike (they differ in ``d``).

    Args:
        U: (N, m) training Nyström factor.
        d: (N,) diagonal of the training covariance.
        y_centered: (N,) centred observations.
        U_new: (P, m) rows ``K(X_new, X_m) L^{-T}`` with the same landmark factor
            ``L`` (:func:`~aniso_gp.linalg.nystrom.cross_factor`).
        k_diag_new: (P,) (or scalar) prior variances at the new points.

    Returns:
        ``(mean, var)`` (P,) each, latent (add the noise variance for observations);
        ``var`` clipped at 0 against round-off, as :func:`exact_predict`.
    """
    op = LowRankPlusDiagonal(_factor(U), d)
    U_new = _as_float64(U_new)
    if U_new.ndim != 2 or U_new.shape[1] != op.U.shape[1]:
        raise ValueError(f"`U_new` must have shape (P, {op.U.shape[1]}); got {U_new.shape}")
    k_new = _kdiag_vector(k_diag_new, U_new.shape[0])
    return _predict_core(op, _centred(y_centered, op.U.shape[0]), U_new, k_new)


def _pad_rows(a, total: int, value=0.0):
    pad = [(0, total - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
    return jnp.pad(a, pad, constant_values=value)


def lowrank_loglik_streamed(
    kernel_fn, Z, landmarks, y_centered, noise_var, *, kdiag=None, block_size: int = 2048
) -> jnp.ndarray:
    r"""DTC (``kdiag=None``) or FITC log density from a kernel callable, in row blocks.

    Equals :func:`dtc_loglik` / :func:`fitc_loglik` with ``U`` from
    :func:`~aniso_gp.linalg.nystrom.nystrom_factor`, but ``U`` is never held:
    each block of ``B`` rows forms ``U_b = K(Z_b, Z_m) L^{-T}`` and adds its share
    of the Woodbury statistics::

        G = sum_b U_b^T D_b^{-1} U_b  (m, m),   g = sum_b U_b^T D_b^{-1} r_b  (m,)
        log p = -1/2 (r^T D^{-1} r - |L_C^{-1} g|^2 + sum log d + log|I + G| + N log 2 pi)

    and ``jax.checkpoint`` recomputes each block in the reverse pass, so memory
    stays O(m^2 + B m) for the value and the gradient, while time stays about
    4 N m^2 flops for the value and 8 N m^2 more for the gradient (the Gram
    ``V V^T`` and ``L^{-1} K`` have hand-written pullbacks,
    :func:`~aniso_gp.linalg.operators.self_gram` and
    :func:`~aniso_gp.linalg.operators.left_matmul`). Reverse mode only: the
    gradient is reverse-differentiable again, forward mode is not available.

    Args:
        kernel_fn: JAX-traceable ``(Z1, Z2) -> K`` (n1, n2), e.g. the kernel on
            transformed inputs with its hyperparameters closed over.
        Z: (N, D) inputs of ``kernel_fn``.
        landmarks: (m,) distinct integer indices into ``Z``, or the landmark
            inputs themselves, (m, D).
        y_centered: (N,) centred observations.
        noise_var: ``s^2 > 0``.
        kdiag: ``None`` (DTC) or the prior variances, scalar or (N,) (FITC).
        block_size: rows per block ``B``.
    """
    Z = jnp.asarray(Z, dtype=jnp.float64)
    r = jnp.asarray(y_centered, dtype=jnp.float64)
    n = Z.shape[0]
    if Z.ndim != 2:
        raise ValueError(f"`Z` must be a 2-D (N, D) array; got shape {Z.shape}")
    if r.shape != (n,):
        raise ValueError(f"`y_centered` must have shape ({n},) to match `Z`; got {r.shape}")
    block_size = check.positive_int(block_size, "block_size")
    noise_var = _noise_variance(noise_var)
    landmarks = jnp.asarray(landmarks)
    if landmarks.ndim == 1 and jnp.issubdtype(landmarks.dtype, jnp.integer):
        Zm = Z[landmarks]
    elif landmarks.ndim == 2 and landmarks.shape[1] == Z.shape[1]:
        Zm = landmarks.astype(Z.dtype)
    else:
        raise ValueError(f"`landmarks` must be (m,) integer indices into `Z` or (m, "
                         f"{Z.shape[1]}) inputs; got shape {landmarks.shape}, "
                         f"dtype {landmarks.dtype}")
    L = landmark_cholesky(kernel_fn, Zm)
    m = Zm.shape[0]

    B = min(int(block_size), n)
    nb = -(-n // B)
    total = nb * B
    # Padded rows repeat a real point (finite kernel values) and carry weight 0.
    Zp = jnp.concatenate([Z, jnp.broadcast_to(Z[:1], (total - n, Z.shape[1]))])
    rp = _pad_rows(r, total)
    wp = _pad_rows(jnp.ones(n, dtype=Z.dtype), total)
    fitc = kdiag is not None
    kp = _pad_rows(_kdiag_vector(kdiag, n), total) if fitc else jnp.zeros(total)

    Li = triangular_inverse(L)

    # Blocks are held transposed, U_b^T = L^{-1} K(Z_m, Z_b) (m, B), so that no
    # product contracts over the leading axis: on CPU, XLA ran U_b^T U_b from a
    # row-major (B, m) block at 70 GFLOP/s against 167 for the same flops as
    # U_b^T (U_b^T)^T (B = 4,096, m = 512), and the reverse pass has more of them.
    @jax.checkpoint
    def block_stats(Zb, rb, wb, kb):
        Ut = left_matmul(Li, kernel_fn(Zm, Zb)) * wb[None, :]
        db = jnp.maximum(kb - jnp.sum(Ut * Ut, axis=0), 0.0) + noise_var if fitc else noise_var
        db = jnp.where(wb > 0, db, 1.0)
        sd = jnp.sqrt(db)
        V = Ut / sd[None, :]
        return self_gram(V), matmul(V, rb / sd), jnp.sum(jnp.log(db)), jnp.sum(rb * rb / db)

    def step(carry, block):
        return jax.tree_util.tree_map(jnp.add, carry, block_stats(*block)), None

    zero = jnp.zeros((), Z.dtype)
    init = (jnp.zeros((m, m), Z.dtype), jnp.zeros(m, Z.dtype), zero, zero)
    blocks = (Zp.reshape(nb, B, -1), rp.reshape(nb, B), wp.reshape(nb, B), kp.reshape(nb, B))
    (G, g, sum_logd, quad_d), _ = jax.lax.scan(step, init, blocks)
    Lc = jnp.linalg.cholesky(jnp.eye(m, dtype=Z.dtype) + G)
    t = solve_triangular(Lc, g, lower=True)
    logdet = sum_logd + 2.0 * jnp.sum(jnp.log(jnp.diagonal(Lc)))
    return -0.5 * (quad_d - jnp.dot(t, t) + logdet + n * _LOG_2PI)


# --------------------------------------------------------------------------- #
# Whole volumes: the debiased spatial Whittle likelihood
# --------------------------------------------------------------------------- #
def whittle_terms(expected, residual2, weights) -> jnp.ndarray:
    r"""Per-frequency terms ``-m_w/2 [log(2 pi Ibar_w) + I_w / Ibar_w]`` of :func:`whittle_loglik`.

    All three (..., n0, n1, n2//2 + 1) on the real half spectrum.
    """
    return -0.5 * weights * (jnp.log(expected) + residual2 / expected + _LOG_2PI)


def whittle_loglik(expected, residual2, weights) -> jnp.ndarray:
    r"""Debiased spatial Whittle log pseudo-likelihood of a gridded field.

    .. math::
        \ell(\theta) = -\tfrac12 \sum_{w} \left[\log 2\pi \bar I_\theta(w)
                       + I(w) / \bar I_\theta(w)\right]

    summed (not averaged) over the ``n0 n1 n2`` Fourier frequencies of the
    grid, here as a weighted sum over the real half spectrum (``weights`` from
    :func:`~aniso_gp.linalg.grid.half_spectrum_weights`). ``Ibar`` is the
    expected periodogram (:func:`~aniso_gp.linalg.grid.expected_periodogram`,
    plus the nugget) and ``I = |J - mean G|^2`` the periodogram of the tapered
    field about its mean (Guillaumin, Sykulski, Olhede & Simons, JRSS-B 2022).

    The factor 1/2 makes this the exact Gaussian log density of the field's
    orthonormal real Fourier coordinates *if* they were independent with
    variances ``Ibar`` (Whittle 1953): on a complete grid it approximates the
    exact log-likelihood, so the pseudo-posterior has about the right width
    before the curvature adjustment (:mod:`aniso_gp.calibration`), which
    accounts for the correlation between frequencies that masks, tapers and
    edges leave. (The debiased-Whittle papers minimise the mean of the bracket:
    that is ``-2/n`` times this plus a constant, the same estimator.)
    """
    return jnp.sum(whittle_terms(expected, residual2, weights))
