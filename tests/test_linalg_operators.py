"""LowRankPlusDiagonal and the eigen-form operator against dense NumPy/SciPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sla
from jax.test_util import check_grads

from aniso_gp.linalg.operators import (
    EigenLowRankPlusShift,
    LowRankPlusDiagonal,
    left_matmul,
    self_gram,
)

N, M = 60, 7


@pytest.fixture
def lowrank():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((N, M))
    d = rng.uniform(0.05, 2.0, N)
    return U, d, U @ U.T + np.diag(d)


@pytest.fixture
def eigen():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((N, M)))
    lam = np.sort(rng.uniform(0.5, 50.0, M))[::-1]
    s = 1e-6  # small shift: where the generic Woodbury form would lose digits
    return Q, lam, s, Q @ np.diag(lam) @ Q.T + s * np.eye(N)


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b))


def test_lowrank_matches_dense(lowrank):
    U, d, A = lowrank
    op = LowRankPlusDiagonal(U, d)
    rng = np.random.default_rng(2)
    v, V = rng.standard_normal(N), rng.standard_normal((N, 3))
    assert _rel(op.to_dense(), A) < 1e-14
    assert _rel(op.matvec(v), A @ v) < 1e-13
    assert _rel(op.matvec(V), A @ V) < 1e-13
    assert _rel(op.solve(v), sla.solve(A, v, assume_a="pos")) < 1e-10
    assert _rel(op.solve(V), sla.solve(A, V, assume_a="pos")) < 1e-10
    assert abs(float(op.logdet()) - np.linalg.slogdet(A)[1]) < 1e-10
    assert _rel(op.diagonal(), np.diag(A)) < 1e-14
    quad, logdet = op.inv_quad_logdet(v)
    assert abs(float(quad) - v @ sla.solve(A, v)) < 1e-9 * abs(v @ sla.solve(A, v))
    assert abs(float(logdet) - np.linalg.slogdet(A)[1]) < 1e-10


def test_eigen_form_matches_dense_with_tiny_shift(eigen):
    Q, lam, s, A = eigen
    op = EigenLowRankPlusShift(Q, lam, s)
    v = np.random.default_rng(3).standard_normal(N)
    assert _rel(op.to_dense(), A) < 1e-13
    assert _rel(op.matvec(v), A @ v) < 1e-12
    # Exact inverse from the eigendecomposition: no 1/s^2 cancellation to compare against.
    exact = Q @ ((Q.T @ v) / (lam + s)) + (v - Q @ (Q.T @ v)) / s
    assert _rel(op.solve(v), exact) < 1e-12
    assert _rel(op.matvec(op.solve(v)), v) < 1e-8
    assert abs(float(op.logdet()) - (np.sum(np.log(lam + s)) + (N - M) * np.log(s))) < 1e-10
    assert _rel(op.diagonal(), np.diag(A)) < 1e-12
    assert LowRankPlusDiagonal.from_eigen(Q, lam, s).rank == M


def test_sample_is_square_root_times_normal(lowrank, eigen):
    U, d, A = lowrank
    Q, lam, s, A2 = eigen
    key = jax.random.PRNGKey(7)
    for op, dense in ((LowRankPlusDiagonal(U, d), A), (EigenLowRankPlusShift(Q, lam, s), A2)):
        S = np.asarray(op.sqrt_matvec(jnp.eye(N + M)).T)  # columns S e_j -> (N, N + M)
        np.testing.assert_allclose(S @ S.T, dense, rtol=0, atol=1e-12 * np.max(np.abs(dense)))
        eps = jax.random.normal(key, (4, N + M))
        draws = op.sample(key, (4,))
        assert draws.shape == (4, N)
        np.testing.assert_allclose(draws, np.asarray(eps) @ S.T, rtol=1e-12, atol=1e-12)
    assert op.sample(key).shape == (N,)  # default shape=()


def test_sample_covariance_monte_carlo():
    # Small operator, many draws: entrywise sd of the sample covariance is
    # sqrt((A_ii A_jj + A_ij^2) / n); allow 5 of them.
    rng = np.random.default_rng(4)
    U = rng.standard_normal((4, 2))
    op = LowRankPlusDiagonal(U, rng.uniform(0.5, 1.0, 4))
    A = np.asarray(op.to_dense())
    n = 40_000
    x = np.asarray(op.sample(jax.random.PRNGKey(0), (n,)))
    cov = x.T @ x / n
    sd = np.sqrt((np.outer(np.diag(A), np.diag(A)) + A**2) / n)
    assert np.all(np.abs(cov - A) < 5 * sd)


def test_operators_pass_through_jit_and_vmap(lowrank):
    U, d, A = lowrank
    op = LowRankPlusDiagonal(U, d)
    v = np.ones(N)
    x = jax.jit(lambda o, v: o.solve(v))(op, v)
    np.testing.assert_allclose(x, np.linalg.solve(A, v), rtol=1e-10)
    ld = jax.vmap(lambda dd: LowRankPlusDiagonal(U, dd).logdet())(jnp.stack([d, 2 * d]))
    np.testing.assert_allclose(ld[1], np.linalg.slogdet(U @ U.T + np.diag(2 * d))[1], rtol=1e-12)


def test_gradients(lowrank, eigen):
    U, d, _ = lowrank
    v = np.linspace(-1.0, 1.0, N)

    def f(U, d):
        op = LowRankPlusDiagonal(U, d)
        quad, logdet = op.inv_quad_logdet(v)
        return quad + logdet + jnp.sum(op.solve(v) ** 2)

    check_grads(jax.jit(f), (U, d), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    Q, lam, s, _ = eigen

    def g(lam, s):
        op = EigenLowRankPlusShift(Q, lam, s)
        return op.logdet() + jnp.sum(op.solve(v) * v)

    check_grads(jax.jit(g), (lam, 0.3), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise(lowrank, eigen):
    U, d, _ = lowrank
    with pytest.raises(ValueError, match="`d` must be strictly positive"):
        LowRankPlusDiagonal(U, -d)
    with pytest.raises(ValueError, match="`d` must have shape"):
        LowRankPlusDiagonal(U, d[:-1])
    with pytest.raises(ValueError, match="`U` must be a 2-D"):
        LowRankPlusDiagonal(U[:, 0], d)
    with pytest.raises(ValueError, match="`U` contains NaN"):
        LowRankPlusDiagonal(np.where(U > 1, np.nan, U), d)
    op = LowRankPlusDiagonal(U, d)
    with pytest.raises(ValueError, match="`v` must have shape"):
        op.solve(np.ones(N + 1))
    with pytest.raises(ValueError, match="`eps`"):
        op.sqrt_matvec(np.ones(N))
    Q, lam, s, _ = eigen
    with pytest.raises(ValueError, match="orthonormal"):
        EigenLowRankPlusShift(2.0 * Q, lam, s)
    with pytest.raises(ValueError, match="`lam` must be non-negative"):
        EigenLowRankPlusShift(Q, -lam, s)
    with pytest.raises(ValueError, match="`shift` must be strictly positive"):
        EigenLowRankPlusShift(Q, lam, 0.0)
    with pytest.raises(ValueError, match="`lam` must have shape"):
        EigenLowRankPlusShift(Q, lam[:-1], s)


def test_products_with_hand_written_pullbacks():
    # Values against NumPy; first and second reverse derivatives against finite
    # differences (the pullbacks are the symmetric and transposed-layout forms).
    rng = np.random.default_rng(5)
    A, X = rng.standard_normal((5, 5)), rng.standard_normal((5, 9))
    np.testing.assert_allclose(self_gram(jnp.asarray(X)), X @ X.T, rtol=1e-14)
    np.testing.assert_allclose(left_matmul(jnp.asarray(A), jnp.asarray(X)), A @ X, rtol=1e-14)
    check_grads(lambda V: jnp.sin(self_gram(V)), (X,), order=2, modes=["rev"])
    check_grads(lambda A, X: jnp.sin(left_matmul(A, X)), (A, X), order=2, modes=["rev"])
