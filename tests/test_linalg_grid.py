"""FFT machinery on grids against brute-force sums over voxel pairs and dense matrices."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aniso_gp import kernels
from aniso_gp.linalg import grid

SHAPE = (5, 6, 4)  # odd and even sizes, not a cube
SPACING = (1.0, 0.8, 1.3)
A_ROT = (0.7, -0.4, 0.5)


def _transform(lengthscales=(3.0, 1.5, 0.9), axis_angle=A_ROT):
    return np.asarray(kernels.transform_matrix(
        {"lengthscales": jnp.asarray(lengthscales), "axis_angle": jnp.asarray(axis_angle)}))


def _voxels(shape, spacing):
    idx = np.indices(shape).reshape(3, -1).T
    return idx, idx * np.asarray(spacing)


def _dense_kernel(shape, spacing, A, base="rbf", variance=1.3):
    _, X = _voxels(shape, spacing)
    Z = X @ A
    return np.asarray(kernels.gram_transformed(jnp.asarray(Z), jnp.asarray(Z), variance, base))


def _k_lags(shape, spacing, A, base="rbf", variance=1.3):
    return kernels.on_lags(grid.lag_axes(shape, spacing), jnp.asarray(A), variance, base)


def _mask_and_taper(shape, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=shape) > 0.3
    taper = rng.uniform(0.2, 1.0, size=shape)
    return mask, taper


def _brute_expected_periodogram(shape, K, g):
    """E|J(w)|^2 = sum_{s,t} g_s g_t K_st e^{-i w.(s - t)} on the real half spectrum."""
    idx, _ = _voxels(shape, (1, 1, 1))
    n = np.asarray(shape)
    freqs = np.indices((shape[0], shape[1], shape[2] // 2 + 1)).reshape(3, -1).T
    F = np.exp(-2j * np.pi * (freqs / n) @ idx.T) * g.ravel()[None, :]  # (W, N)
    E = np.einsum("wi,ij,wj->w", F, K, F.conj()).real
    return E.reshape(shape[0], shape[1], shape[2] // 2 + 1)


@pytest.mark.parametrize("base", ["rbf", "matern32"])
@pytest.mark.parametrize("case", ["complete", "masked", "masked+tapered", "hann"])
@pytest.mark.parametrize("shape", [SHAPE, (4, 5, 7)])  # even and odd last axis
def test_expected_periodogram_matches_double_sum_over_voxel_pairs(base, case, shape):
    A = _transform()
    mask, taper = _mask_and_taper(shape)
    if case == "complete":
        g = grid.taper_weights(np.ones(shape, bool))
    elif case == "masked":
        g = grid.taper_weights(mask)
    elif case == "hann":
        g = grid.taper_weights(np.ones(shape, bool), "hann")
    else:
        g = grid.taper_weights(mask, taper)
    assert abs(np.sum(g**2) - 1.0) < 1e-14
    K = _dense_kernel(shape, SPACING, A, base)
    ref = _brute_expected_periodogram(shape, K, g)
    k_half = kernels.on_lags(grid.lag_axes(shape, SPACING, half=True), jnp.asarray(A), 1.3, base)
    c_half = grid.half_lag_weights(grid.autocorrelation(g))
    got = grid.expected_periodogram(k_half, c_half)
    assert got.shape == ref.shape
    assert np.max(np.abs(np.asarray(got) - ref)) < 1e-10 * np.max(ref)
    # The likelihood's fused path: the kernel times c_g folded in one step.
    fused = 1.3 * grid.transform_folded(kernels.folded_on_lags(
        grid.lag_axes(shape, SPACING, half=True), jnp.asarray(A), c_half, base))
    assert np.max(np.abs(np.asarray(fused) - ref)) < 1e-10 * np.max(ref)


def test_autocorrelation_matches_direct_sum():
    mask, taper = _mask_and_taper(SHAPE, seed=1)
    g = grid.taper_weights(mask, taper)
    c = np.asarray(grid.autocorrelation(g))
    lags = [np.fft.fftfreq(2 * n, 1.0 / (2 * n)).astype(int) for n in SHAPE]
    rng = np.random.default_rng(2)
    for _ in range(40):
        j = [rng.integers(0, 2 * n) for n in SHAPE]
        tau = [lags[d][j[d]] for d in range(3)]
        ref = 0.0
        for s in np.ndindex(*SHAPE):
            t = tuple(s[d] + tau[d] for d in range(3))
            if all(0 <= t[d] < SHAPE[d] for d in range(3)):
                ref += g[s] * g[t]
        assert abs(c[tuple(j)] - ref) < 1e-14


def test_periodogram_is_the_squared_tapered_dft():
    mask, taper = _mask_and_taper(SHAPE, seed=3)
    g = grid.taper_weights(mask, taper)
    x = np.random.default_rng(4).standard_normal(SHAPE)
    x[~mask] = np.nan  # masked voxels are never read
    mean = 0.4
    full = np.abs(np.fft.fftn(np.where(mask, g * (x - mean), 0.0))) ** 2
    got = np.asarray(grid.periodogram(x, g, mean))
    assert np.max(np.abs(got - full[..., : SHAPE[2] // 2 + 1])) < 1e-13
    # The half-spectrum weights recover sums over the whole Fourier grid.
    w = grid.half_spectrum_weights(SHAPE)
    assert w.sum() == math.prod(SHAPE)
    assert abs(np.sum(w * got) - full.sum()) < 1e-12 * full.sum()
    odd = (5, 6, 7)
    assert grid.half_spectrum_weights(odd).sum() == math.prod(odd)


@pytest.mark.parametrize("base", ["rbf", "matern12", "matern52"])
def test_toeplitz_matvec_matches_dense_for_a_rotated_kernel(base):
    A = _transform()
    K = _dense_kernel(SHAPE, SPACING, A, base)
    spectrum = grid.toeplitz_spectrum(_k_lags(SHAPE, SPACING, A, base))
    V = np.random.default_rng(5).standard_normal((3, *SHAPE))
    got = np.asarray(grid.toeplitz_matvec(spectrum, V)).reshape(3, -1)
    ref = V.reshape(3, -1) @ K.T
    assert np.max(np.abs(got - ref)) < 1e-10 * np.max(np.abs(ref))


def test_even_in_each_lag_embedding_is_wrong_for_a_rotated_kernel():
    """The shortcut k(|t0|, |t1|, |t2|), right for axis-aligned kernels, is tens of percent
    off for a rotated one: the signed embedding is needed."""
    A = _transform((4.0, 2.0, 1.0), (0.0, 0.0, math.pi / 4))  # 45 deg about z
    K = _dense_kernel(SHAPE, SPACING, A)
    lags = [np.abs(t) for t in grid.lag_axes(SHAPE, SPACING)]
    wrong = grid.toeplitz_spectrum(kernels.on_lags(lags, jnp.asarray(A), 1.3, "rbf"))
    v = np.random.default_rng(6).standard_normal(SHAPE)
    ref = K @ v.ravel()
    err = np.abs(np.asarray(grid.toeplitz_matvec(wrong, v)).ravel() - ref)
    assert np.max(err) > 0.2 * np.max(np.abs(ref))
    # The same kernel, axis-aligned: the shortcut is then exact.
    A_ard = _transform((4.0, 2.0, 1.0), (0.0, 0.0, 0.0))
    ok = grid.toeplitz_spectrum(kernels.on_lags(lags, jnp.asarray(A_ard), 1.3, "rbf"))
    ref = _dense_kernel(SHAPE, SPACING, A_ard) @ v.ravel()
    assert np.max(np.abs(np.asarray(grid.toeplitz_matvec(ok, v)).ravel() - ref)) < 1e-10


def test_kernel_on_lags_equals_pairwise_kernel():
    A = _transform()
    lags = grid.lag_axes(SHAPE, SPACING)
    k = np.asarray(kernels.on_lags(lags, jnp.asarray(A), 0.7, "matern32"))
    rng = np.random.default_rng(7)
    for _ in range(20):
        j = [rng.integers(0, 2 * n) for n in SHAPE]
        tau = np.array([lags[d][j[d]] for d in range(3)])
        ref = kernels.gram_transformed(jnp.asarray(tau @ A)[None], jnp.zeros((1, 3)), 0.7,
                                       "matern32")
        assert abs(k[tuple(j)] - float(ref[0, 0])) < 1e-14


def test_circulant_draws_have_the_kernel_covariance():
    shape, spacing = (3, 4, 3), (1.0, 1.0, 1.0)
    A = _transform((1.2, 0.8, 0.5))
    torus = tuple(2 * n for n in shape)
    k_torus = kernels.on_lags([grid.torus_lags(m) for m in torus], jnp.asarray(A), 1.0, "rbf")
    lam = grid.circulant_eigenvalues(k_torus)
    assert float(jnp.min(lam)) > -1e-10  # short length-scales: the 2n torus is PSD
    f = np.asarray(grid.circulant_draws(lam, torus, shape, jax.random.PRNGKey(0), num=20000))
    emp = np.cov(f.reshape(len(f), -1).T)
    K = _dense_kernel(shape, spacing, A, variance=1.0)
    # Monte Carlo sd of a covariance entry is about sqrt((1 + rho^2) / S) <= 0.01.
    assert np.max(np.abs(emp - K)) < 0.05


def test_taper_weights_reject_bad_input():
    with pytest.raises(ValueError, match="taper"):
        grid.taper_weights(np.ones((3, 3, 3), bool), "hamming")
    with pytest.raises(ValueError, match="shape"):
        grid.taper_weights(np.ones((3, 3, 3), bool), np.ones((3, 3, 2)))
    with pytest.raises(ValueError, match="zero on every observed voxel"):
        grid.taper_weights(np.zeros((3, 3, 3), bool))
