"""End-to-end NUTS fits on tiny problems (fixed seeds, stated tolerances)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import potential_energy

from aniso_gp import datasets, inference, kernels, models, so3
from aniso_gp.likelihoods import exact_predict

TRUTH_L = (0.8, 0.35, 0.12)
TRUTH_A = tuple(math.pi / 4 * np.ones(3) / math.sqrt(3))


@pytest.fixture(scope="module")
def field():
    f = datasets.synthetic_field(110, TRUTH_L, TRUTH_A, noise_sd=0.05, seed=3)
    return f.split(0.2, seed=0)


@pytest.fixture(scope="module")
def rotated_fit(field):
    train, _ = field
    return inference.fit(
        train.X, train.y, kernel="rotated", parameterization="identifiable",
        num_chains=2, num_warmup=150, num_samples=150, seed=1, progress=False,
    )


def test_recovers_strongly_rotated_truth(rotated_fit, field):
    truth = field[0].truth
    table = rotated_fit.orientation()
    l_med = table["l_median"].to_numpy()
    # Length-scales within a factor 1.5 and the two well-resolved axes within 15 deg.
    assert np.all(np.abs(np.log(l_med / truth.lengthscales)) < math.log(1.5)), l_med
    mean_axes = table[["dir_x", "dir_y", "dir_z"]].to_numpy()
    err = np.asarray(so3.axial_angle(mean_axes, truth.axes.T))
    assert err[2] < 15.0 and err[1] < 20.0, err


def test_canonical_draws_concentrate_in_one_mode(rotated_fit):
    axes = rotated_fit.axes_draws()  # (S, 3, 3), columns = principal directions
    shortest = axes[:, :, 2]
    ref = shortest[0]
    ang = np.asarray(so3.axial_angle(shortest, ref))
    assert np.quantile(ang, 0.95) < 30.0
    a = rotated_fit.canonical_draws()[["a_x", "a_y", "a_z"]].to_numpy()
    assert np.all(np.linalg.norm(a, axis=1) <= math.pi + 1e-9)
    # One labelling: canonical axis-angles do not jump between symmetric copies.
    assert np.quantile(np.linalg.norm(a - np.median(a, axis=0), axis=1), 0.95) < 0.6


def test_loo_loglik_matches_brute_force_in_user_units(rotated_fit):
    X, y = rotated_fit.X, rotated_fit.y
    post = rotated_fit.idata.posterior
    c, d = 1, 17
    M = np.asarray(post["metric"][c, d])
    s = float(post["signal"][c, d])
    e = float(post["noise"][c, d])
    m = float(post["mean"][c, d])
    A = np.linalg.cholesky(M)
    C = np.asarray(kernels.gram_transformed(X @ A, X @ A, s**2)) + e**2 * np.eye(len(y))
    ll = np.asarray(rotated_fit.idata.log_likelihood["y"][c, d])
    for i in (0, 5, len(y) - 1):
        keep = np.arange(len(y)) != i
        Ckk = C[np.ix_(keep, keep)]
        mu = m + C[i, keep] @ np.linalg.solve(Ckk, y[keep] - m)
        var = C[i, i] - C[i, keep] @ np.linalg.solve(Ckk, C[keep, i])
        ref = -0.5 * math.log(2 * math.pi * var) - 0.5 * (y[i] - mu) ** 2 / var
        assert abs(ll[i] - ref) < 1e-8


def test_summary_and_diagnostics(rotated_fit):
    s = rotated_fit.summary()
    assert list(s.index[:3]) == ["l1", "l2", "l3"]
    assert {"mean", "sd", "q5", "q50", "q95", "r_hat", "ess_bulk", "ess_tail"} <= set(s.columns)
    assert np.all(s.loc[["l1", "l2"], "q50"].to_numpy() >= s.loc[["l2", "l3"], "q50"].to_numpy())
    d = rotated_fit.diagnostics()
    assert d["chains"] == 2 and d["draws"] == 300
    assert d["divergence_fraction"] < 0.05
    assert isinstance(d["flags"], list) and all(isinstance(f, str) for f in d["flags"])
    M = rotated_fit.metric_draws()
    assert M.shape == (300, 3, 3)
    np.testing.assert_allclose(M, np.swapaxes(M, 1, 2), atol=1e-12)
    df = rotated_fit.canonical_draws()
    assert isinstance(df, pd.DataFrame) and len(df) == 300
    assert np.all(df["l1"] >= df["l2"]) and np.all(df["l2"] >= df["l3"])


def test_predict_interpolates_training_values(rotated_fit):
    X, y = rotated_fit.X, rotated_fit.y
    mean, sd = rotated_fit.predict(X, num_draws=40)
    assert mean.shape == sd.shape == (len(y),)
    # Latent mean at training points: off the data by about the noise (0.05).
    assert np.sqrt(np.mean((mean - y) ** 2)) < 0.1
    _, sd_noisy = rotated_fit.predict(X, include_noise=True, num_draws=40)
    assert np.all(sd_noisy > sd)


def test_predict_matches_dense_formula_for_one_draw(rotated_fit, field):
    _, test = field
    post = rotated_fit.idata.posterior
    mu, var, nv = rotated_fit.predict_draws(test.X, num_draws=1)
    M = np.asarray(post["metric"][0, 0])
    s, e, m = (float(post[k][0, 0]) for k in ("signal", "noise", "mean"))
    A = np.linalg.cholesky(M)
    X = rotated_fit.X
    C = np.asarray(kernels.gram_transformed(X @ A, X @ A, s**2)) + e**2 * np.eye(len(X))
    Kx = np.asarray(kernels.gram_transformed(X @ A, test.X @ A, s**2))
    ref_mu, ref_var = exact_predict(jnp.asarray(C), jnp.asarray(rotated_fit.y - m), jnp.asarray(Kx),
                                    jnp.full(len(test.X), s**2))
    std = rotated_fit.std
    np.testing.assert_allclose(np.asarray(mu[0]) * std.y_sd + std.y_mean, np.asarray(ref_mu) + m,
                               rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(np.asarray(var[0]) * std.y_sd**2, np.asarray(ref_var), rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(float(nv[0]) * std.y_sd**2, e**2, rtol=1e-10)


def test_score_on_held_out(rotated_fit, field):
    _, test = field
    sc = rotated_fit.score(test.X, test.y, num_draws=50)
    assert sc["rmse"] < 0.6 * np.std(test.y)
    assert 0.5 <= sc["coverage90"] <= 1.0
    assert np.isfinite(sc["nlpd"])


def test_save_load_round_trip(rotated_fit, field, tmp_path):
    _, test = field
    path = rotated_fit.save(tmp_path / "fit")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        rotated_fit.save(path)
    loaded = inference.Fit.load(path)
    pd.testing.assert_frame_equal(loaded.summary(), rotated_fit.summary())
    np.testing.assert_allclose(loaded.predict(test.X, num_draws=20)[0],
                               rotated_fit.predict(test.X, num_draws=20)[0], rtol=1e-12)
    rotated_fit.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError):
        inference.Fit.load(tmp_path / "missing")


def test_baselines_and_compare(field, rotated_fit):
    train, test = field
    fits = {"rotated": rotated_fit}
    for kernel in ("ard", "full"):
        fits[kernel] = inference.fit(train.X, train.y, kernel=kernel, num_chains=2,
                                     num_warmup=100, num_samples=100, seed=2, progress=False)
    table = inference.compare(fits, test.X, test.y, truth=train.truth)
    assert set(table.index) == {"rotated", "ard", "full"}
    for col in ("elpd_loo", "elpd_se", "rmse", "nlpd", "coverage90", "relative_frobenius",
                "affine_invariant", "axis3_err_deg", "max_r_hat"):
        assert col in table.columns, col
        assert np.all(np.isfinite(table[col].to_numpy(dtype=float))), col
    # Rotated truth: ARD cannot align its axes with it.
    assert table.loc["ard", "axis3_err_deg"] > table.loc["rotated", "axis3_err_deg"]


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (np.zeros((5, 3)), np.zeros(5), "at least 10"),
        (np.random.default_rng(0).uniform(size=(20, 2)), np.zeros(20), "3-D coordinates"),
        (np.random.default_rng(0).uniform(size=(20, 3)), np.full(20, np.nan), "NaN"),
        (np.random.default_rng(0).uniform(size=(20, 3)), np.ones(20), "constant"),
        (np.random.default_rng(0).uniform(size=(20, 3)), np.ones(19), "19 values"),
    ],
)
def test_bad_input_errors(X, y, match):
    with pytest.raises(ValueError, match=match):
        inference.fit(X, y, num_chains=1, num_warmup=1, num_samples=1, progress=False)


def test_bad_option_errors():
    rng = np.random.default_rng(0)
    X, y = rng.uniform(size=(20, 3)), rng.normal(size=20)
    with pytest.raises(ValueError, match="`kernel`"):
        inference.fit(X, y, kernel="spd", progress=False)
    with pytest.raises(ValueError, match="`base`"):
        inference.fit(X, y, base="gauss", progress=False)
    with pytest.raises(ValueError, match="num_chains"):
        inference.fit(X, y, num_chains=0, progress=False)
    with pytest.raises(ValueError, match="priors"):
        inference.fit(X, y, priors={"lengthscale_mean": 1.0}, progress=False)
    with pytest.raises(ValueError, match="`parameterization` applies to the rotated kernel "
                                         "only; kernel='ard'"):
        inference.fit(X, y, kernel="ard", parameterization="identifiable", progress=False)
    with pytest.raises(ValueError, match="`parameterization` must be one of"):
        inference.fit(X, y, parameterization="quaternion", progress=False)
    with pytest.raises(ValueError, match=r"`num_samples` must be an integer in .*; got 2.5"):
        inference.fit(X, y, num_samples=2.5, progress=False)


def test_lowrank_fit_runs_and_predicts(field):
    train, test = field
    fit = inference.fit(train.X, train.y, kernel="ard", likelihood="fitc", num_landmarks=30,
                        num_chains=1, num_warmup=40, num_samples=40, seed=0, progress=False)
    assert len(fit.settings["landmarks"]) == 30
    mean, sd = fit.predict(test.X, num_draws=10)
    assert np.all(np.isfinite(mean)) and np.all(sd > 0)
    assert np.sqrt(np.mean((mean - test.y) ** 2)) < np.std(test.y)
    assert np.all(np.isfinite(np.asarray(fit.idata.log_likelihood["y"])))
    with pytest.raises(ValueError, match="num_landmarks"):
        inference.fit(train.X, train.y, likelihood="dtc", num_landmarks=10_000, progress=False)


def test_exact_likelihood_warns_on_large_n(monkeypatch):
    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(inference, "EXACT_WARN_N", 15)
    monkeypatch.setattr(inference, "MCMC", stop)
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="fitc"), pytest.raises(Stop):
        inference.fit(rng.uniform(size=(20, 3)), rng.normal(size=20), progress=False)


@pytest.fixture(scope="module")
def dtc_problem(field):
    """The standardised training data, DTC spec and model arguments of a rotated fit."""
    train, _ = field
    std = inference.Standardizer.from_data(train.X, train.y)
    spec = models.ModelSpec(kernel="rotated", parameterization="identifiable", likelihood="dtc")
    spec = dataclasses.replace(spec, priors=spec.priors.standardised(
        std.x_scale, std.y_mean, std.y_sd, std.extent))
    Xs, ys = std.x(train.X), std.y(train.y)
    return Xs, ys, spec, {"spec": spec, "landmarks": Xs[:25]}


def test_curvature_inverse_mass_is_the_inverse_hessian(dtc_problem):
    # Against the autodiff Hessian of the same potential (reverse over reverse: the
    # streamed DTC likelihood's pullbacks are reverse-differentiable), an
    # independent reference for the central differences of `_warmup_start`.
    Xs, ys, spec, kw = dtc_problem
    z = inference._pilot_start(Xs, ys, spec, kw["landmarks"], 0, num_chains=1)
    flat, unravel = ravel_pytree(z)
    # Jitted: run eagerly, the second derivative dispatches op by op (twice as slow).
    H = np.asarray(jax.jit(jax.jacrev(jax.grad(
        lambda v: potential_energy(models.gp_model, (Xs, ys), kw, unravel(v)))))(flat))
    lam = np.linalg.eigvalsh(H)
    assert lam.min() > 1e-2  # the pilot found a mode, so no eigenvalue is floored
    z_same, inv_mass = inference._warmup_start((Xs, ys), kw, z)
    np.testing.assert_array_equal(ravel_pytree(z_same)[0], flat)
    np.testing.assert_allclose(inv_mass, np.linalg.inv(H), rtol=1e-4,
                               atol=1e-6 * np.abs(np.linalg.inv(H)).max())


def test_newton_steps_reach_the_full_data_mode(dtc_problem):
    # A pilot on a 40-point subset, refined on all 96 points: the potential falls,
    # its gradient vanishes (the mode, checked with autodiff), and the mass matrix
    # is the inverse of the autodiff Hessian there.
    Xs, ys, spec, kw = dtc_problem
    z0 = inference._pilot_start(Xs, ys, spec, kw["landmarks"], 0, num_chains=1, max_points=40)
    z, inv_mass = inference._warmup_start((Xs, ys), kw, z0, newton_steps=12)
    flat0, unravel = ravel_pytree(z0)
    flat = ravel_pytree(z)[0]

    def u(v):
        return potential_energy(models.gp_model, (Xs, ys), kw, unravel(v))

    grad_u = jax.jit(jax.grad(u))  # jitted: eagerly, autodiff dispatches op by op
    g0, g = np.asarray(grad_u(flat0)), np.asarray(grad_u(flat))
    assert float(u(flat)) < float(u(flat0))
    assert np.linalg.norm(g) < 1e-4 * np.linalg.norm(g0)
    H = np.asarray(jax.jit(jax.jacrev(jax.grad(u)))(flat))
    np.testing.assert_allclose(inv_mass, np.linalg.inv(H), rtol=1e-4,
                               atol=1e-6 * np.abs(np.linalg.inv(H)).max())


def test_pilot_on_a_subset_above_max_points(field):
    # Above max_points the pilot runs the exact likelihood on a random subset; the
    # starts must still be finite and near the full-data pilot's.
    train, _ = field
    std = inference.Standardizer.from_data(train.X, train.y)
    spec = models.ModelSpec(kernel="rotated", parameterization="identifiable", likelihood="fitc")
    Xs, ys = std.x(train.X), std.y(train.y)
    full = inference._pilot_start(Xs, ys, spec, Xs[:30], 0, num_chains=1)
    sub = inference._pilot_start(Xs, ys, spec, Xs[:30], 0, num_chains=1, max_points=60)
    assert all(np.all(np.isfinite(v)) for v in sub.values())
    # log_metric diagonal = -2 log l along the axes: the subset sees the same field.
    np.testing.assert_allclose(sub["log_metric"][:3], full["log_metric"][:3], atol=1.0)
