"""NumPyro model pieces: priors, the custom distributions, and the model log density."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import initialize_model, log_density
from scipy import stats

from aniso_gp import models, so3


def test_vech_round_trip():
    v = jnp.arange(6.0) + 1.0
    S = models.symmetric_from_vech(v)
    np.testing.assert_array_equal(S, S.T)
    np.testing.assert_array_equal(np.asarray(S), [[1, 4, 5], [4, 2, 6], [5, 6, 3]])
    np.testing.assert_array_equal(models.vech(S), v)


def test_log_metric_prior_is_an_orthogonal_ensemble():
    pri = models.Priors(lengthscale_median=0.4, log_lengthscale_sd=0.7)
    d = models.log_metric_prior(pri)
    mu = -2 * math.log(0.4)

    def logp(S):
        return float(d.log_prob(models.vech(S)))

    # Density depends on S only through |S - mu I|_F: invariant under S -> Q S Q^T,
    # so the axes are Haar distributed independently of the length-scales.
    rng = np.random.default_rng(0)
    S = models.symmetric_from_vech(jnp.asarray(rng.normal(size=6)) + jnp.array([mu] * 3 + [0] * 3))
    Q = so3.exp(jnp.asarray(rng.normal(size=3)))
    assert abs(logp(Q @ S @ Q.T) - logp(S)) < 1e-12
    expected = -np.sum((np.asarray(S) - mu * np.eye(3)) ** 2) / (4 * 0.7**2)
    assert abs((logp(S) - logp(mu * jnp.eye(3))) - expected) < 1e-12
    # E sum_i (log l_i - log l0)^2 = 3 s_l^2, as under the iid prior: here
    # log l = -eig(S) / 2, and sum eig^2 = |S|_F^2, so the check is exact in law.
    x = d.sample(jax.random.PRNGKey(1), (40000,))
    lam = np.linalg.eigvalsh(np.asarray(models.symmetric_from_vech(x)))
    dev = (-lam / 2 - math.log(0.4)) ** 2
    assert abs(dev.sum(-1).mean() / (3 * 0.7**2) - 1) < 0.03
    # The eigenvalues repel: a near-equal pair is rarer than under the iid prior.
    gaps = np.diff(np.sort(-lam / 2, axis=-1), axis=-1).min(-1)
    iid = np.diff(np.sort(rng.normal(0, 0.7, size=(40000, 3)), axis=-1), axis=-1).min(-1)
    assert np.mean(gaps < 0.05) < 0.5 * np.mean(iid < 0.05)


def test_identifiable_transform_is_the_square_root_of_expm():
    from scipy.linalg import expm

    spec = _spec(kernel="rotated", parameterization="identifiable")
    v = jnp.array([1.2, 0.4, 2.0, 0.3, -0.6, 0.1])
    kp = numpyro.handlers.substitute(models.sample_kernel_params, {"log_metric": v})(spec)
    A = np.asarray(models.transform_matrix(kp))
    S = np.asarray(models.symmetric_from_vech(v))
    np.testing.assert_allclose(A @ A.T, expm(S), rtol=1e-12)
    np.testing.assert_allclose(A, A.T, atol=1e-14)


def test_identifiable_density_is_smooth_where_length_scales_meet(small_data):
    """At l_1 = l_2 exactly the log density and its gradient are finite and the
    gradient matches central differences: no funnel, no coordinate singularity."""
    X, y = small_data
    spec = _spec(kernel="rotated", parameterization="identifiable")
    R = so3.exp(jnp.array([0.3, -0.2, 0.9]))
    S = (R * jnp.array([1.0, 1.0, 3.0])) @ R.T  # two equal eigenvalues

    def lp(v):
        params = {"mean": 0.1, "signal": 1.0, "noise": 0.3, "log_metric": v}
        return log_density(models.gp_model, (X, y), {"spec": spec}, params)[0]

    v = models.vech(S)
    g = np.asarray(jax.grad(lp)(v))
    assert np.all(np.isfinite(g))
    h = 1e-5
    fd = [(float(lp(v + h * e)) - float(lp(v - h * e))) / (2 * h) for e in jnp.eye(6)]
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_gaussian_process_mvn_matches_numpyro_mvn_and_its_gradient():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(12, 12))
    C = jnp.asarray(B @ B.T / 12 + 0.5 * np.eye(12))
    loc = jnp.asarray(rng.normal(size=12))
    y = jnp.asarray(rng.normal(size=12))
    ours = models.GaussianProcessMVN(loc, C)
    ref = dist.MultivariateNormal(loc, covariance_matrix=C)
    assert abs(float(ours.log_prob(y)) - float(ref.log_prob(y))) < 1e-10

    def f(Cm, lc):
        return models.GaussianProcessMVN(lc, Cm).log_prob(y)

    def g(Cm, lc):
        return dist.MultivariateNormal(lc, covariance_matrix=Cm).log_prob(y)

    ga = jax.grad(f, argnums=(0, 1))(C, loc)
    gb = jax.grad(g, argnums=(0, 1))(C, loc)
    # numpyro differentiates through a symmetric matrix; compare symmetrised parts.
    sym = lambda M: 0.5 * (M + M.T)
    np.testing.assert_allclose(sym(ga[0]), sym(gb[0]), atol=1e-10)
    np.testing.assert_allclose(ga[1], gb[1], atol=1e-10)



def test_low_rank_gaussian_matches_numpyro_and_its_gradient():
    rng = np.random.default_rng(1)
    U = jnp.asarray(rng.normal(size=(30, 5)))
    d = jnp.asarray(rng.uniform(0.2, 1.0, size=30))
    loc = jnp.asarray(rng.normal(size=30))
    y = jnp.asarray(rng.normal(size=30))

    def ours(U, d, lc):
        return models.LowRankGaussian(lc, U, d).log_prob(y)

    def ref(U, d, lc):
        return dist.LowRankMultivariateNormal(lc, U, d).log_prob(y)

    assert abs(float(ours(U, d, loc)) - float(ref(U, d, loc))) < 1e-10
    for a, b in zip(jax.grad(ours, (0, 1, 2))(U, d, loc), jax.grad(ref, (0, 1, 2))(U, d, loc),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_priors_standardised_defaults_and_overrides():
    p = models.Priors().standardised(x_scale=2.0, y_mean=10.0, y_sd=4.0, extent=8.0)
    assert p.lengthscale_median == pytest.approx(8.0 / 4 / 2.0)
    assert p.signal_scale == pytest.approx(1.0) and p.noise_scale == pytest.approx(0.5)
    assert p.mean_loc == pytest.approx(0.0) and p.mean_sd == pytest.approx(1.0)
    q = models.Priors.from_user({"lengthscale_median": 3.0, "noise_scale": 0.4, "mean_loc": 12.0})
    s = q.standardised(x_scale=2.0, y_mean=10.0, y_sd=4.0, extent=8.0)
    assert s.lengthscale_median == pytest.approx(1.5)
    assert s.noise_scale == pytest.approx(0.1)
    assert s.mean_loc == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown keys"):
        models.Priors.from_user({"lengthscale": 1.0})
    with pytest.raises(ValueError, match="positive"):
        models.Priors.from_user({"noise_scale": -1.0})


def _spec(**kw):
    pri = models.Priors().standardised(1.0, 0.0, 1.0, 2.0)
    return models.ModelSpec(priors=pri, **kw)


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(2)
    X = jnp.asarray(rng.uniform(-1, 1, size=(25, 3)))
    y = jnp.asarray(np.sin(2 * X[:, 0]) + 0.1 * rng.normal(size=25))
    return X, y


@pytest.mark.parametrize(
    "spec_kw",
    [
        {"kernel": "rotated", "parameterization": "axis-angle"},
        {"kernel": "rotated", "parameterization": "identifiable"},
        {"kernel": "ard"},
        {"kernel": "full"},
        {"kernel": "rotated", "likelihood": "fitc"},
        {"kernel": "ard", "likelihood": "dtc"},
    ],
)
def test_model_log_density_is_finite_and_metric_is_spd(small_data, spec_kw):
    X, y = small_data
    spec = _spec(**spec_kw)
    kw = {"spec": spec, "landmarks": X[::3] if spec.likelihood != "exact" else None}
    info = initialize_model(jax.random.PRNGKey(0), models.gp_model, model_args=(X, y),
                            model_kwargs=kw)
    u, g = jax.value_and_grad(info.potential_fn)(info.param_info.z)
    assert np.isfinite(float(u))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(g))
    A = info.postprocess_fn(info.param_info.z)["A"]
    assert np.all(np.linalg.eigvalsh(np.asarray(A @ A.T)) > 0)


def test_exact_observation_site_equals_dense_mvn(small_data):
    X, y = small_data
    spec = _spec(kernel="rotated")
    params = {"mean": 0.2, "signal": 0.9, "noise": 0.3,
              "log_l": jnp.log(jnp.array([0.7, 0.4, 0.2])),
              "axis_angle": jnp.array([0.3, -0.5, 1.0])}
    lp, tr = log_density(models.gp_model, (X, y), {"spec": spec}, params)
    A = so3.exp(params["axis_angle"]) / jnp.exp(params["log_l"])
    Z = np.asarray(X @ A)
    d2 = ((Z[:, None] - Z[None]) ** 2).sum(-1)
    C = 0.81 * np.exp(-0.5 * d2) + 0.09 * np.eye(len(y))
    ref = stats.multivariate_normal(np.full(len(y), 0.2), C).logpdf(np.asarray(y))
    assert abs(float(tr["y"]["fn"].log_prob(y)) - ref) < 1e-9


@pytest.mark.parametrize("likelihood", ["dtc", "fitc"])
def test_lowrank_observation_site_equals_dense_mvn(small_data, likelihood):
    # The site's log density is evaluated in row blocks from the kernel; the
    # reference is the dense DTC / FITC covariance built with NumPy.
    X, y = small_data
    spec = _spec(kernel="rotated", likelihood=likelihood)
    params = {"mean": 0.2, "signal": 0.9, "noise": 0.3,
              "log_l": jnp.log(jnp.array([0.7, 0.4, 0.2])),
              "axis_angle": jnp.array([0.3, -0.5, 1.0])}
    Xm = X[::4]
    _, tr = log_density(models.gp_model, (X, y), {"spec": spec, "landmarks": Xm}, params)
    A = np.asarray(so3.exp(params["axis_angle"]) / jnp.exp(params["log_l"]))
    Z, Zm = np.asarray(X) @ A, np.asarray(Xm) @ A

    def k(P, Q):
        return 0.81 * np.exp(-0.5 * ((P[:, None] - Q[None]) ** 2).sum(-1))

    Q = k(Z, Zm) @ np.linalg.solve(k(Zm, Zm), k(Zm, Z))
    d = 0.81 - np.diag(Q) if likelihood == "fitc" else 0.0
    C = Q + np.diag(d + 0.09 * np.ones(len(y)))
    ref = stats.multivariate_normal(np.full(len(y), 0.2), C, allow_singular=True).logpdf(
        np.asarray(y))
    assert abs(float(tr["y"]["fn"].log_prob(y)) - ref) < 1e-7


def test_symmetries_leave_the_axis_angle_model_density_unchanged(small_data):
    X, y = small_data
    spec = _spec(kernel="rotated")
    l = jnp.array([0.7, 0.4, 0.2])
    a = jnp.array([0.3, -0.5, 1.0])

    def loglik(l_, a_):
        params = {"mean": 0.1, "signal": 1.0, "noise": 0.2, "log_l": jnp.log(l_), "axis_angle": a_}
        _, tr = log_density(models.gp_model, (X, y), {"spec": spec}, params)
        return float(tr["y"]["fn"].log_prob(y))

    ref = loglik(l, a)
    for P in so3.symmetry_group()[::5]:
        l2 = jnp.abs(P @ l)
        a2 = so3.log(so3.exp(a) @ P.T)
        assert abs(loglik(l2, a2) - ref) < 1e-8
