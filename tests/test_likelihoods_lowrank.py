"""DTC / FITC likelihoods, low-rank LOO and predictions against dense formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
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
    idx = nystrom.select_landmarks(Z, M, "rpcholesky", seed=1, kernel_fn=kernel())
    U = np.asarray(nystrom.nystrom_factor(kernel(), Z, idx))
    return Z, r, idx, U


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


@pytest.mark.parametrize("block_size", [64, 37, 1000])
def test_streamed_equals_materialised(problem, block_size):
    Z, r, idx, U = problem
    k = kernel()
    dtc = lk.lowrank_loglik_streamed(k, Z, idx, r, NOISE, block_size=block_size)
    fitc = lk.lowrank_loglik_streamed(k, Z, idx, r, NOISE, kdiag=VAR, block_size=block_size)
    np.testing.assert_allclose(dtc, lk.dtc_loglik(U, r, NOISE), rtol=1e-12)
    np.testing.assert_allclose(fitc, lk.fitc_loglik(U, VAR, r, NOISE), rtol=1e-12)


def test_all_points_as_landmarks_recover_exact_likelihood():
    rng = np.random.default_rng(2)
    n = 80
    Z = rng.uniform(0.0, 6.0, size=(n, 3))  # well spread: K_mm needs no jitter
    r = rng.standard_normal(n)
    k = kernel()
    U = nystrom.nystrom_factor(k, Z, np.arange(n))
    exact = float(lk.exact_loglik(k(Z, Z) + NOISE * jnp.eye(n), r))
    assert abs(float(lk.dtc_loglik(U, r, NOISE)) - exact) < 1e-8
    assert abs(float(lk.fitc_loglik(U, VAR, r, NOISE)) - exact) < 1e-8
    streamed = lk.lowrank_loglik_streamed(k, Z, np.arange(n), r, NOISE, block_size=32)
    assert abs(float(streamed) - exact) < 1e-8


def test_gradients_low_rank_and_through_hyperparameters(problem):
    Z, r, idx, U = problem
    # Landmark rows sit exactly on the clip max(k - rowsum(U^2), 0) (K_ii = Q_ii there),
    # where finite differences in arbitrary U directions straddle the kink; shrink U
    # so every row is strictly inside. Hyperparameter directions keep K_ii = Q_ii.
    check_grads(
        jax.jit(lambda U, r, s: lk.fitc_loglik(U, VAR, r, s)),
        (0.9 * U, r, NOISE),
        order=1,
        modes=["rev"],
        atol=1e-5,
        rtol=1e-5,
    )

    def materialised(theta):
        k = kernel(jnp.exp(theta[0]), jnp.exp(theta[1]))
        Uh = nystrom.nystrom_factor(k, Z, idx)
        return lk.fitc_loglik(Uh, jnp.exp(theta[1]), r, jnp.exp(theta[2]))

    def streamed(theta):
        k = kernel(jnp.exp(theta[0]), jnp.exp(theta[1]))
        return lk.lowrank_loglik_streamed(
            k, Z, idx, r, jnp.exp(theta[2]), kdiag=jnp.exp(theta[1]), block_size=64
        )

    theta = np.array([0.1, 0.2, np.log(NOISE)])
    g_mat = jax.jit(jax.grad(materialised))(theta)
    value = jax.jit(materialised)
    h = 1e-5
    central = [(value(theta + h * e) - value(theta - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(g_mat, central, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(streamed))(theta), g_mat, rtol=1e-9)


def test_lowrank_loo_matches_dense_loo(problem):
    Z, r, idx, U = problem
    for kdiag, C in ((None, U @ U.T + NOISE * np.eye(N)), (VAR, fitc_cov(U))):
        got = lk.lowrank_loo_pointwise(U, r, NOISE, kdiag=kdiag)
        Cinv = np.linalg.inv(C)
        alpha, dinv = Cinv @ r, np.diag(Cinv)
        ref_ll = -0.5 * np.log(2 * np.pi) + 0.5 * np.log(dinv) - 0.5 * alpha**2 / dinv
        np.testing.assert_allclose(got[0], ref_ll, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got[1], alpha / dinv, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got[2], 1.0 / dinv, rtol=1e-9)


def test_lowrank_predict_matches_dense_and_exact(problem):
    Z, r, idx, U = problem
    k = kernel()
    Znew = np.random.default_rng(3).uniform(0.0, 3.0, size=(25, 3))
    L = nystrom.landmark_cholesky(k, Z[idx])
    Unew = np.asarray(nystrom.cross_factor(k, Znew, Z[idx], L))
    for kdiag, C in ((None, U @ U.T + NOISE * np.eye(N)), (VAR, fitc_cov(U))):
        mean, var = lk.lowrank_predict(U, r, NOISE, Unew, VAR, kdiag=kdiag)
        Qsn = Unew @ U.T  # the approximate prior's cross-covariance
        np.testing.assert_allclose(mean, Qsn @ np.linalg.solve(C, r), rtol=1e-9, atol=1e-10)
        ref_var = VAR - np.sum(Qsn * np.linalg.solve(C, Qsn.T).T, axis=1)
        np.testing.assert_allclose(var, ref_var, rtol=1e-9, atol=1e-10)
    # Every point a landmark: DTC prediction is the exact GP prediction.
    rng = np.random.default_rng(4)
    Zs = rng.uniform(0.0, 6.0, size=(60, 3))
    rs = rng.standard_normal(60)
    Us = nystrom.nystrom_factor(k, Zs, np.arange(60))
    Ls = nystrom.landmark_cholesky(k, Zs)
    mean, var = lk.lowrank_predict(Us, rs, NOISE, nystrom.cross_factor(k, Znew, Zs, Ls), VAR)
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
        lk.lowrank_predict(U, r, NOISE, np.ones((4, M + 1)), VAR)
    with pytest.raises(ValueError, match="`block_size`"):
        lk.lowrank_loglik_streamed(kernel(), Z, idx, r, NOISE, block_size=0)
