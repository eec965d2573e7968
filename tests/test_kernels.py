"""Tests for aniso_gp.kernels: dense NumPy and scikit-learn oracles, GPJax integration."""

from __future__ import annotations

import gpjax as gpx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import AXIS_ANGLES, lengthscale_vectors, property_settings
from hypothesis import given
from jax.test_util import check_grads
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern

from aniso_gp import datasets, kernels, likelihoods, so3

BASES = ("rbf", "matern12", "matern32", "matern52")
SKLEARN = {
    "rbf": RBF(1.0),
    "matern12": Matern(1.0, nu=0.5),
    "matern32": Matern(1.0, nu=1.5),
    "matern52": Matern(1.0, nu=2.5),
}
GPJAX = {
    "rbf": gpx.kernels.RBF,
    "matern12": gpx.kernels.Matern12,
    "matern32": gpx.kernels.Matern32,
    "matern52": gpx.kernels.Matern52,
}

L = np.array([0.7, 0.25, 0.45])
A = np.array([0.4, -0.9, 1.3])
S2 = 1.7


@pytest.fixture(scope="module")
def pts():
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 1.0, size=(12, 3))
    Y = rng.uniform(-0.5, 1.5, size=(9, 3))
    Y[0] = X[3]  # one coincident pair (r = 0) in the cross-covariance
    return X, Y


def _phi_numpy(r, base):
    if base == "rbf":
        return np.exp(-0.5 * r**2)
    if base == "matern12":
        return np.exp(-r)
    if base == "matern32":
        return (1 + np.sqrt(3) * r) * np.exp(-np.sqrt(3) * r)
    return (1 + np.sqrt(5) * r + 5 * r**2 / 3) * np.exp(-np.sqrt(5) * r)


def _numpy_gram(X, Y, M, s2, base):
    """Pairwise loop with the quadratic form (x - y)^T M (x - y): no input transform."""
    K = np.empty((len(X), len(Y)))
    for i, x in enumerate(X):
        for j, y in enumerate(Y):
            d = x - y
            K[i, j] = s2 * _phi_numpy(np.sqrt(max(d @ M @ d, 0.0)), base)
    return K


def _R(a):
    return Rotation.from_rotvec(a).as_matrix()


def _make(kind, base, l=L, a=A, s2=S2):
    """(GPJax kernel, pure-function params, metric, transform matrix)."""
    R = _R(a) if kind != "ard" else np.eye(3)
    M = (R / l**2) @ R.T
    if kind == "rotated":
        k = kernels.RotatedAnisotropic(l, a, s2, base)
        p = {"lengthscales": l, "axis_angle": a, "variance": s2}
        T = R / l
    elif kind == "ard":
        k = kernels.ARD(l, s2, base)
        p = {"lengthscales": l, "variance": s2}
        T = np.diag(1 / l)
    else:
        C = np.linalg.cholesky(M)
        k = (
            kernels.FullSPD(cholesky=C, variance=s2, base=base)
            if kind == "spd_cholesky"
            else kernels.FullSPD(metric=M, variance=s2, base=base)
        )
        p = {"cholesky": C, "variance": s2}
        T = C
    return k, p, M, T


KINDS = ("rotated", "ard", "spd_cholesky", "spd_metric")


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", KINDS)
def test_gram_matches_numpy_and_sklearn(pts, kind, base):
    X, Y = pts
    k, p, M, T = _make(kind, base)
    ref = _numpy_gram(X, Y, M, S2, base)
    # scikit-learn's isotropic kernels with unit length-scale on the
    # pre-transformed inputs Z = X @ R @ diag(1/l) (or X @ L for FullSPD)
    sk = S2 * SKLEARN[base](X @ T, Y @ T)
    np.testing.assert_allclose(sk, ref, rtol=0, atol=1e-12)
    tol = dict(rtol=0, atol=1e-10)
    # pure function
    np.testing.assert_allclose(np.asarray(kernels.gram(X, Y, p, base)), sk, **tol)
    # GPJax object: cross-covariance, gram operator, pairwise call, diagonal
    np.testing.assert_allclose(np.asarray(k.cross_covariance(X, Y)), sk, **tol)
    Kxx = np.asarray(k.gram(X).as_matrix())
    np.testing.assert_allclose(Kxx, S2 * SKLEARN[base](X @ T), **tol)
    np.testing.assert_allclose(Kxx, Kxx.T, rtol=0, atol=1e-15)
    for i, j in [(0, 0), (2, 5), (3, 0), (11, 8)]:
        np.testing.assert_allclose(float(k(X[i], Y[j])), sk[i, j], **tol)
    np.testing.assert_allclose(np.asarray(k.diagonal(X).as_matrix()), np.diag(np.diag(Kxx)), **tol)
    np.testing.assert_allclose(np.diag(Kxx), S2, rtol=1e-15)
    # the metric of the object and of the params
    np.testing.assert_allclose(np.asarray(k.metric()), M, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(kernels.metric_of(p)), M, rtol=1e-12, atol=1e-12)


def test_pure_helpers(pts):
    X, Y = pts
    p = {"lengthscales": L, "axis_angle": A}
    T = _R(A) / L
    np.testing.assert_allclose(np.asarray(kernels.transform_matrix(p)), T, atol=1e-14)
    np.testing.assert_allclose(np.asarray(kernels.transform(X, p)), X @ T, atol=1e-14)
    np.testing.assert_allclose(
        np.asarray(kernels.transform_matrix({"lengthscales": L})), np.diag(1 / L), atol=0
    )
    # the Cholesky entry is read as lower triangular (upper part ignored)
    C = np.tril(np.arange(1.0, 10.0).reshape(3, 3)) + np.triu(np.ones((3, 3)), 1)
    np.testing.assert_array_equal(np.asarray(kernels.transform_matrix({"cholesky": C})), np.tril(C))
    np.testing.assert_array_equal(np.asarray(kernels.transform_matrix({"transform": C})), C)
    # one identity: every kernel name has exactly one class, which carries it
    classes = (kernels.RotatedAnisotropic, kernels.ARD, kernels.FullSPD)
    assert sorted(c.kind for c in classes) == sorted(kernels.KERNELS)
    np.testing.assert_allclose(
        np.asarray(kernels.squared_distances(X, Y)), cdist(X, Y, "sqeuclidean"), atol=1e-14
    )
    assert float(kernels.squared_distances(X[:1], X[:1])[0, 0]) == 0.0
    r = np.array([0.0, 0.3, 1.0, 2.5])
    for base in BASES:
        np.testing.assert_allclose(
            np.asarray(kernels.correlation(r**2, base)), _phi_numpy(r, base), rtol=1e-14
        )
    Z1, Z2 = X @ T, Y @ T
    np.testing.assert_allclose(
        np.asarray(kernels.gram_transformed(Z1, Z2, 2.0, "matern32")),
        2.0 * SKLEARN["matern32"](Z1, Z2),
        atol=1e-12,
    )
    # variance defaults to 1 in the pure gram
    np.testing.assert_allclose(
        np.asarray(kernels.gram(X, Y, p)), SKLEARN["rbf"](Z1, Z2), atol=1e-12
    )
    with pytest.raises(ValueError, match="`base` must be one of"):
        kernels.correlation(jnp.ones(3), "matern72")
    # params() round-trips into the pure function
    k = kernels.RotatedAnisotropic(L, A, S2, "matern52")
    np.testing.assert_allclose(
        np.asarray(kernels.gram(X, Y, k.params(), "matern52")),
        np.asarray(k.cross_covariance(X, Y)),
        atol=1e-14,
    )


@pytest.mark.parametrize("base", BASES)
def test_zero_rotation_equals_ard_and_gpjax(pts, base):
    X, Y = pts
    rot = kernels.RotatedAnisotropic(L, np.zeros(3), S2, base)
    ard = kernels.ARD(L, S2, base)
    ref = GPJAX[base](lengthscale=jnp.asarray(L), variance=S2)
    K_rot = np.asarray(rot.cross_covariance(X, Y))
    np.testing.assert_allclose(K_rot, np.asarray(ard.cross_covariance(X, Y)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(K_rot, np.asarray(ref.cross_covariance(X, Y)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(rot.gram(X).as_matrix()), np.asarray(ref.gram(X).as_matrix()), atol=1e-12
    )
    # ... and a non-zero rotation does not
    rot2 = kernels.RotatedAnisotropic(L, A, S2, base)
    assert np.abs(np.asarray(rot2.cross_covariance(X, Y)) - K_rot).max() > 1e-2


@pytest.mark.parametrize("base", BASES)
def test_fullspd_from_rotated_metric_equals_rotated(pts, base):
    X, Y = pts
    rot = kernels.RotatedAnisotropic(L, A, S2, base)
    M = np.asarray(so3.metric(L, A))
    for spd in (
        kernels.FullSPD(metric=M, variance=S2, base=base),
        kernels.FullSPD(cholesky=np.linalg.cholesky(M), variance=S2, base=base),
    ):
        np.testing.assert_allclose(
            np.asarray(spd.cross_covariance(X, Y)),
            np.asarray(rot.cross_covariance(X, Y)),
            rtol=0,
            atol=1e-12,
        )


@pytest.mark.parametrize("base", BASES)
def test_gram_derivatives_match_autodiff_of_differences_and_finite_differences(pts, base):
    # The hand-written JVP of gram_transformed against autodiff through the plain
    # difference formula (coincident points included), then against finite
    # differences to second order away from r = 0.
    X, Y = pts[0][:6], pts[1][:4]
    Z1 = jnp.asarray(X)
    Z2 = jnp.concatenate([Z1[:2], jnp.asarray(Y)])

    def plain(Z1, Z2, v):
        d = Z1[:, None, :] - Z2[None, :, :]
        return v * kernels.correlation(jnp.sum(d * d, axis=-1), base)

    ct = jnp.asarray(np.random.default_rng(3).standard_normal((6, 6)))
    ours = jax.vjp(lambda *a: kernels.gram_transformed(*a, base), Z1, Z2, 1.3)[1](ct)
    ref = jax.vjp(plain, Z1, Z2, 1.3)[1](ct)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    if base != "matern12":  # not differentiable at r = 0; its first order is checked above
        check_grads(lambda a, b, v: kernels.gram_transformed(a, b, v, base),
                    (Z1 + 0.01, Z2, 1.3), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("base", BASES)
def test_lengthscale_gradient_is_finite_at_zero_distance(pts, base):
    X = pts[0][:5]
    R = _R(A)

    def gram_of(l):
        return kernels.gram(X, X, {"lengthscales": l, "axis_angle": A}, base)

    # Jacobian of the whole gram matrix, diagonal (r = 0) included
    J = np.asarray(jax.jacrev(gram_of)(jnp.asarray(L)))
    assert J.shape == (5, 5, 3) and np.all(np.isfinite(J))
    np.testing.assert_array_equal(J[np.arange(5), np.arange(5)], 0.0)
    # against central differences of the NumPy reference
    h = 1e-6
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        Kp = _numpy_gram(X, X, (R / (L + e) ** 2) @ R.T, 1.0, base)
        Km = _numpy_gram(X, X, (R / (L - e) ** 2) @ R.T, 1.0, base)
        np.testing.assert_allclose(J[..., k], (Kp - Km) / (2 * h), rtol=1e-6, atol=1e-8)
    if base == "matern12":  # the least smooth base at r = 0, through the GPJax objects
        g_obj = jax.grad(
            lambda l: jnp.sum(kernels.RotatedAnisotropic(l, A, 1.0, base).gram(X).as_matrix())
        )(jnp.asarray(L))
        np.testing.assert_allclose(np.asarray(g_obj), J.sum((0, 1)), rtol=1e-12)
        g_pair = jax.grad(lambda l: kernels.ARD(l, 1.0, base)(X[0], X[0]))(jnp.asarray(L))
        np.testing.assert_array_equal(np.asarray(g_pair), 0.0)


# --------------------------------------------------------------------------- #
# the 24 symmetries leave the gram matrix unchanged
# --------------------------------------------------------------------------- #
_gram24 = jax.jit(
    jax.vmap(
        lambda l, a, X: jnp.stack(
            [kernels.gram(X, X, {"lengthscales": l, "axis_angle": a}, b) for b in BASES]
        ),
        in_axes=(0, 0, None),
    )
)
_X_SYM = np.random.default_rng(5).uniform(0, 1, size=(10, 3))


@given(lengthscale_vectors(0.1, 3.0), AXIS_ANGLES)
@property_settings(30)
def test_symmetries_leave_gram_unchanged(l, a):
    G = np.asarray(so3.symmetry_group())
    ls = np.abs(G @ l)
    avs = Rotation.from_matrix(_R(a) @ np.swapaxes(G, 1, 2)).as_rotvec()
    K24 = np.asarray(_gram24(ls, avs, _X_SYM))  # (24 labellings, 4 bases, 10, 10)
    np.testing.assert_allclose(K24, np.broadcast_to(K24[0], K24.shape), rtol=0, atol=1e-12)
    # the identity labelling is the original (l, a): NumPy reference
    M = (_R(a) / l**2) @ _R(a).T
    for i, base in enumerate(BASES):
        ref = _numpy_gram(_X_SYM, _X_SYM, M, 1.0, base)
        np.testing.assert_allclose(K24[0, i], ref, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- #
# constructor validation
# --------------------------------------------------------------------------- #
def test_constructor_errors():
    with pytest.raises(ValueError, match=r"`base` must be one of .*'matern72'"):
        kernels.RotatedAnisotropic(L, A, base="matern72")
    with pytest.raises(ValueError, match=r"`lengthscales` must be strictly positive"):
        kernels.ARD([1.0, -0.5, 1.0])
    with pytest.raises(ValueError, match=r"`lengthscales` must have shape \(3,\)"):
        kernels.RotatedAnisotropic([1.0, 1.0], A)
    with pytest.raises(ValueError, match=r"`axis_angle` contains NaN"):
        kernels.RotatedAnisotropic(L, [0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match=r"`variance` must be finite and strictly positive"):
        kernels.ARD(L, variance=0.0)
    with pytest.raises(ValueError, match="exactly one of `cholesky` or `metric`"):
        kernels.FullSPD()
    with pytest.raises(ValueError, match="exactly one of `cholesky` or `metric`"):
        kernels.FullSPD(cholesky=np.eye(3), metric=np.eye(3))
    with pytest.raises(ValueError, match="`metric` must be symmetric"):
        kernels.FullSPD(metric=np.eye(3) + np.triu(np.ones((3, 3)), 1))
    with pytest.raises(ValueError, match="`metric` must be positive definite"):
        kernels.FullSPD(metric=np.diag([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="`cholesky` must be lower triangular"):
        kernels.FullSPD(cholesky=np.eye(3) + np.triu(np.ones((3, 3)), 1))
    with pytest.raises(ValueError, match="`cholesky` must have a strictly positive diagonal"):
        kernels.FullSPD(cholesky=np.diag([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match=r"`metric` must have shape \(\.\.\., 3, 3\)"):
        kernels.FullSPD(metric=np.eye(2))


# --------------------------------------------------------------------------- #
# GPJax: conjugate MLL against exact_loglik and scikit-learn; type-II ML fit
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def field():
    return datasets.synthetic_field(
        60, [0.6, 0.3, 0.15], [0.4, -0.2, 0.9], variance=1.5, noise_sd=0.1, seed=3
    )


@pytest.mark.parametrize("base", ["rbf", "matern32"])
def test_conjugate_mll_matches_exact_loglik_and_sklearn(field, base):
    X, y = field.X, field.y
    c, noise_sd, s2 = 0.2, 0.3, 1.3
    k = kernels.RotatedAnisotropic([0.5, 0.3, 0.2], [0.1, 0.2, -0.3], s2, base)
    prior = gpx.gps.Prior(mean_function=gpx.mean_functions.Constant(c), kernel=k)
    post = prior * gpx.likelihoods.Gaussian(obs_stddev=noise_sd)
    D = gpx.Dataset(X=jnp.asarray(X), y=jnp.asarray(y)[:, None])
    mll = float(gpx.objectives.conjugate_mll(post, D))
    # GPJax adds its prior jitter to the diagonal together with the noise variance
    nugget = noise_sd**2 + prior.jitter
    C = np.asarray(kernels.gram(X, X, k.params(), base)) + nugget * np.eye(len(y))
    ours = float(likelihoods.exact_loglik(jnp.asarray(C), jnp.asarray(y - c)))
    T = np.asarray(k.transform_matrix())
    gpr = GaussianProcessRegressor(
        ConstantKernel(s2, "fixed") * SKLEARN[base], alpha=nugget, optimizer=None
    ).fit(X @ T, y - c)  # scikit-learn's GP has a zero mean: centre first
    np.testing.assert_allclose(mll, ours, rtol=0, atol=1e-8)
    np.testing.assert_allclose(mll, gpr.log_marginal_likelihood_value_, rtol=0, atol=1e-8)
    # sensitivity: a different constant mean changes the value
    off = float(likelihoods.exact_loglik(jnp.asarray(C), jnp.asarray(y)))
    assert abs(off - mll) > 1e-3


def test_gpjax_type2_ml_fit_improves_mll(field):
    D = gpx.Dataset(X=jnp.asarray(field.X), y=jnp.asarray(field.y)[:, None])
    k0 = kernels.RotatedAnisotropic([0.3, 0.3, 0.3], [0.1, 0.1, 0.1], 1.0)
    prior = gpx.gps.Prior(mean_function=gpx.mean_functions.Constant(), kernel=k0)
    post = prior * gpx.likelihoods.Gaussian(obs_stddev=0.5)
    mll0 = float(gpx.objectives.conjugate_mll(post, D))
    trained, history = gpx.fit(
        model=post,
        objective=lambda p, d: -gpx.objectives.conjugate_mll(p, d),
        train_data=D,
        optim=optax.adam(0.05),
        num_iters=100,
        verbose=False,
    )
    history = np.asarray(history)
    mll1 = float(gpx.objectives.conjugate_mll(trained, D))
    assert np.all(np.isfinite(history))
    np.testing.assert_allclose(history[0], -mll0, rtol=1e-10)
    assert mll1 > mll0 + 20.0, (mll0, mll1)
    assert history[-1] < history[0]
    kt = trained.prior.kernel
    assert isinstance(kt, kernels.RotatedAnisotropic)
    lt = np.asarray(gpx.parameters.val(kt.lengthscales))
    assert np.all(lt > 0) and np.all(np.isfinite(lt))
    # the fitted kernel still evaluates as its pure function says
    np.testing.assert_allclose(
        np.asarray(kt.cross_covariance(D.X[:5], D.X[5:9])),
        np.asarray(kernels.gram(D.X[:5], D.X[5:9], kt.params(), kt.base)),
        atol=1e-14,
    )
