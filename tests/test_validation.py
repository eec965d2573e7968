"""Tests for the input checks (aniso_gp._validation) and the jittered Cholesky
(aniso_gp.linalg.dense): every error message, and the accepted input types."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from aniso_gp import _validation as check
from aniso_gp.linalg import dense

RNG = np.random.default_rng(0)
X5 = RNG.uniform(size=(5, 3))


# --------------------------------------------------------------------------- #
# coordinates
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "X",
    [
        X5,
        jnp.asarray(X5),
        pd.DataFrame(X5, columns=["x", "y", "z"]),
        X5.tolist(),
        X5.astype(np.float32),
        X5.astype(np.int64),
    ],
    ids=["numpy", "jax", "pandas", "list", "float32", "int"],
)
def test_coordinates_accepts_numpy_jax_pandas(X):
    out = check.coordinates(X)
    assert isinstance(out, jax.Array)
    assert out.dtype == jnp.float64 and out.shape == (5, 3)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(X, dtype=np.float64))


def test_coordinates_single_point_becomes_one_row():
    out = check.coordinates(np.array([1.0, 2.0, 3.0]))
    assert out.shape == (1, 3)


@pytest.mark.parametrize(
    "X, msg",
    [
        (np.ones((2, 2, 3)), r"`X` must have shape \(N, 3\); got an array with shape \(2, 2, 3\)"),
        (np.ones(4), r"`X` must have shape \(N, 3\); got an array with shape \(4,\)"),
        (np.ones((5, 2)), r"`X` must hold 3-D coordinates, shape \(N, 3\); got 2 columns"),
        (np.ones((5, 4)), r"`X` must hold 3-D coordinates, shape \(N, 3\); got 4 columns"),
        (np.ones((0, 3)), r"`X` needs at least 1 points; got 0"),
        (np.where(np.eye(5, 3) > 0, np.nan, 1.0), r"`X` contains NaN values \(3 entries\)"),
        (np.where(np.eye(5, 3) > 0, np.inf, 1.0), r"`X` contains infinite values \(3 entries\)"),
        ([[1, 2, 3], [4, 5]], r"`X` must be numeric array-like; got list"),
        (np.array([["a", "b", "c"]]), r"`X` must be numeric array-like"),
    ],
    ids=["3d-array", "1d-wrong", "2-cols", "4-cols", "empty", "nan", "inf", "ragged", "strings"],
)
def test_coordinates_errors(X, msg):
    with pytest.raises(ValueError, match=msg):
        check.coordinates(X)


def test_coordinates_error_names_the_argument_and_min_points():
    with pytest.raises(ValueError, match=r"`landmarks` needs at least 4 points; got 3"):
        check.coordinates(np.ones((3, 3)), "landmarks", min_points=4)
    with pytest.raises(ValueError, match=r"`X_new` contains infinite"):
        check.coordinates(pd.DataFrame([[0.0, np.inf, 1.0]]), "X_new")
    # NaN and inf together report NaN, and count both
    with pytest.raises(ValueError, match=r"contains NaN values \(2 entries\)"):
        check.coordinates(np.array([[np.nan, np.inf, 0.0]]))


def test_pandas_dataframe_with_text_column_is_rejected():
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 2.0], "z": ["a", "b"]})
    with pytest.raises(ValueError, match=r"`X` must be numeric array-like; got DataFrame"):
        check.coordinates(df)


def test_traced_values_pass_through_under_jit():
    # inside jit the checks cannot look at values: they pass tracers through
    f = jax.jit(lambda X, l: check.coordinates(X).sum() + check.lengthscales(l).sum())
    assert float(f(jnp.ones((4, 3)), -jnp.ones(3))) == 9.0
    g = jax.jit(lambda y: check.values(y, n=7).sum() + check.vector3(y[:3], "a").sum())
    assert float(g(jnp.ones(5))) == 8.0


# --------------------------------------------------------------------------- #
# values
# --------------------------------------------------------------------------- #
def test_values_accepts_and_coerces():
    y = RNG.standard_normal(5)
    for v in (y, jnp.asarray(y), pd.Series(y), pd.DataFrame({"v": y}), y[:, None], list(y)):
        out = check.values(v, n=5)
        assert isinstance(out, jax.Array) and out.shape == (5,) and out.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(out), y)


@pytest.mark.parametrize(
    "y, n, msg",
    [
        (np.ones((5, 2)), None, r"`y` must have shape \(N,\); got an array with shape \(5, 2\)"),
        (np.ones(4), 5, r"`y` has 4 values but the coordinates have 5 points"),
        (np.array([1.0, np.nan, 2.0]), None, r"`y` contains NaN values \(1 entries\)"),
        (np.array([1.0, -np.inf]), None, r"`y` contains infinite values \(1 entries\)"),
        ("abc", None, r"`y` must be numeric array-like; got str"),
    ],
)
def test_values_errors(y, n, msg):
    with pytest.raises(ValueError, match=msg):
        check.values(y, n=n)


# --------------------------------------------------------------------------- #
# length-scales, vectors, matrices, scalars, base names
# --------------------------------------------------------------------------- #
def test_lengthscales():
    for l in (
        [1, 2, 3],
        np.array([0.1, 0.2, 0.3]),
        jnp.array([1.0, 1.0, 2.0]),
        pd.Series([1, 2, 3]),
    ):
        out = check.lengthscales(l)
        assert out.shape == (3,) and out.dtype == jnp.float64
    cases = [
        ([1.0, 0.0, 1.0], r"`lengthscales` must be strictly positive; got \[1\.0, 0\.0, 1\.0\]"),
        ([1.0, -2.0, 1.0], r"`lengthscales` must be strictly positive"),
        ([1.0, 2.0], r"`lengthscales` must have shape \(3,\); got \(2,\)"),
        (np.ones((1, 3)), r"`lengthscales` must have shape \(3,\); got \(1, 3\)"),
        ([1.0, np.nan, 1.0], r"`lengthscales` contains NaN values"),
        ([1.0, np.inf, 1.0], r"`lengthscales` contains infinite values"),
    ]
    for l, msg in cases:
        with pytest.raises(ValueError, match=msg):
            check.lengthscales(l)
    with pytest.raises(ValueError, match=r"`l_prior` must be strictly positive"):
        check.lengthscales([1.0, -1.0, 1.0], "l_prior")


def test_vector3_and_matrix3():
    np.testing.assert_array_equal(np.asarray(check.vector3([0, -1, 2], "a")), [0.0, -1.0, 2.0])
    with pytest.raises(ValueError, match=r"`axis_angle` must have shape \(3,\); got \(4,\)"):
        check.vector3(np.zeros(4), "axis_angle")
    with pytest.raises(ValueError, match=r"`axis_angle` contains NaN"):
        check.vector3([0.0, np.nan, 0.0], "axis_angle")
    assert check.matrix3(np.ones((2, 3, 3)), "M").shape == (2, 3, 3)
    with pytest.raises(ValueError, match=r"`M` must have shape \(\.\.\., 3, 3\); got \(3, 2\)"):
        check.matrix3(np.ones((3, 2)), "M")
    with pytest.raises(ValueError, match=r"`M` must have shape \(\.\.\., 3, 3\); got \(3,\)"):
        check.matrix3(np.ones(3), "M")
    with pytest.raises(ValueError, match=r"`M` contains infinite values \(1 entries\)"):
        check.matrix3(np.diag([1.0, np.inf, 1.0]), "M")


def test_positive_scalar():
    assert check.positive_scalar(2, "variance") == 2.0
    assert isinstance(check.positive_scalar(np.float32(0.5), "variance"), float)
    assert check.positive_scalar(jnp.asarray(3.0), "variance") == 3.0
    assert check.positive_scalar(0.0, "noise_sd", allow_zero=True) == 0.0
    cases = [
        (0.0, {}, r"`v` must be finite and strictly positive; got 0\.0"),
        (-1.0, {}, r"`v` must be finite and strictly positive; got -1\.0"),
        (-1.0, {"allow_zero": True}, r"`v` must be finite and non-negative; got -1\.0"),
        (np.nan, {}, r"`v` must be finite and strictly positive; got nan"),
        (np.inf, {"allow_zero": True}, r"`v` must be finite and non-negative; got inf"),
        ("abc", {}, r"`v` must be a number; got 'abc'"),
        (None, {}, r"`v` must be a number; got None"),
        (np.array([1.0, 2.0]), {}, r"`v` must be a number"),
    ]
    for v, kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            check.positive_scalar(v, "v", **kw)


def test_base_name():
    for b in check.BASES:
        assert check.base_name(b) == b
    assert check.BASES == ("rbf", "matern12", "matern32", "matern52")
    for bad in ("RBF", "matern", "gaussian", ""):
        with pytest.raises(
            ValueError,
            match=r"`base` must be one of \('rbf', 'matern12', 'matern32', 'matern52'\); got ",
        ):
            check.base_name(bad)


def test_integer_one_of_tolerance_and_traced_values():
    import math

    assert check.positive_int(np.int64(3), "n") == 3 and check.positive_int(4.0, "n") == 4
    for bad in (0, -1, 2.5, True, "3", None, math.nan, math.inf, np.array([2])):
        with pytest.raises(ValueError, match=r"`n` must be a positive integer; got "):
            check.positive_int(bad, "n")
    assert check.integer(0, "k", minimum=0) == 0
    with pytest.raises(ValueError, match=r"`k` must be a non-negative integer; got -1"):
        check.integer(-1, "k", minimum=0)
    with pytest.raises(ValueError, match=r"`m` must be an integer in \[1, 5\]; got 6"):
        check.integer(6, "m", maximum=5)
    with pytest.raises(ValueError, match=r"`bins` must be an integer >= 2; got 1"):
        check.integer(1, "bins", minimum=2)
    assert check.one_of("hann", ("hann", "tukey"), "taper") == "hann"
    for bad in ("Hann", np.ones(3), ["hann"], None):
        with pytest.raises(ValueError, match=r"`taper` must be one of \('hann', 'tukey'\)"):
            check.one_of(bad, ("hann", "tukey"), "taper")
    assert check.tolerance(1e-6) == 1e-6
    for bad in (0.0, 1.0, -1e-3, math.nan):
        with pytest.raises(ValueError, match="`tol`"):
            check.tolerance(bad)
    seen = []

    @jax.jit
    def f(x):
        seen.append((check.is_traced(x), check.is_traced({"a": 1.0}),
                     check.violated(lambda: x > 0)))
        return check.tolerance(x)

    f(0.5)
    assert seen == [(True, False, False)]
    assert check.violated(lambda: jnp.asarray(2.0) > 1.0)


# --------------------------------------------------------------------------- #
# jittered Cholesky (aniso_gp.linalg.dense)
# --------------------------------------------------------------------------- #
def _spd(n, seed=0):
    B = np.random.default_rng(seed).standard_normal((n, n))
    return B @ B.T + n * np.eye(n)


def test_cholesky_positive_definite_takes_no_jitter():
    K = _spd(6)
    L, jitter = dense.cholesky(jnp.asarray(K))
    assert float(jitter) == 0.0
    np.testing.assert_allclose(np.asarray(L), np.linalg.cholesky(K), rtol=1e-12)
    L2, j2 = dense.checked_cholesky(K)
    assert j2 == 0.0 and isinstance(j2, float)
    np.testing.assert_allclose(np.asarray(L2), np.linalg.cholesky(K), rtol=1e-12)


def test_cholesky_escalates_to_the_first_level_that_works():
    # eigenvalues 1..6 then shifted so the smallest is -3e-7 * mean(diag):
    # levels 0, 1e-8, 1e-7 fail, 1e-6 is the first to succeed.
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    lam = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    K0 = (Q * lam) @ Q.T
    scale = np.trace(K0) / 6  # mean diagonal = 2.5, unchanged by the tiny shift below
    K = K0 - 3e-7 * scale * np.eye(6)
    scale = np.mean(np.diag(K))
    L, jitter = dense.checked_cholesky(K, "test matrix")
    np.testing.assert_allclose(jitter, 1e-6 * scale, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(L) @ np.asarray(L).T, K + jitter * np.eye(6), atol=1e-12)
    np.testing.assert_array_equal(np.triu(np.asarray(L), 1), 0.0)
    # singular PSD (duplicate rows): smallest level 1e-8 suffices
    X = np.array([[0.0], [0.5], [0.0], [1.0]])
    Ks = np.exp(-0.5 * (X - X.T) ** 2)
    L, jitter = dense.checked_cholesky(Ks)
    assert 0.0 < jitter <= 1e-7
    np.testing.assert_allclose(np.asarray(L) @ np.asarray(L).T, Ks + jitter * np.eye(4), atol=1e-12)


def test_cholesky_custom_levels_and_nan_under_jit():
    K = -np.eye(3)
    L, jitter = jax.jit(dense.cholesky)(jnp.asarray(K))
    assert np.all(np.isnan(np.asarray(L)[np.tril_indices(3)]))
    # with a level big enough the same matrix factors
    K = np.diag([1.0, 1.0, -0.05])
    L, jitter = dense.cholesky(jnp.asarray(K), levels=(0.0, 0.01, 0.1))
    np.testing.assert_allclose(float(jitter), 0.1 * np.mean(np.diag(K)), rtol=1e-12)
    # vmapped over a batch: each matrix gets its own level
    Ks = jnp.stack([jnp.asarray(_spd(3)), jnp.ones((3, 3))])
    L, j = jax.vmap(dense.cholesky)(Ks)
    assert float(j[0]) == 0.0 and 0.0 < float(j[1]) <= 1e-7 * 1.0 + 1e-20
    assert np.all(np.isfinite(np.asarray(L)))


def test_checked_cholesky_errors():
    with pytest.raises(np.linalg.LinAlgError, match=r"the test matrix contains NaN or infinite"):
        dense.checked_cholesky(np.diag([1.0, np.nan, 1.0]), "test matrix")
    with pytest.raises(
        np.linalg.LinAlgError,
        match=r"Cholesky of the covariance matrix failed even with jitter 0\.0001 x mean diagonal"
        r" added: it is not positive definite",
    ):
        dense.checked_cholesky(np.diag([1.0, 1.0, -1.0]))
    # an indefinite matrix that a small jitter cannot rescue
    A = np.array([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        dense.checked_cholesky(A, "kernel matrix")


def test_cholesky_is_differentiable_in_reverse_mode():
    # reverse mode through the escalation loop must work (NumPyro's NUTS uses it)
    rng = np.random.default_rng(3)
    W = jnp.asarray(rng.standard_normal((6, 6)))
    grad_ours = jax.jit(jax.grad(lambda K: jnp.sum(dense.cholesky(K)[0] * W)))

    def ref(K, eps):  # differentiate chol(K + eps mean(diag K) I) with JAX's own rule
        return jnp.sum(jnp.linalg.cholesky(K + eps * jnp.mean(jnp.diag(K)) * jnp.eye(6)) * W)

    grad_ref = jax.jit(jax.grad(ref))
    K = jnp.asarray(_spd(6))
    np.testing.assert_allclose(
        np.asarray(grad_ours(K)), np.asarray(grad_ref(K, 0.0)), rtol=1e-10, atol=1e-14
    )
    # when jitter is needed the gradient is that of the jittered factor
    B = rng.standard_normal((6, 3))
    Ks = jnp.asarray(B @ B.T)  # rank 3: needs jitter
    _, jitter = dense.cholesky(Ks)
    eps = float(jitter) / float(jnp.mean(jnp.diag(Ks)))
    assert eps > 0
    g, gr = np.asarray(grad_ours(Ks)), np.asarray(grad_ref(Ks, eps))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, gr, rtol=1e-8, atol=1e-8 * np.abs(gr).max())
