"""DTC / FITC likelihoods, low-rank LOO and predictions against dense formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from aniso_gp import likelihoods as lk
from aniso_gp.linalg import nystrom

N, M, NOISE, VAR = 200, 30, 0.05, 1.3


def kernel(scale=1.0, variance=VAR):
    def k(Z1, Z2):
        d = (Z1[:, None, :] - Z2[None, :, :]) * scale
        return variance * jnp.exp(-0.5 * jnp.sum(d * d, axis=-1))

    return k


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    Z = rng.uniform(0.0, 3.0, size=(N, 3))
    r = rng.standard_normal(N)
    idx = np.sort(rng.choice(N, M, replace=False))
    U = np.asarray(nystrom.nystrom_factor(kernel(), Z, idx))
    return Z, r, idx, U


@pytest.fixture(scope="module")
def every_point_a_landmark():
    """60 well-spread points (K needs no jitter), all of them landmarks."""
    rng = np.random.default_rng(2)
    Z = rng.uniform(0.0, 6.0, size=(60, 3))
    r = rng.standard_normal(60)
    k = kernel()
    return Z, r, nystrom.nystrom_factor(k, Z, np.arange(60)), nystrom.landmark_cholesky(k, Z)


def fitc_cov(U):
    return U @ U.T + np.diag(np.maximum(VAR - np.sum(U * U, 1), 0.0) + NOISE)


def test_dtc_and_fitc_match_dense_mvn(problem):
    Z, r, idx, U = problem
    dtc_ref = multivariate_normal(np.zeros(N), U @ U.T + NOISE * np.eye(N)).logpdf(r)
    fitc_ref = multivariate_normal(np.zeros(N), fitc_cov(U)).logpdf(r)
    assert abs(float(lk.dtc_loglik(U, r, NOISE)) - dtc_ref) < 1e-8
    assert abs(float(lk.fitc_loglik(U, VAR, r, NOISE)) - fitc_ref) < 1e-8
    assert abs(float(lk.fitc_loglik(U, np.full(N, VAR), r, NOISE)) - fitc_ref) < 1e-8
    assert abs(dtc_ref - fitc_ref) > 1.0  # the FITC correction matters here


def test_streamed_equals_materialised(problem):
    Z, r, idx, U = problem
    k = kernel()
    # 37 does not divide N (padded last block); 1000 > N (one block).
    dtc = lk.lowrank_loglik_streamed(k, Z, idx, r, NOISE, block_size=1000)
    fitc = lk.lowrank_loglik_streamed(k, Z, idx, r, NOISE, kdiag=VAR, block_size=37)
    np.testing.assert_allclose(dtc, lk.dtc_loglik(U, r, NOISE), rtol=1e-12)
    np.testing.assert_allclose(fitc, lk.fitc_loglik(U, VAR, r, NOISE), rtol=1e-12)
    # Landmarks given as inputs instead of indices: the same density.
    at = lk.lowrank_loglik_streamed(k, Z, Z[idx], r, NOISE, kdiag=VAR, block_size=37)
    np.testing.assert_allclose(at, fitc, rtol=1e-14)


def test_all_points_as_landmarks_recover_exact_likelihood(every_point_a_landmark):
    Z, r, U, _ = every_point_a_landmark
    n, k = Z.shape[0], kernel()
    exact = float(lk.exact_loglik(k(Z, Z) + NOISE * jnp.eye(n), r))
    assert abs(float(lk.dtc_loglik(U, r, NOISE)) - exact) < 1e-8
    assert abs(float(lk.fitc_loglik(U, VAR, r, NOISE)) - exact) < 1e-8


def test_gradients_through_hyperparameters(problem):
    # The operator's own gradients (in U and d) are checked in test_linalg_operators;
    # here the whole chain theta -> kernel -> Nystrom factor -> FITC likelihood.
    Z, r, idx, _ = problem

    def materialised(theta):
        k = kernel(jnp.exp(theta[0]), jnp.exp(theta[1]))
        Uh = nystrom.nystrom_factor(k, Z, idx)
        return lk.fitc_loglik(Uh, jnp.exp(theta[1]), r, jnp.exp(theta[2]))

    def streamed(theta):
        k = kernel(jnp.exp(theta[0]), jnp.exp(theta[1]))
        return lk.lowrank_loglik_streamed(
            k, Z, idx, r, jnp.exp(theta[2]), kdiag=jnp.exp(theta[1]), block_size=64
        )

    # The streamed gradient (scan + checkpoint) against central differences of
    # the materialised value, which equals the streamed one to round-off.
    theta = np.array([0.1, 0.2, np.log(NOISE)])
    value = jax.jit(materialised)
    h = 1e-5
    central = [(value(theta + h * e) - value(theta - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(jax.jit(jax.grad(streamed))(theta), central, rtol=1e-6)


def test_lowrank_gradient_matches_dense_closed_form(problem):
    # The closed-form tangent of the Woodbury likelihood against the dense
    # gradient dlogp/dC = (alpha alpha^T - C^-1)/2 chained to U and d by hand.
    Z, r, idx, U = problem
    d = np.asarray(lk.fitc_diagonal(U, VAR, NOISE))
    C = U @ U.T + np.diag(d)
    Ci = np.linalg.inv(C)
    alpha = Ci @ r
    S = 0.5 * (np.outer(alpha, alpha) - Ci)
    gU, gd, gr = jax.grad(lk.lowrank_loglik, argnums=(0, 1, 2))(U, d, r)
    np.testing.assert_allclose(gU, 2 * S @ U, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gd, np.diag(S), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gr, -alpha, rtol=1e-9, atol=1e-10)
    # Second order too (the hypergradient solvers take forward-over-reverse
    # HVPs): against autodiff of the dense density, along a random direction.
    def dense(U, d, r):
        return jax.scipy.stats.multivariate_normal.logpdf(r, jnp.zeros(N), U @ U.T + jnp.diag(d))

    rng = np.random.default_rng(5)
    args = (jnp.asarray(U), jnp.asarray(d), jnp.asarray(r))
    tangent = (rng.standard_normal(U.shape), rng.standard_normal(N), rng.standard_normal(N))

    def hvp(f):
        return jax.jvp(jax.grad(f, argnums=(0, 1, 2)), args, tangent)[1]

    for a, b in zip(hvp(lk.lowrank_loglik), hvp(dense), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-7 * np.max(np.abs(b)))


def low_rank_models(U):
    """(diagonal d, dense covariance) for DTC and FITC."""
    return (
        (lk.dtc_diagonal(U, NOISE), U @ U.T + NOISE * np.eye(N)),
        (lk.fitc_diagonal(U, VAR, NOISE), fitc_cov(U)),
    )


def test_lowrank_loo_matches_dense_loo(problem):
    Z, r, idx, U = problem
    for d, C in low_rank_models(U):
        np.testing.assert_allclose(lk.lowrank_loglik(U, d, r), lk.exact_loglik(C, r), rtol=1e-12)
        got = lk.lowrank_loo_pointwise(U, d, r)
        Cinv = np.linalg.inv(C)
        alpha, dinv = Cinv @ r, np.diag(Cinv)
        ref_ll = -0.5 * np.log(2 * np.pi) + 0.5 * np.log(dinv) - 0.5 * alpha**2 / dinv
        np.testing.assert_allclose(got[0], ref_ll, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got[1], alpha / dinv, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got[2], 1.0 / dinv, rtol=1e-9)


def test_lowrank_predict_matches_dense_and_exact(problem, every_point_a_landmark):
    Z, r, idx, U = problem
    k = kernel()
    Znew = np.random.default_rng(3).uniform(0.0, 3.0, size=(25, 3))
    L = nystrom.landmark_cholesky(k, Z[idx])
    Unew = np.asarray(nystrom.cross_factor(k, Znew, Z[idx], L))
    for d, C in low_rank_models(U):
        mean, var = lk.lowrank_predict(U, d, r, Unew, VAR)
        Qsn = Unew @ U.T  # the approximate prior's cross-covariance
        np.testing.assert_allclose(mean, Qsn @ np.linalg.solve(C, r), rtol=1e-9, atol=1e-10)
        ref_var = VAR - np.sum(Qsn * np.linalg.solve(C, Qsn.T).T, axis=1)
        np.testing.assert_allclose(var, ref_var, rtol=1e-9, atol=1e-10)
    # Every point a landmark: DTC prediction is the exact GP prediction.
    Zs, rs, Us, Ls = every_point_a_landmark
    Unew = nystrom.cross_factor(k, Znew, Zs, Ls)
    mean, var = lk.lowrank_predict(Us, lk.dtc_diagonal(Us, NOISE), rs, Unew, VAR)
    ref = lk.exact_predict(k(Zs, Zs) + NOISE * jnp.eye(60), rs, k(Zs, Znew), jnp.full(25, VAR))
    np.testing.assert_allclose(mean, ref[0], atol=1e-8)
    np.testing.assert_allclose(var, ref[1], atol=1e-8)


def test_bad_inputs_raise(problem):
    Z, r, idx, U = problem
    with pytest.raises(ValueError, match="`noise_var`"):
        lk.dtc_loglik(U, r, -0.1)
    with pytest.raises(ValueError, match="`y_centered` must have shape"):
        lk.fitc_loglik(U, VAR, r[:-1], NOISE)
    with pytest.raises(ValueError, match="`kdiag`"):
        lk.fitc_loglik(U, np.ones(3), r, NOISE)
    with pytest.raises(ValueError, match="`U` must be a 2-D"):
        lk.dtc_loglik(U[:, 0], r, NOISE)
    with pytest.raises(ValueError, match="`U_new`"):
        lk.lowrank_predict(U, lk.dtc_diagonal(U, NOISE), r, np.ones((4, M + 1)), VAR)
    with pytest.raises(ValueError, match="`d` must be strictly positive"):
        lk.lowrank_loglik(U, -np.ones(N), r)
    with pytest.raises(ValueError, match="`block_size`"):
        lk.lowrank_loglik_streamed(kernel(), Z, idx, r, NOISE, block_size=0)
    with pytest.raises(ValueError, match="`landmarks` must be"):
        lk.lowrank_loglik_streamed(kernel(), Z, Z[idx, :2], r, NOISE)
    with pytest.raises(ValueError, match="`landmarks` must be"):
        lk.lowrank_loglik_streamed(kernel(), Z, np.asarray(idx, dtype=float), r, NOISE)
