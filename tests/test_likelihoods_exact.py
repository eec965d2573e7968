"""Tests for the exact (dense) likelihood, closed-form LOO and prediction in
aniso_gp.likelihoods, against scipy / brute force / scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import AXIS_ANGLES, lengthscale_vectors, property_settings
from hypothesis import HealthCheck, given
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation
from scipy.stats import multivariate_normal
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern

from aniso_gp import kernels, likelihoods, so3

N = 40


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 1.0, size=(N, 3))
    y = rng.standard_normal(N)
    return X, y


def _cov(X, logl, a, base="matern52", s2=1.3, noise=0.05):
    K = kernels.gram(X, X, {"lengthscales": jnp.exp(logl), "axis_angle": a, "variance": s2}, base)
    return K + noise * jnp.eye(X.shape[0])


LOGL = np.log([0.5, 0.3, 0.2])
AX = np.array([0.3, -0.4, 0.8])


@pytest.mark.parametrize("base", ["rbf", "matern12", "matern52"])
def test_exact_loglik_matches_scipy(data, base):
    X, y = data
    C = np.asarray(_cov(X, LOGL, AX, base))
    ref = multivariate_normal(np.zeros(N), C).logpdf(y)
    np.testing.assert_allclose(float(likelihoods.exact_loglik(C, y)), ref, rtol=0, atol=1e-10)


def test_exact_loglik_vmaps():
    rng = np.random.default_rng(1)
    B = rng.standard_normal((3, 6, 6))
    C = B @ np.swapaxes(B, 1, 2) + np.eye(6)
    r = rng.standard_normal((3, 6))
    out = np.asarray(jax.vmap(likelihoods.exact_loglik)(C, r))
    ref = [multivariate_normal(np.zeros(6), C[i]).logpdf(r[i]) for i in range(3)]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_exact_loglik_gradients_closed_form(data):
    X, y = data
    C = np.asarray(_cov(X, LOGL, AX))
    gC, gr = jax.grad(likelihoods.exact_loglik, argnums=(0, 1))(jnp.asarray(C), jnp.asarray(y))
    Cinv = np.linalg.inv(C)
    alpha = Cinv @ y
    np.testing.assert_allclose(np.asarray(gr), -alpha, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(gC), 0.5 * (np.outer(alpha, alpha) - Cinv), rtol=1e-8, atol=1e-10
    )
    # directional derivative along a symmetric perturbation vs central differences
    rng = np.random.default_rng(2)
    S = rng.standard_normal((N, N))
    S = 0.5 * (S + S.T)
    h = 1e-6
    fd = (
        multivariate_normal(np.zeros(N), C + h * S).logpdf(y)
        - multivariate_normal(np.zeros(N), C - h * S).logpdf(y)
    ) / (2 * h)
    np.testing.assert_allclose(np.sum(np.asarray(gC) * S), fd, rtol=1e-6)


def _plain_loglik(C, r):
    L = jnp.linalg.cholesky(C)
    alpha = jax.scipy.linalg.cho_solve((L, True), r)
    return -0.5 * r @ alpha - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * r.shape[0] * jnp.log(2 * jnp.pi)


def test_check_grads_through_kernel_construction(data):
    base = "matern52"  # exercises both the exp Taylor branch and the r = 0 distance guard
    X, y = data
    Xj, rj = jnp.asarray(X), jnp.asarray(y - 0.1)

    def cov(logl, a, log_s2, log_noise):
        return _cov(Xj, logl, a, base, jnp.exp(log_s2), jnp.exp(log_noise))

    def f(*p):
        return likelihoods.exact_loglik(cov(*p), rj)

    args = (jnp.asarray(LOGL), jnp.asarray(AX), jnp.asarray(0.2), jnp.asarray(np.log(0.05)))
    check_grads(f, args, order=1, modes=["rev"])
    # at the axis-angle origin exactly (the Taylor branch of exp)
    args0 = (args[0], jnp.zeros(3), args[2], args[3])
    check_grads(f, args0, order=1, modes=["rev"])
    # the custom VJP equals plain autodiff through a Cholesky
    ga = jax.grad(f, argnums=(0, 1, 2, 3))(*args0)
    gb = jax.grad(lambda *p: _plain_loglik(cov(*p), rj), argnums=(0, 1, 2, 3))(*args0)
    for u, v in zip(ga, gb, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-8, atol=1e-10)


def test_exact_loglik_jitter_and_failure():
    # duplicated point without noise: singular; the jittered factor is used
    X = np.array([[0.0, 0.0, 0.0], [0.5, 0.1, 0.2], [0.0, 0.0, 0.0], [1.0, 0.3, 0.9]])
    K = np.asarray(kernels.gram(X, X, {"lengthscales": np.ones(3)}))
    r = np.array([0.3, -0.2, 0.3, 0.5])
    val = float(likelihoods.exact_loglik(K, r))
    assert np.isfinite(val)
    for level in (1e-8, 1e-7, 1e-6):
        ref = multivariate_normal(np.zeros(4), K + level * np.eye(4)).logpdf(r)
        if abs(val - ref) < 1e-6 * abs(ref):
            break
    else:
        pytest.fail(f"no jitter level reproduces {val}")
    # an indefinite matrix fails every level: NaN (a rejected proposal), not an exception
    bad = np.diag([1.0, -1.0, 1.0, 1.0])
    assert np.isnan(float(likelihoods.exact_loglik(bad, r)))


@given(lengthscale_vectors(0.15, 2.0), AXIS_ANGLES)
@property_settings(30, HealthCheck.function_scoped_fixture)
def test_symmetries_leave_loglik_unchanged(l, a):
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, size=(15, 3))
    y = rng.standard_normal(15)
    G = np.asarray(so3.symmetry_group())
    ls = np.abs(G @ l)
    avs = Rotation.from_matrix(Rotation.from_rotvec(a).as_matrix() @ np.swapaxes(G, 1, 2))
    ll = np.asarray(_loglik24(jnp.log(ls), avs.as_rotvec(), X, y))
    np.testing.assert_allclose(ll, ll[0], rtol=1e-10, atol=1e-9)
    ref = multivariate_normal(np.zeros(15), np.asarray(_cov(X, np.log(l), a, "matern32")))
    np.testing.assert_allclose(ll[0], ref.logpdf(y), rtol=1e-10, atol=1e-9)


_loglik24 = jax.jit(
    jax.vmap(
        lambda logl, a, X, y: likelihoods.exact_loglik(_cov(X, logl, a, "matern32"), y),
        in_axes=(0, 0, None, None),
    )
)


# --------------------------------------------------------------------------- #
# closed-form leave-one-out
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("base", ["rbf", "matern32"])
def test_loo_matches_brute_force(data, base):
    X, y = data
    r = y - 0.3
    C = np.asarray(_cov(X, LOGL, AX, base, noise=0.02))
    loglik, resid, var = (np.asarray(v) for v in likelihoods.loo_pointwise(C, r))
    assert loglik.shape == resid.shape == var.shape == (N,)
    for i in range(N):
        keep = np.arange(N) != i
        Cm, c = C[np.ix_(keep, keep)], C[keep, i]
        mu = c @ np.linalg.solve(Cm, r[keep])
        v = C[i, i] - c @ np.linalg.solve(Cm, c)
        np.testing.assert_allclose(resid[i], r[i] - mu, rtol=0, atol=1e-8)
        np.testing.assert_allclose(var[i], v, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(
            loglik[i], multivariate_normal(mu, v).logpdf(r[i]), rtol=0, atol=1e-8
        )


# --------------------------------------------------------------------------- #
# prediction
# --------------------------------------------------------------------------- #
def test_exact_predict_matches_dense_and_sklearn(data):
    X, y = data
    rng = np.random.default_rng(4)
    Xs = rng.uniform(0, 1, size=(7, 3))
    p = {"lengthscales": np.exp(LOGL), "axis_angle": AX, "variance": 1.3}
    noise = 0.05
    C = np.asarray(kernels.gram(X, X, p, "matern52")) + noise * np.eye(N)
    Ks = np.asarray(kernels.gram(X, Xs, p, "matern52"))
    kss = np.full(7, 1.3)
    mean, var = (np.asarray(v) for v in likelihoods.exact_predict(C, y, Ks, kss))
    np.testing.assert_allclose(mean, Ks.T @ np.linalg.solve(C, y), rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        var, kss - np.einsum("ij,ij->j", Ks, np.linalg.solve(C, Ks)), rtol=0, atol=1e-10
    )
    T = np.asarray(kernels.transform_matrix(p))
    gpr = GaussianProcessRegressor(
        ConstantKernel(1.3, "fixed") * Matern(1.0, "fixed", nu=2.5), alpha=noise, optimizer=None
    ).fit(X @ T, y)
    m_sk, sd_sk = gpr.predict(Xs @ T, return_std=True)
    np.testing.assert_allclose(mean, m_sk, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(var), sd_sk, rtol=0, atol=1e-9)


def test_exact_predict_interpolates_with_tiny_noise(data):
    X, y = data
    p = {"lengthscales": np.array([0.3, 0.2, 0.25]), "axis_angle": AX}
    K = np.asarray(kernels.gram(X, X, p))
    C = K + 1e-10 * np.eye(N)
    mean, var = (np.asarray(v) for v in likelihoods.exact_predict(C, y, K[:, :7], np.ones(7)))
    np.testing.assert_allclose(mean, y[:7], rtol=0, atol=1e-5)
    np.testing.assert_allclose(var, 0.0, atol=1e-6)
    assert np.all(var >= 0)
    # far from the data the prediction reverts to the prior
    far = np.asarray(kernels.gram(X, X[:7] + 50.0, p))
    mean, var = (np.asarray(v) for v in likelihoods.exact_predict(C, y, far, np.ones(7)))
    np.testing.assert_allclose(mean, 0.0, atol=1e-12)
    np.testing.assert_allclose(var, 1.0, atol=1e-12)
