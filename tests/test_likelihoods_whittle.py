"""The debiased Whittle likelihood and its NumPyro site, against full-grid sums, dense
Gaussian draws and finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from aniso_gp import gridded, kernels, models
from aniso_gp.likelihoods import whittle_loglik
from aniso_gp.linalg import grid

SHAPE = (6, 5, 4)
SPACING = (1.0, 1.2, 0.9)


def _mask(shape=SHAPE, seed=0):
    m = np.random.default_rng(seed).uniform(size=shape) > 0.25
    m[0, 0, 0] = True
    return m


def _grid_data(mask, taper=None, spacing=SPACING):
    vals = np.where(mask, 0.0, np.nan)
    gv = gridded.GriddedVolume(vals, mask, spacing, taper=taper)
    data, _, g = gridded.fourier_data(gv, 1.0, 0.0, 1.0)
    return data, g


def _A(lengthscales=(2.5, 1.5, 0.8), axis_angle=(0.5, -0.3, 0.8)):
    return kernels.transform_matrix({"lengthscales": jnp.asarray(lengthscales),
                                     "axis_angle": jnp.asarray(axis_angle)})


def _dense_K(shape, spacing, A, variance, base):
    idx = np.indices(shape).reshape(3, -1).T * np.asarray(spacing)
    Z = jnp.asarray(idx) @ A
    return np.asarray(kernels.gram_transformed(Z, Z, variance, base))


@pytest.mark.parametrize("shape", [SHAPE, (5, 4, 7)])  # even and odd last axis
def test_loglik_is_the_full_grid_sum(shape):
    """The half-spectrum weighted sum equals -1/2 sum over all n0 n1 n2 frequencies."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    g = grid.taper_weights(_mask(shape), "hann")
    Ibar_full = rng.uniform(0.5, 2.0, shape)
    Ibar_full = 0.5 * (Ibar_full + np.roll(np.flip(Ibar_full), 1, axis=(0, 1, 2)))  # even
    I_full = np.abs(np.fft.fftn(np.where(g > 0, g * x, 0.0))) ** 2
    ref = -0.5 * np.sum(np.log(2 * np.pi * Ibar_full) + I_full / Ibar_full)
    m = shape[2] // 2 + 1
    got = whittle_loglik(jnp.asarray(Ibar_full[..., :m]), grid.periodogram(x, g),
                         jnp.asarray(grid.half_spectrum_weights(shape)))
    assert abs(float(got) - ref) < 1e-10 * abs(ref)


def test_site_expected_periodogram_is_the_mean_of_exact_draws():
    """Dense Cholesky draws with a mean, on a masked and tapered grid: the average
    |J - mean G|^2 matches the site's variances (E I = Ibar, the debiasing)."""
    mask = _mask()
    data, g = _grid_data(mask, "hann")
    A, s, e, mu = _A(), 0.9, 0.3, 1.7
    site = models.whittle_site(data, mu, s, e, A, "matern52")
    K = _dense_K(SHAPE, SPACING, A, s**2, "matern52") + e**2 * np.eye(math.prod(SHAPE))
    L = np.linalg.cholesky(K)
    rng = np.random.default_rng(2)
    S = 20000
    x = (mu + L @ rng.standard_normal((K.shape[0], S))).T.reshape(S, *SHAPE)
    J = np.asarray(grid.tapered_dft(x, g))
    G = np.asarray(data.G[0] + 1j * data.G[1])
    I = np.abs(J - mu * G) ** 2
    # z-scores of the Monte Carlo means against the site's variances. The taper
    # correlates neighbouring frequencies, so the ~100 z's are not independent.
    z = (I.mean(axis=0) - np.asarray(site.expected)) / (I.std(axis=0) / math.sqrt(S))
    assert np.median(np.abs(z)) < 1.2 and np.max(np.abs(z)) < 5.0, z


def test_site_sample_has_the_model_moments():
    mask = np.ones(SHAPE, bool)
    data, _ = _grid_data(mask)
    site = models.whittle_site(data, 0.4, 1.0, 0.2, _A(), "rbf")
    draws = np.asarray(site.sample(jax.random.PRNGKey(0), (4000,)))
    assert draws.shape == (4000, 2, *site.expected.shape)
    loc = np.asarray(site.loc)
    resid2 = np.sum((draws - loc) ** 2, axis=1).mean(axis=0)
    assert np.max(np.abs(resid2 / np.asarray(site.expected) - 1.0)) < 0.12
    # Conjugate symmetry of a real field's DFT on the k2 = 0 plane.
    z = draws[0, 0, :, :, 0] + 1j * draws[0, 1, :, :, 0]
    zc = np.conj(np.roll(np.flip(z, (0, 1)), 1, axis=(0, 1)))
    assert np.allclose(z, zc)


def test_whittle_site_log_prob_matches_explicit_formula():
    mask = _mask(seed=3)
    data, g = _grid_data(mask)
    rng = np.random.default_rng(4)
    x = np.where(mask, rng.standard_normal(SHAPE), 0.0)
    J = grid.tapered_dft(x, g)
    obs = jnp.stack([J.real, J.imag])
    A, s, e, mu = _A(), 1.1, 0.25, -0.3
    site = models.whittle_site(data, mu, s, e, A, "matern32")
    # Reference: expected periodogram from the full signed-lag array and c_g.
    k_full = kernels.on_lags(grid.lag_axes(SHAPE, SPACING), A, s**2, "matern32")
    c = np.asarray(grid.autocorrelation(g))
    folded = np.asarray(k_full) * c
    n = SHAPE
    folded = sum(folded[i * n[0]:(i + 1) * n[0], j * n[1]:(j + 1) * n[1], k * n[2]:(k + 1) * n[2]]
                 for i in range(2) for j in range(2) for k in range(2))
    Ibar = np.fft.fftn(folded).real + e**2
    I = np.abs(np.fft.fftn(np.where(mask, g * (x - mu), 0.0))) ** 2
    ref = -0.5 * np.sum(np.log(2 * np.pi * Ibar) + I / Ibar)
    assert abs(float(site.log_prob(obs)) - ref) < 1e-10 * abs(ref)
    assert abs(float(jnp.sum(site.pointwise(obs))) - ref) < 1e-10 * abs(ref)


@pytest.mark.parametrize("base", ["rbf", "matern12", "matern32", "matern52"])
@pytest.mark.parametrize("axis_angle", [(0.0, 0.0, 0.0), (0.6, -0.4, 1.1)])
def test_whittle_loglik_gradients(base, axis_angle):
    """Reverse-mode gradients (the hand-written pullback of the lag kernel and of the
    fold) against finite differences, at a = 0 and away from it."""
    mask = _mask(seed=5)
    data, g = _grid_data(mask, "hann")
    x = np.where(mask, np.random.default_rng(6).standard_normal(SHAPE), 0.0)
    J = grid.tapered_dft(x, g)
    obs = jnp.stack([J.real, J.imag])

    def f(log_l, a, log_s, log_e, mu):
        A = kernels.transform_matrix({"lengthscales": jnp.exp(log_l), "axis_angle": a})
        site = models.whittle_site(data, mu, jnp.exp(log_s), jnp.exp(log_e), A, base)
        return site.log_prob(obs)

    args = (jnp.log(jnp.array([2.0, 1.3, 0.9])), jnp.asarray(axis_angle, dtype=jnp.float64),
            jnp.asarray(0.1), jnp.asarray(-1.0), jnp.asarray(0.3))
    check_grads(f, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("base", ["rbf", "matern12", "matern52"])
def test_lag_kernel_pullback_matches_autodiff_of_broadcasts(base):
    lags = grid.lag_axes((5, 4, 6), (0.7, 1.0, 1.3), half=True)
    A = _A()

    def reference(A, v):
        M = A @ A.T
        t = np.meshgrid(*lags, indexing="ij")
        r2 = sum(M[i, j] * t[i] * t[j] for i in range(3) for j in range(3))
        return v * kernels.correlation(r2, base)

    w = jnp.asarray(np.random.default_rng(7).standard_normal((10, 8, 6)))
    got = jax.grad(lambda A, v: jnp.sum(w * kernels.on_lags(lags, A, v, base)),
                   argnums=(0, 1))(A, 1.3)
    ref = jax.grad(lambda A, v: jnp.sum(w * reference(A, v)), argnums=(0, 1))(A, 1.3)
    assert np.allclose(got[0], ref[0], rtol=1e-10, atol=1e-12)
    assert abs(float(got[1]) - float(ref[1])) < 1e-10 * abs(float(ref[1]))


@pytest.mark.parametrize("base", ["rbf", "matern12", "matern32", "matern52"])
def test_folded_lag_kernel_and_its_pullback_match_the_unfused_path(base):
    """``folded_on_lags`` (kernel x weights folded onto the grid, one fused pullback)
    against the same product written with :func:`grid.fold` and autodiff."""
    shape = (5, 4, 6)
    lags = grid.lag_axes(shape, (0.7, 1.0, 1.3), half=True)
    A = _A()
    rng = np.random.default_rng(8)
    weights = jnp.asarray(rng.standard_normal((10, 8, 6)))
    ct = jnp.asarray(rng.standard_normal(shape))

    def reference(A):
        M = A @ A.T
        t = np.meshgrid(*lags, indexing="ij")
        r2 = sum(M[i, j] * t[i] * t[j] for i in range(3) for j in range(3))
        return grid.fold(weights * kernels.correlation(r2, base), (-3, -2))

    def fused(A):
        return kernels.folded_on_lags(lags, A, weights, base)

    assert np.allclose(fused(A), reference(A), rtol=1e-12, atol=1e-14)
    got = jax.grad(lambda A: jnp.sum(ct * fused(A)))(A)
    ref = jax.grad(lambda A: jnp.sum(ct * reference(A)))(A)
    assert np.allclose(got, ref, rtol=1e-10, atol=1e-12)
    check_grads(fused, (A,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
