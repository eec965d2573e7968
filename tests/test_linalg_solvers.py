"""CG, PCG, Neumann solvers and the Nyström preconditioner against dense solves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aniso_gp.linalg import solvers
from aniso_gp.linalg.nystrom import randomized_nystrom


def rbf_matrix(n, lengthscale, seed=0):
    Z = np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, 3)) / lengthscale
    d = Z[:, None, :] - Z[None, :, :]
    return np.exp(-0.5 * np.sum(d * d, axis=-1))


@pytest.fixture(scope="module")
def spd_system():
    rng = np.random.default_rng(1)
    n = 80
    G = rng.standard_normal((n, n))
    A = G @ G.T / n + 0.5 * np.eye(n)
    return A, rng.standard_normal(n)


def test_cg_solves_and_reports(spd_system):
    A, b = spd_system
    x, info = solvers.cg(lambda v: A @ v, b, tol=1e-10)
    exact = np.linalg.solve(A, b)
    np.testing.assert_allclose(x, exact, rtol=1e-7, atol=1e-9)
    true_rel = np.linalg.norm(b - A @ np.asarray(x)) / np.linalg.norm(b)
    assert bool(info.converged) and float(info.residual_norm) <= 1e-10
    np.testing.assert_allclose(float(info.residual_norm), true_rel, rtol=1e-6)
    assert 0 < int(info.iterations) < 80
    # Warm start at the answer: no iterations needed.
    _, warm = solvers.cg(lambda v: A @ v, b, tol=1e-8, x0=exact)
    assert int(warm.iterations) == 0 and bool(warm.converged)
    # Iteration cap: reported, not converged.
    _, capped = solvers.cg(lambda v: A @ v, b, tol=1e-12, maxiter=3)
    assert int(capped.iterations) == 3 and not bool(capped.converged)
    assert float(capped.residual_norm) > 1e-12
    # b = 0: x = 0 at once.
    x0, zero = solvers.cg(lambda v: A @ v, np.zeros(80))
    assert np.all(np.asarray(x0) == 0) and bool(zero.converged) and int(zero.iterations) == 0


def test_solves_differentiate_without_unrolling(spd_system):
    A, b = spd_system
    B = np.diag(np.linspace(0.5, 1.5, 80))

    def loss(t, b, solver):
        x, _ = solver(lambda v: (A + t * B) @ v, b)
        return jnp.sum(x * jnp.arange(80.0))

    def dense(t, b):
        return jnp.sum(jnp.linalg.solve(A + t * B, b) * jnp.arange(80.0))

    # Reverse mode through a while_loop is impossible: these gradients exist only
    # because the solve goes through custom_linear_solve.
    g_ref = jax.grad(dense, argnums=(0, 1))(0.3, b)
    precond = solvers.nystrom_preconditioner(np.eye(80)[:, :5], np.ones(5), 1.0)
    for solver in (
        lambda mv, b: solvers.cg(mv, b, tol=1e-12),
        lambda mv, b: solvers.pcg(mv, b, precond, tol=1e-12),
        lambda mv, b: solvers.richardson(mv, b, precond, lr=0.3, tol=1e-13, maxiter=20000),
    ):
        g = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(0.3, b, solver)
        np.testing.assert_allclose(g[0], g_ref[0], rtol=1e-7)
        np.testing.assert_allclose(g[1], g_ref[1], rtol=1e-7, atol=1e-9)


def test_richardson_is_the_neumann_series_with_a_stopping_rule(spd_system):
    A, b = spd_system
    lam = np.linalg.eigvalsh(A)
    est = solvers.largest_eigenvalue(lambda v: A @ v, 80, jax.random.PRNGKey(1), iterations=300)
    assert lam[-1] * (1 - 1e-6) <= float(est) <= lam[-1] * (1 + 1e-12)  # a lower bound, close
    lr = 1.0 / lam[-1]
    x, info = solvers.richardson(lambda v: A @ v, b, lr=lr, tol=1e-10)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    assert bool(info.converged)
    # the same number of terms of the series gives the same point
    y, _ = solvers.neumann(lambda v: A @ v, b, steps=int(info.iterations), lr=lr)
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
    # contraction 1 - lr lam_min per step: the iteration count the theory predicts
    rate = 1.0 - lam[0] / lam[-1]
    predicted = np.log(1e-10 * np.linalg.norm(b) / np.linalg.norm(b)) / np.log(rate)
    assert int(info.iterations) <= 1.2 * predicted + 5


def test_nystrom_pcg_needs_far_fewer_iterations_than_cg():
    n, mu = 400, 1e-4
    K = rbf_matrix(n, lengthscale=0.4)
    evals = np.linalg.eigvalsh(K)
    assert (evals[-1] + mu) / (evals[0] + mu) > 1e4  # genuinely ill-conditioned
    d_eff = np.sum(evals / (evals + mu))
    rank = int(np.ceil(1.5 * d_eff))
    A = K + mu * np.eye(n)
    b = np.random.default_rng(2).standard_normal(n)
    _, plain = solvers.cg(lambda v: A @ v, b, tol=1e-8)
    U, lam = randomized_nystrom(lambda v: K @ v, n, rank, jax.random.PRNGKey(0))
    P = solvers.nystrom_preconditioner(U, lam, mu)
    x, pre = solvers.pcg(lambda v: A @ v, b, P, tol=1e-8)
    assert bool(plain.converged) and bool(pre.converged)
    assert int(plain.iterations) >= 5 * int(pre.iterations), (plain, pre, rank)
    np.testing.assert_allclose(A @ np.asarray(x), b, atol=1e-7 * np.linalg.norm(b))


def test_nystrom_preconditioner_formula_and_spectrum():
    n, mu = 200, 1e-3
    K = rbf_matrix(n, lengthscale=0.5, seed=3)
    U, lam = randomized_nystrom(lambda v: K @ v, n, 60, jax.random.PRNGKey(1))
    U, lam = np.asarray(U), np.asarray(lam)
    P = solvers.nystrom_preconditioner(U, lam, mu)
    Pinv = np.asarray(P(np.eye(n)))
    expected = (lam[-1] + mu) * U @ np.diag(1 / (lam + mu)) @ U.T + np.eye(n) - U @ U.T
    np.testing.assert_allclose(Pinv, expected, atol=1e-12)
    np.testing.assert_allclose(np.asarray(P(np.ones(n))), expected @ np.ones(n), atol=1e-12)
    # Preconditioned spectrum: far tighter than that of A itself.
    A = K + mu * np.eye(n)
    w_pre = np.linalg.eigvals(Pinv @ A).real
    w = np.linalg.eigvalsh(A)
    assert w_pre.max() / w_pre.min() < 1e-3 * w.max() / w.min()


def test_neumann_matches_series_and_converges(spd_system):
    A, b = spd_system
    lr = 1.0 / np.linalg.eigvalsh(A).max()
    x, info = solvers.neumann(lambda v: A @ v, b, steps=5, lr=lr)
    series, term = np.zeros(80), b.copy()
    for _ in range(5):
        series += term
        term = term - lr * A @ term
    np.testing.assert_allclose(x, lr * series, rtol=1e-12, atol=1e-14)
    assert int(info.iterations) == 5 and not bool(info.converged)
    x, info = solvers.neumann(lambda v: A @ v, b, steps=2000, lr=lr, tol=1e-6)
    assert bool(info.converged)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-5, atol=1e-6)


def test_preconditioned_neumann_beats_plain_neumann():
    n, mu = 200, 1e-2
    K = rbf_matrix(n, lengthscale=0.5, seed=4)
    A = K + mu * np.eye(n)
    b = np.random.default_rng(5).standard_normal(n)
    U, lam = randomized_nystrom(lambda v: K @ v, n, 60, jax.random.PRNGKey(2))
    P = solvers.nystrom_preconditioner(U, lam, mu)
    lr_plain = 1.0 / np.linalg.eigvalsh(A).max()
    lr_pre = 1.0 / np.abs(np.linalg.eigvals(np.asarray(P(np.eye(n))) @ A)).max()
    _, plain = solvers.neumann(lambda v: A @ v, b, steps=50, lr=lr_plain)
    _, pre = solvers.preconditioned_neumann(lambda v: A @ v, b, P, steps=50, lr=lr_pre)
    assert float(pre.residual_norm) < 0.1 * float(plain.residual_norm), (pre, plain)


def test_bad_inputs_raise(spd_system):
    A, b = spd_system
    mv = lambda v: A @ v
    with pytest.raises(ValueError, match="`b` must be a 1-D"):
        solvers.cg(mv, np.ones((80, 2)))
    with pytest.raises(ValueError, match="`tol`"):
        solvers.cg(mv, b, tol=2.0)
    with pytest.raises(ValueError, match="`maxiter`"):
        solvers.cg(mv, b, maxiter=0)
    with pytest.raises(ValueError, match="`x0`"):
        solvers.cg(mv, b, x0=np.ones(3))
    with pytest.raises(ValueError, match="`steps`"):
        solvers.neumann(mv, b, steps=0, lr=0.1)
    with pytest.raises(ValueError, match="`lr`"):
        solvers.neumann(mv, b, steps=3, lr=-1.0)
    with pytest.raises(ValueError, match="`mu`"):
        solvers.nystrom_preconditioner(np.eye(4)[:, :2], np.ones(2), 0.0)
    with pytest.raises(ValueError, match="`lam` must have shape"):
        solvers.nystrom_preconditioner(np.eye(4)[:, :2], np.ones(3), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        solvers.nystrom_preconditioner(np.eye(4)[:, :2], -np.ones(2), 1.0)
