"""Landmark selection, column Nyström factors and the randomized Nyström sketch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from aniso_gp.linalg import nystrom


def rbf(Z1, Z2):
    d = Z1[:, None, :] - Z2[None, :, :]
    return jnp.exp(-0.5 * jnp.sum(d * d, axis=-1))


def clustered_points(n=300, seed=0):
    """A dense cluster plus a sparse halo: uniform landmarks waste most picks in the cluster."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(0.0, 0.3, size=(int(0.9 * n), 3))
    halo = rng.uniform(-6.0, 6.0, size=(n - dense.shape[0], 3))
    return np.concatenate([dense, halo])


@pytest.mark.parametrize("method", ["uniform", "kmeans++", "rpcholesky"])
def test_select_landmarks_contract(method):
    Z = clustered_points(200)  # same shapes as the comparison below: compiled once
    idx = nystrom.select_landmarks(Z, 30, method, seed=3, kernel_fn=rbf)
    assert idx.shape == (30,) and idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0)  # sorted and distinct
    assert idx.min() >= 0 and idx.max() < 200
    again = nystrom.select_landmarks(Z, 30, method, seed=3, kernel_fn=rbf)
    other = nystrom.select_landmarks(Z, 30, method, seed=4, kernel_fn=rbf)
    np.testing.assert_array_equal(idx, again)
    assert not np.array_equal(idx, other)
    everything = nystrom.select_landmarks(Z[:20], 20, method, kernel_fn=rbf)
    np.testing.assert_array_equal(everything, np.arange(20))


@pytest.mark.parametrize("method", ["kmeans++", "rpcholesky"])
def test_select_landmarks_with_duplicate_points_stays_distinct(method):
    # 5 distinct locations, each 4 times: after 5 picks the residual is exhausted.
    Z = np.repeat(np.random.default_rng(1).uniform(size=(5, 3)) * 10, 4, axis=0)
    idx = nystrom.select_landmarks(Z, 20, method, kernel_fn=rbf)  # shapes shared above
    assert np.unique(idx).size == 20
    first = nystrom.select_landmarks(Z, 5, method, kernel_fn=rbf)
    assert np.unique(Z[first], axis=0).shape[0] == 5  # every location before any repeat


def test_rpcholesky_factor_is_the_column_nystrom_at_its_pivots():
    Z = clustered_points(200)
    F, idx = nystrom.rpcholesky(jnp.asarray(Z), 30, jax.random.PRNGKey(2), rbf)
    F, idx = np.asarray(F), np.asarray(idx)
    assert np.unique(idx).size == 30
    K = np.asarray(rbf(Z, Z))
    ref = K[:, idx] @ np.linalg.solve(K[np.ix_(idx, idx)], K[idx, :])
    np.testing.assert_allclose(F @ F.T, ref, atol=1e-8)
    np.testing.assert_array_equal(np.sort(idx), nystrom.select_landmarks(Z, 30, "rpcholesky",
                                                                         seed=2, kernel_fn=rbf))


def _trace_error(Z, idx):
    U = np.asarray(nystrom.nystrom_factor(rbf, Z, idx))
    return float(np.sum(1.0 - np.sum(U * U, axis=1)))  # trace(K - U U^T), k(x, x) = 1


def test_rpcholesky_and_kmeanspp_beat_uniform_on_clustered_data():
    Z = clustered_points(200)
    err = {
        method: np.mean(
            [
                _trace_error(Z, nystrom.select_landmarks(Z, 30, method, seed=s, kernel_fn=rbf))
                for s in range(2)
            ]
        )
        for method in ("uniform", "kmeans++", "rpcholesky")
    }
    assert err["rpcholesky"] < 0.5 * err["uniform"], err
    assert err["kmeans++"] < err["uniform"], err


def test_nystrom_factor_matches_dense_formula():
    rng = np.random.default_rng(2)
    Z = rng.uniform(0, 4, size=(150, 3))
    idx = np.sort(rng.choice(150, 30, replace=False))
    U = np.asarray(nystrom.nystrom_factor(rbf, Z, idx))
    K = np.asarray(rbf(Z, Z))
    Q = K[:, idx] @ np.linalg.solve(K[np.ix_(idx, idx)], K[idx, :])
    np.testing.assert_allclose(U @ U.T, Q, atol=1e-9)
    np.testing.assert_allclose(U[idx] @ U[idx].T, K[np.ix_(idx, idx)], atol=1e-12)
    assert np.all(np.diag(K) - np.sum(U * U, axis=1) > -1e-10)
    Uall = np.asarray(nystrom.nystrom_factor(rbf, Z, np.arange(150)))
    np.testing.assert_allclose(Uall @ Uall.T, K, atol=1e-9)


def test_jittered_cholesky_gradient_and_singular_input():
    Z = np.random.default_rng(3).uniform(0, 3, size=(12, 3))

    def f(scale):
        L = nystrom.jittered_cholesky(rbf(Z * scale, Z * scale) + 0.1 * jnp.eye(12))
        return jnp.sum(jnp.log(jnp.diagonal(L))) + jnp.sum(L)

    check_grads(jax.jit(f), (1.3,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    # A repeated point makes K singular: the escalating jitter keeps L finite.
    Zdup = np.concatenate([Z, Z[:1]])
    L = nystrom.jittered_cholesky(rbf(Zdup, Zdup))
    assert bool(jnp.all(jnp.isfinite(L)))
    assert jnp.linalg.norm(L @ L.T - rbf(Zdup, Zdup)) < 1e-3


def test_nystrom_factor_gradient_through_kernel():
    Z = np.random.default_rng(4).uniform(0, 3, size=(40, 3))
    idx = np.arange(0, 40, 4)

    def f(scale):
        U = nystrom.nystrom_factor(lambda a, b: rbf(a * scale, b * scale), Z, idx)
        return jnp.sum(U**2) + jnp.sum(U[:, 0])

    check_grads(jax.jit(f), (0.8,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_randomized_nystrom_near_best_rank_k():
    rng = np.random.default_rng(5)
    Z = rng.uniform(0, 5, size=(300, 3))
    K = np.asarray(rbf(Z, Z))
    evals = np.linalg.eigvalsh(K)[::-1]
    k, p = 40, 10
    best_k = np.sum(evals[k:])  # best rank-k error in trace (nuclear) norm
    U, lam = nystrom.randomized_nystrom(lambda v: K @ v, 300, k + p, jax.random.PRNGKey(0))
    U, lam = np.asarray(U), np.asarray(lam)
    np.testing.assert_allclose(U.T @ U, np.eye(k + p), atol=1e-10)
    assert np.all(np.diff(lam) <= 1e-12) and np.all(lam >= 0)
    err = np.trace(K - U @ np.diag(lam) @ U.T)
    # Expected nuclear error <= (1 + k / (p - 1)) x best rank-k (Frangella et al. 2023).
    assert err <= (1 + k / (p - 1)) * best_k, (err, best_k)
    assert err >= np.sum(evals[k + p :]) - 1e-8  # cannot beat the best rank-(k + p)
    Ub, lamb = nystrom.randomized_nystrom(
        lambda V: K @ V, 300, k + p, jax.random.PRNGKey(0), batched=True
    )
    np.testing.assert_allclose(lamb, lam, rtol=1e-10, atol=1e-10)


def test_bad_inputs_raise():
    Z = np.random.default_rng(6).uniform(size=(20, 3))
    with pytest.raises(ValueError, match="exceeds the number of points"):
        nystrom.select_landmarks(Z, 21)
    with pytest.raises(ValueError, match="`m` must be a positive integer"):
        nystrom.select_landmarks(Z, 0)
    with pytest.raises(ValueError, match="`method`"):
        nystrom.select_landmarks(Z, 5, "random")
    with pytest.raises(ValueError, match="`kernel_fn`"):
        nystrom.select_landmarks(Z, 5, "rpcholesky")
    with pytest.raises(ValueError, match="`Z` must be a 2-D"):
        nystrom.select_landmarks(Z[:, 0], 5)
    with pytest.raises(ValueError, match="`landmark_idx` must lie in"):
        nystrom.nystrom_factor(rbf, Z, np.array([0, 20]))
    with pytest.raises(ValueError, match="repeated"):
        nystrom.nystrom_factor(rbf, Z, np.array([1, 1]))
    with pytest.raises(ValueError, match="integer"):
        nystrom.nystrom_factor(rbf, Z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="`landmark_idx` has 21"):
        nystrom.nystrom_factor(rbf, Z, np.arange(21))
    with pytest.raises(ValueError, match="`rank`"):
        nystrom.randomized_nystrom(lambda v: v, 5, 6, jax.random.PRNGKey(0))
