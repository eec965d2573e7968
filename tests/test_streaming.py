"""Streaming Nyström updates against recomputation, dense algebra and SciPy's subspace angles.

Bad inputs are cases of tests/bad_input_cases.py (``streaming-*``)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import cho_factor, cho_solve, subspace_angles

from aniso_gp import kernels, likelihoods
from aniso_gp.hypergrad import NystromPCG, Operator, SpectralReuse
from aniso_gp.linalg import nystrom, solvers, streaming


def kernel_fn(A, B):
    return kernels.gram_transformed(A, B, 1.3, "matern52")


def campaign(seed=0, n=400):
    """Points arriving over a sweep (sorted along x), like holes drilled across a field."""
    X = np.random.default_rng(seed).uniform(0, 6, (n, 3))
    return X[np.argsort(X[:, 0] + 0.5 * X[:, 1])]


def pcg_iterations(state, noise=1e-2, seed=0):
    K = np.asarray(kernel_fn(state.points, state.points))
    b = jnp.asarray(np.random.default_rng(seed).normal(size=K.shape[0]))
    _, info = solvers.pcg(lambda v: K @ v + noise * v, b, state.preconditioner(noise),
                          tol=1e-8, maxiter=3000)
    assert bool(info.converged)
    return int(info.iterations)


def test_recompute_is_the_column_nystrom_factor():
    X = campaign(n=150)
    idx = np.arange(0, 150, 5)
    state = streaming.nystrom_eigen(kernel_fn, X, X[idx])
    F = np.asarray(nystrom.nystrom_factor(kernel_fn, X, idx))
    np.testing.assert_allclose(state.factor @ state.factor.T, F @ F.T, atol=1e-10)
    np.testing.assert_allclose(state.basis.T @ state.basis, np.eye(idx.size), atol=1e-12)
    assert state.trace == pytest.approx(np.sum(F * F), rel=1e-12)


def test_untruncated_updates_equal_recompute_over_50_additions():
    X = campaign()
    state = streaming.nystrom_eigen(kernel_fn, X[:100], X[:100:5])
    for i in range(50):
        batch = X[100 + 6 * i: 106 + 6 * i]
        state = streaming.update(state, kernel_fn, batch, num_landmarks=2 if i % 2 == 0 else 0)
        ref = streaming.nystrom_eigen(kernel_fn, state.points, state.landmarks)
        np.testing.assert_allclose(state.eigenvalues, ref.eigenvalues, rtol=1e-9,
                                   atol=1e-12 * ref.eigenvalues[0])
        assert state.drift == 0.0
    assert state.points.shape == (400, 3) and state.landmarks.shape[0] == 70
    approx, exact = state.factor @ state.factor.T, ref.factor @ ref.factor.T
    assert np.linalg.norm(approx - exact) < 1e-11 * np.linalg.norm(exact)
    assert np.max(subspace_angles(state.basis[:, :20], ref.basis[:, :20])) < 1e-8
    assert np.allclose(state.basis.T @ state.basis, np.eye(70), atol=1e-10)
    assert state.trace == pytest.approx(ref.trace, rel=1e-10)


def test_truncated_updates_track_recompute_and_precondition_as_well():
    """Rank 30 while the landmarks grow from 20 to 70: the leading eigenpairs and
    the PCG iterations stay close to a recompute at every step, and a refresh
    whenever the drift test fires keeps the basis within a few degrees."""
    X = campaign(seed=1)
    state = streaming.nystrom_eigen(kernel_fn, X[:100], X[:100:5], rank=30)
    angles, errors, iterations, refreshes = [], [], [], 0
    for i in range(50):
        batch = X[100 + 6 * i: 106 + 6 * i]
        state = streaming.update(state, kernel_fn, batch, num_landmarks=1)
        if streaming.needs_refresh(state, tol=0.01):
            state, refreshes = streaming.refresh(state), refreshes + 1
            assert state.drift == 0.0
        ref = streaming.nystrom_eigen(kernel_fn, state.points, state.landmarks, rank=30)
        angles.append(np.max(subspace_angles(state.basis[:, :10], ref.basis[:, :10])))
        errors.append(np.max(np.abs(state.eigenvalues[:10] / ref.eigenvalues[:10] - 1)))
        if i % 10 == 9:
            iterations.append((pcg_iterations(state), pcg_iterations(ref)))
    assert 1 <= refreshes < 25  # the criterion fires, but far from every step
    assert np.degrees(max(angles)) < 5.0
    assert max(errors) < 5e-3
    for ours, theirs in iterations:
        assert ours <= 1.1 * theirs + 2


def test_drift_counts_what_truncation_dropped():
    X = campaign(n=160)
    full = streaming.nystrom_eigen(kernel_fn, X[:100], X[:100:4])
    cut = streaming.nystrom_eigen(kernel_fn, X[:100], X[:100:4], rank=10)
    assert cut.drift == 0.0  # a recompute is the baseline
    cut = streaming.add_points(cut, kernel_fn, X[100:])
    full = streaming.add_points(full, kernel_fn, X[100:])
    cut = streaming.add_landmarks(cut, kernel_fn, X[101:160:6])
    full = streaming.add_landmarks(full, kernel_fn, X[101:160:6])
    assert cut.discarded > 0
    assert cut.trace == pytest.approx(full.trace, rel=1e-12)
    assert cut.drift == pytest.approx(cut.discarded / full.trace)
    # The excess trace error over a recompute lies in [0, discarded].
    best = streaming.nystrom_eigen(kernel_fn, full.points, full.landmarks, rank=10)
    excess = np.sum(best.eigenvalues) - np.sum(cut.eigenvalues)
    assert -1e-10 <= excess <= cut.discarded
    # Bookkeeping: what is not kept is the recompute's tail plus what was dropped since.
    tail0 = np.sum(streaming.nystrom_eigen(kernel_fn, X[:100], X[:100:4]).eigenvalues[10:])
    assert full.trace - np.sum(cut.eigenvalues) == pytest.approx(tail0 + cut.discarded, rel=1e-9)


def test_new_landmarks_are_greedy_pivots_of_the_dense_schur_complement():
    X = campaign(n=120)
    state = streaming.nystrom_eigen(kernel_fn, X[:80], X[:80:8])
    cand = X[80:]
    picks = streaming.select_new_landmarks(state, kernel_fn, cand, 6)
    # Dense reference: pivot by pivot, the candidate with the largest conditional variance.
    S = [*X[:80:8]]
    expected = []
    for _ in range(6):
        Kss = np.asarray(kernel_fn(np.array(S), np.array(S)))
        Ksc = np.asarray(kernel_fn(np.array(S), cand))
        var = np.diag(np.asarray(kernel_fn(cand, cand))) - np.sum(
            Ksc * cho_solve(cho_factor(Kss), Ksc), axis=0)
        var[expected] = -np.inf
        expected.append(int(np.argmax(var)))
        S.append(cand[expected[-1]])
    assert picks.tolist() == expected
    # Candidates that are landmarks already add nothing.
    assert streaming.select_new_landmarks(state, kernel_fn, X[:80:8][:3], 3).size == 0


def test_factor_serves_the_lowrank_likelihood():
    X = campaign(n=200)
    y = np.random.default_rng(3).normal(size=200)
    idx = np.arange(0, 150, 6)
    state = streaming.nystrom_eigen(kernel_fn, X[:150], X[idx])
    state = streaming.add_points(state, kernel_fn, X[150:])
    U = nystrom.nystrom_factor(kernel_fn, X, idx)
    expected = float(likelihoods.dtc_loglik(U, y, 0.05))
    for F in (state.cross, state.factor):  # the exact factor and the (untruncated) eigen-form
        assert float(likelihoods.dtc_loglik(jnp.asarray(F), y, 0.05)) == pytest.approx(
            expected, rel=1e-10)


def test_streamed_basis_seeds_spectral_reuse():
    """After new points, SpectralReuse from the streamed basis measures it with its
    probes instead of sketching, and PCG needs no more iterations than a fresh sketch."""
    X = campaign(n=300)
    state = streaming.nystrom_eigen(kernel_fn, X[:240], X[:240:6], rank=40)
    state = streaming.update(state, kernel_fn, X[240:], num_landmarks=8)
    K = jnp.asarray(kernel_fn(X, X))
    noise = 1e-2
    op = Operator(lambda v: K @ v + noise * v, 300, noise)
    b = jnp.asarray(np.random.default_rng(0).normal(size=300))
    reuse = SpectralReuse(rank=40, probes=8, tol=1e-8)
    u, info, carry = reuse.solve(reuse.seeded(state.basis, state.eigenvalues), op.matvec, b,
                                 shift=noise)
    fresh = NystromPCG(rank=40, sketch="gaussian", tol=1e-8)
    prepared = fresh.init(op)
    _, info_fresh = fresh.compute(prepared, b)
    exact = np.linalg.solve(np.asarray(K) + noise * np.eye(300), b)
    assert np.linalg.norm(u - exact) < 1e-5 * np.linalg.norm(exact)
    assert int(carry.refreshes) == 0
    assert int(info.iterations) <= int(info_fresh.iterations) + 2
    assert int(info.matvecs) < int(info_fresh.matvecs) + int(prepared.setup_matvecs)
