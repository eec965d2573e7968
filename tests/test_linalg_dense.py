"""Blocked triangular inverse and C^-1 from a Cholesky factor, against NumPy/SciPy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from aniso_gp.linalg.dense import inverse_from_cholesky, triangular_inverse


def _spd(n, seed=0, cond=1e6):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.geomspace(1.0, 1.0 / cond, n)) @ Q.T


# Sizes around the block size (64 here) and odd splits exercise every recursion branch.
@pytest.mark.parametrize("n,block", [(1, 64), (7, 64), (64, 64), (65, 64), (129, 64),
                                     (200, 16), (301, 32)])
def test_triangular_inverse_matches_scipy(n, block):
    L = np.linalg.cholesky(_spd(n, seed=n))
    Li = np.asarray(triangular_inverse(jnp.asarray(L), block))
    ref = scipy.linalg.solve_triangular(L, np.eye(n), lower=True)
    assert np.array_equal(np.triu(Li, 1), np.zeros((n, n)))
    assert np.max(np.abs(Li - ref)) <= 1e-10 * np.max(np.abs(ref))


@pytest.mark.parametrize("n,block", [(5, 64), (65, 64), (200, 16), (301, 32)])
def test_inverse_from_cholesky_matches_dense_inverse(n, block):
    C = _spd(n, seed=n, cond=1e4)
    Ci = np.asarray(inverse_from_cholesky(jnp.asarray(np.linalg.cholesky(C)), block))
    ref = scipy.linalg.inv(C)
    assert np.max(np.abs(Ci - ref)) <= 1e-10 * np.max(np.abs(ref))
    assert np.max(np.abs(Ci - Ci.T)) <= 1e-14 * np.max(np.abs(ref))


def test_default_block_recurses_correctly():
    C = _spd(300, seed=3, cond=1e4)  # 300 > 2 x 128: two levels of recursion
    Ci = np.asarray(inverse_from_cholesky(jnp.asarray(np.linalg.cholesky(C))))
    ref = scipy.linalg.inv(C)
    assert np.max(np.abs(Ci - ref)) <= 1e-10 * np.max(np.abs(ref))


def test_batched_calls_loop_and_match_one_at_a_time():
    import jax

    Ls = jnp.asarray(np.stack([np.linalg.cholesky(_spd(150, seed=s, cond=1e3)) for s in range(3)]))
    for fn in (triangular_inverse, inverse_from_cholesky):
        batched = np.asarray(jax.jit(jax.vmap(lambda L, fn=fn: fn(L, 64)))(Ls))
        for b in range(3):
            ref = np.asarray(fn(Ls[b], 64))
            np.testing.assert_allclose(batched[b], ref, rtol=1e-12, atol=1e-12)


def test_triangular_inverse_derivatives_match_finite_differences():
    import jax
    from jax.test_util import check_grads

    L = jnp.asarray(np.linalg.cholesky(_spd(40, seed=4, cond=1e2)))
    # Forward and reverse, first and second order; block 16 exercises the recursion.
    check_grads(lambda L: triangular_inverse(L, 16), (L,), order=2, modes=["fwd", "rev"])
    # The upper triangle is never read, so it gets no gradient.
    g = jax.grad(lambda L: jnp.sum(jnp.sin(triangular_inverse(L, 16))))(L)
    assert np.array_equal(np.triu(np.asarray(g), 1), np.zeros((40, 40)))
