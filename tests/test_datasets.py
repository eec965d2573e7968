"""Tests for the synthetic part of aniso_gp.datasets: design_points, synthetic_field,
Truth, Field (len / subset / split)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aniso_gp import datasets, kernels, so3

L = np.array([0.3, 0.9, 0.5])  # deliberately not sorted: the truth must sort it
A = np.array([0.3, -0.6, 2.9])


@pytest.fixture(scope="module")
def fld():
    return datasets.synthetic_field(50, L, A, base="matern32", variance=2.0, noise_sd=0.2, seed=4)


# --------------------------------------------------------------------------- #
# design points
# --------------------------------------------------------------------------- #
def test_uniform_design():
    X = datasets.design_points(200, "uniform", extent=2.5, seed=1)
    assert X.shape == (200, 3)
    assert X.min() >= 0.0 and X.max() <= 2.5
    assert X.max() > 2.0 and X.min() < 0.5  # fills the box, not [0, 1]
    np.testing.assert_array_equal(X, datasets.design_points(200, "uniform", 2.5, seed=1))
    assert not np.allclose(X, datasets.design_points(200, "uniform", 2.5, seed=2))


def test_grid_design_needs_a_cube():
    X = datasets.design_points(27, "grid", extent=3.0)
    assert X.shape == (27, 3)
    # cell centres of a 3 x 3 x 3 grid on [0, 3]^3
    for j in range(3):
        np.testing.assert_allclose(np.unique(X[:, j]), [0.5, 1.5, 2.5])
    assert len({tuple(x) for x in X}) == 27
    np.testing.assert_array_equal(X, datasets.design_points(27, "grid", 3.0, seed=9))
    X64 = datasets.design_points(64, "grid")
    np.testing.assert_allclose(np.unique(X64[:, 2]), [0.125, 0.375, 0.625, 0.875])
    for n in (26, 28, 10):
        with pytest.raises(ValueError, match=r"`design`='grid' needs `n` to be a perfect cube"):
            datasets.design_points(n, "grid")


@pytest.mark.parametrize("n", [27, 20, 9])
def test_jittered_grid_design_one_point_per_cell(n):
    k = int(np.ceil(n ** (1 / 3) - 1e-9))
    X = datasets.design_points(n, "jittered_grid", extent=2.0, seed=3)
    assert X.shape == (n, 3)
    assert X.min() >= 0.0 and X.max() <= 2.0
    cells = np.floor(X / (2.0 / k)).astype(int)
    assert len({tuple(c) for c in cells}) == n  # distinct cells
    assert cells.min() >= 0 and cells.max() <= k - 1
    # jittered: not the cell centres
    centres = (cells + 0.5) * (2.0 / k)
    assert np.abs(X - centres).max() > 0.05
    np.testing.assert_array_equal(X, datasets.design_points(n, "jittered_grid", 2.0, seed=3))


def test_design_errors():
    with pytest.raises(ValueError, match=r"`design` must be one of .*; got 'random'"):
        datasets.design_points(10, "random")
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 2; got 1"):
        datasets.design_points(1)
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 2; got 10\.5"):
        datasets.design_points(10.5)
    with pytest.raises(ValueError, match=r"`extent` must be finite and strictly positive"):
        datasets.design_points(10, extent=-1.0)


# --------------------------------------------------------------------------- #
# synthetic field
# --------------------------------------------------------------------------- #
def test_field_shapes_and_truth(fld):
    assert len(fld) == 50
    assert fld.X.shape == (50, 3) and fld.y.shape == (50,) and fld.f.shape == (50,)
    for arr in (fld.X, fld.y, fld.f):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float64
    t = fld.truth
    # canonical: sorted descending, the canonical axis-angle of the input labelling
    np.testing.assert_array_equal(t.lengthscales, [0.9, 0.5, 0.3])
    lc, ac = so3.canonicalize(L, A)
    np.testing.assert_allclose(t.lengthscales, np.asarray(lc), rtol=1e-15)
    np.testing.assert_allclose(t.axis_angle, np.asarray(ac), atol=1e-12)
    assert np.linalg.norm(t.axis_angle) <= 2 * np.pi / 3 + 1e-9
    # consistent: the metric of the canonical labelling is the generating metric
    M_in = (Rotation.from_rotvec(A).as_matrix() / L**2) @ Rotation.from_rotvec(A).as_matrix().T
    np.testing.assert_allclose(t.metric, M_in, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        t.metric, np.asarray(so3.metric(t.lengthscales, t.axis_angle)), rtol=1e-10, atol=1e-12
    )
    # axes: columns = principal directions of the sorted length-scales
    # (np.array: the truth's arrays are read-only views of JAX buffers, which
    # scipy's Rotation does not accept)
    R_c = Rotation.from_rotvec(np.array(t.axis_angle)).as_matrix()
    np.testing.assert_allclose(t.axes, R_c, atol=1e-12)
    for i in range(3):
        np.testing.assert_allclose(
            t.metric @ t.axes[:, i], t.axes[:, i] / t.lengthscales[i] ** 2, rtol=1e-9, atol=1e-12
        )
    assert (t.variance, t.noise_sd, t.base, t.mean) == (2.0, 0.2, "matern32", 0.0)
    d = t.as_dict()
    assert json.loads(json.dumps(d))["lengthscales"] == [0.9, 0.5, 0.3]
    assert set(d) >= {
        "lengthscales",
        "axis_angle",
        "metric",
        "axes",
        "variance",
        "noise_sd",
        "base",
    }


def test_field_is_reproducible_by_seed(fld):
    again = datasets.synthetic_field(50, L, A, base="matern32", variance=2.0, noise_sd=0.2, seed=4)
    for name in ("X", "y", "f"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fld, name))
    other = datasets.synthetic_field(50, L, A, base="matern32", variance=2.0, noise_sd=0.2, seed=5)
    for name in ("X", "y", "f"):
        assert np.abs(getattr(other, name) - getattr(fld, name)).max() > 0.1
    # on a grid the points are the same, the values are not
    g1 = datasets.synthetic_field(8, L, A, design="grid", seed=1)
    g2 = datasets.synthetic_field(8, L, A, design="grid", seed=2)
    np.testing.assert_array_equal(g1.X, g2.X)
    assert np.abs(g1.y - g2.y).max() > 0.1


def test_field_noise_and_noise_free():
    quiet = datasets.synthetic_field(30, L, A, noise_sd=0.0, seed=2)
    np.testing.assert_array_equal(quiet.y, quiet.f)
    assert quiet.truth.noise_sd == 0.0
    # the noise-free draw does not depend on noise_sd; the noise is y - f
    noisy = datasets.synthetic_field(30, L, A, noise_sd=0.5, seed=2)
    np.testing.assert_array_equal(noisy.f, quiet.f)
    eps = noisy.y - noisy.f
    assert 0.25 < eps.std() < 0.75
    loud = datasets.synthetic_field(30, L, A, noise_sd=1.0, seed=2)
    np.testing.assert_allclose(loud.y - loud.f, 2 * eps, rtol=1e-12)


def test_field_draw_has_the_kernel_covariance():
    """Monte Carlo over seeds on a fixed 3x3x3 grid: the draws whiten to N(0, I)
    under the true covariance, pairwise second moments match it, and the same
    statistic rejects a wrong rotation, variance or noise."""
    l, a, s2, sd, n, S = np.array([0.9, 0.5, 0.3]), np.array([0.3, -0.6, 0.9]), 2.0, 0.3, 27, 40
    Y = np.stack(
        [
            datasets.synthetic_field(n, l, a, variance=s2, noise_sd=sd, design="grid", seed=s).y
            for s in range(S)
        ]
    )
    X = datasets.design_points(n, "grid")

    def cov(l, a, s2=s2, sd=sd):
        p = {"lengthscales": l, "axis_angle": a, "variance": s2}
        return np.asarray(kernels.gram(X, X, p)) + sd**2 * np.eye(n)

    def whitened_second_moment(C):
        Z = np.linalg.solve(np.linalg.cholesky(C), Y.T)
        return float(np.mean(Z**2))

    C = cov(l, a)
    # E z^2 = 1, sd of the mean over n S = 1080 values is sqrt(2/1080) = 0.043
    tol = 0.12
    assert abs(whitened_second_moment(C) - 1.0) < tol
    for wrong in (cov(l, np.zeros(3)), cov(l, -a), cov(l, a, s2=1.3 * s2), cov(l, a, sd=2 * sd)):
        assert abs(whitened_second_moment(wrong) - 1.0) > tol
    # pairwise: mean over seeds of y_i y_j vs C_ij, z-scores from the Wishart variance
    emp = Y.T @ Y / S
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / S)
    assert np.max(np.abs(emp - C) / se) < 5.0
    # mean of y_i^2: exact sd for Gaussian draws is sqrt(2 sum_ij C_ij^2 / (n^2 S)).
    sd_mean_var = np.sqrt(2 * np.sum(C**2) / (n**2 * S))
    assert abs(np.mean(np.diag(emp)) - (s2 + sd**2)) < 5 * sd_mean_var


def test_field_validation_errors():
    with pytest.raises(ValueError, match=r"`lengthscales` must be strictly positive"):
        datasets.synthetic_field(10, [1.0, -1.0, 1.0], A)
    with pytest.raises(ValueError, match=r"`axis_angle` must have shape \(3,\)"):
        datasets.synthetic_field(10, L, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"`base` must be one of"):
        datasets.synthetic_field(10, L, A, base="cubic")
    with pytest.raises(ValueError, match=r"`variance` must be finite and strictly positive"):
        datasets.synthetic_field(10, L, A, variance=0.0)
    with pytest.raises(ValueError, match=r"`noise_sd` must be finite and non-negative"):
        datasets.synthetic_field(10, L, A, noise_sd=-0.1)
    with pytest.raises(ValueError, match=r"`design`='grid' needs `n` to be a perfect cube"):
        datasets.synthetic_field(10, L, A, design="grid")


# --------------------------------------------------------------------------- #
# Field.split / subset
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("frac, n_test", [(0.2, 10), (0.5, 25), (0.07, 4), (0.98, 49)])
def test_split_sizes_and_disjointness(fld, frac, n_test):
    train, test = fld.split(frac, seed=0)
    assert len(test) == n_test and len(train) == 50 - n_test
    rows = {tuple(x) for x in fld.X}
    tr, te = {tuple(x) for x in train.X}, {tuple(x) for x in test.X}
    assert tr.isdisjoint(te) and tr | te == rows
    # rows travel together (X with its y and f), the truth is shared
    idx = {tuple(x): i for i, x in enumerate(fld.X)}
    for part in (train, test):
        i = np.array([idx[tuple(x)] for x in part.X])
        assert np.all(np.diff(i) > 0)  # original order kept
        np.testing.assert_array_equal(part.y, fld.y[i])
        np.testing.assert_array_equal(part.f, fld.f[i])
        assert part.truth is fld.truth


def test_split_reproducible_and_errors(fld):
    a1, b1 = fld.split(0.3, seed=7)
    a2, b2 = fld.split(0.3, seed=7)
    np.testing.assert_array_equal(b1.X, b2.X)
    _, b3 = fld.split(0.3, seed=8)
    assert {tuple(x) for x in b3.X} != {tuple(x) for x in b1.X}
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match=r"`test_fraction` must be in \(0, 1\)"):
            fld.split(bad)
    with pytest.raises(ValueError, match=r"leaves an empty split of 50 points"):
        fld.split(0.001)
    with pytest.raises(ValueError, match=r"leaves an empty split of 50 points"):
        fld.split(0.999)


def test_subset_and_field_without_f():
    X = np.arange(12.0).reshape(4, 3)
    f = datasets.Field(X, np.arange(4.0))
    assert len(f) == 4 and f.truth is None and f.f is None
    s = f.subset([3, 1])
    np.testing.assert_array_equal(s.X, X[[3, 1]])
    np.testing.assert_array_equal(s.y, [3.0, 1.0])
    assert s.f is None
    tr, te = f.split(0.5, seed=0)
    assert len(tr) == len(te) == 2
