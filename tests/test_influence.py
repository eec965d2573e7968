"""Case deletion by PSIS against refits without the observation (brute force)."""

import numpy as np
import pytest

import aniso_gp
from aniso_gp import influence, orientation
from aniso_gp.inference import Fit

SETTINGS = dict(num_chains=2, num_warmup=150, num_samples=200, seed=1, progress=False)


@pytest.fixture(scope="module")
def field_and_fit():
    f = aniso_gp.synthetic_field(40, (0.8, 0.35, 0.12), (0.45, 0.45, 0.45), noise_sd=0.05,
                                 seed=3)
    return f, aniso_gp.fit(f.X, f.y, **SETTINGS)


def test_case_deletion_table_and_its_weights(field_and_fit):
    f, fit = field_and_fit
    table = influence.case_deletion(fit)
    assert sorted(table.index) == list(range(40))
    change = table["short_axis_change_deg"].to_numpy()
    assert np.all(np.diff(change) <= 0) and np.all((change >= 0) & (change <= 90))
    assert np.all((table["trend_deg"] >= 0) & (table["trend_deg"] < 360))
    assert (table["unreliable"] == (table["pareto_k"] > influence.K_MAX)).all()
    np.testing.assert_allclose(table.sort_index()[["x", "y", "z"]], f.X)
    # Where the smoothing barely acts (k < 0.5) the PSIS weights match the raw
    # importance ratios 1 / p(y_i | y_-i, theta), computed here directly.
    ll = np.asarray(fit.idata.log_likelihood["y"]).reshape(-1, 40)  # (S, N)
    raw = np.exp(-ll - np.logaddexp.reduce(-ll, axis=0))
    l3 = fit.lengthscale_draws()[:, 2]
    good = table.sort_index()["pareto_k"].to_numpy() < 0.5
    assert good.sum() > 20
    raw_change = raw.T @ l3 - l3.mean()
    np.testing.assert_allclose(table.sort_index()["l3_change"].to_numpy()[good], raw_change[good],
                               atol=0.1 * l3.std())


def test_the_most_influential_observation_moves_the_refit_most(field_and_fit):
    f, fit = field_and_fit
    table = influence.case_deletion(fit)
    full = orientation.mean_axis(fit.axes_draws()[:, :, 2])
    moved = {}
    for i in (table.index[0], table.index[-1]):
        keep = np.arange(40) != i
        refit = aniso_gp.fit(f.X[keep], f.y[keep], **SETTINGS)
        axis = orientation.mean_axis(refit.axes_draws()[:, :, 2])
        moved[i] = float(orientation.axial_angles(axis[None], full)[0])
    top, least = table.index[0], table.index[-1]
    assert moved[top] > moved[least] + 1.0, moved
    assert table.loc[top, "short_axis_change_deg"] > 3 * table.loc[least, "short_axis_change_deg"]


def test_case_deletion_needs_a_point_fit():
    volume_fit = Fit.__new__(Fit)
    volume_fit.settings = {"grid": {}}
    for bad in (volume_fit, "run/", None):
        with pytest.raises(ValueError, match="`fit` must be a point Fit"):
            influence.case_deletion(bad)


# --------------------------------------------------------------------------- #
# Groups (drill holes, blocks): the multivariate leave-group-out density
# --------------------------------------------------------------------------- #
def test_singleton_groups_are_case_deletion(field_and_fit):
    """Groups of one observation: the closed-form group density is the stored pointwise
    LOO density (up to the user-unit constant), and the tables agree."""
    f, fit = field_and_fit
    S = fit.lengthscale_draws().shape[0]
    mine = influence.group_loo_log_density(fit, [np.array([i]) for i in range(40)],
                                           np.arange(S))
    stored = np.asarray(fit.idata.log_likelihood["y"]).reshape(-1, 40).T  # (N, S)
    np.testing.assert_allclose(mine - np.log(fit.std.y_sd), stored, rtol=0, atol=1e-8)
    groups = influence.group_deletion(fit, np.arange(40)).sort_index()
    cases = influence.case_deletion(fit).sort_index()
    for col in ("short_axis_change_deg", "l1_change", "l3_change", "pareto_k"):
        np.testing.assert_allclose(groups[col], cases[col], rtol=1e-6, atol=1e-9)


def test_group_density_matches_the_conditional_gaussian(field_and_fit):
    """One draw, one group of five: log N(y_G; conditional mean, conditional covariance)
    from the partitioned covariance by SciPy."""
    from scipy.stats import multivariate_normal

    from aniso_gp.models import dense_covariance

    f, fit = field_and_fit
    G = np.array([3, 7, 11, 20, 31])
    s = 17
    got = influence.group_loo_log_density(fit, [G, np.array([0, 1])], np.array([s]))[0, 0]
    d = fit.standardised_draws(fit.lengthscale_draws().shape[0])
    A, sig, eps, mu = (np.asarray(d[k][s]) for k in ("A_std", "signal", "noise", "mean"))
    Xs, ys = np.asarray(fit.std.x(fit.X)), np.asarray(fit.std.y(fit.y)) - mu
    K = np.asarray(dense_covariance(Xs @ A, sig, eps, fit.settings["base"]))
    R = np.setdiff1d(np.arange(40), G)
    gain = K[np.ix_(G, R)] @ np.linalg.inv(K[np.ix_(R, R)])
    mean = gain @ ys[R]
    cov = K[np.ix_(G, G)] - gain @ K[np.ix_(R, G)]
    np.testing.assert_allclose(got, multivariate_normal(mean, cov).logpdf(ys[G]), rtol=1e-9)


def test_group_deletion_table_and_errors(field_and_fit):
    f, fit = field_and_fit
    labels = np.repeat([f"hole{i}" for i in range(8)], 5)
    table = influence.group_deletion(fit, labels, num_draws=200)
    assert sorted(table.index) == sorted(set(labels)) and (table["n_obs"] == 5).all()
    assert np.all(np.diff(table["short_axis_change_deg"].to_numpy()) <= 0)
    np.testing.assert_allclose(table.loc["hole0", ["x", "y", "z"]].to_numpy(float),
                               f.X[:5].mean(axis=0))
    for bad, message in ((labels[:-1], "one label per observation"),
                         (np.zeros(40), "at least two groups"),
                         (np.r_[[None], labels[1:]], "missing labels")):
        with pytest.raises(ValueError, match=message):
            influence.group_deletion(fit, bad)
    with pytest.raises(ValueError, match="`num_draws`"):
        influence.group_deletion(fit, labels, num_draws=0)


# --------------------------------------------------------------------------- #
# First-order influence (weights on the leave-one-out factors)
# --------------------------------------------------------------------------- #
def test_first_order_linearises_case_deletion(field_and_fit):
    """-Cov(s, l_i) is the derivative of the PSIS estimate at no deletion: the two rank
    the observations alike and agree on the length-scale changes."""
    from scipy.stats import spearmanr

    f, fit = field_and_fit
    first = influence.first_order(fit).sort_index()
    cases = influence.case_deletion(fit).sort_index()
    assert spearmanr(first["short_axis_change_deg"],
                     cases["short_axis_change_deg"]).statistic > 0.8
    assert np.corrcoef(first["l3_change"], cases["l3_change"])[0, 1] > 0.95
    np.testing.assert_allclose(first[["x", "y", "z"]], f.X)


def test_iterative_alpha_and_hutchinson_diagonal_match_the_dense_inverse(field_and_fit):
    """The ASTRA-style solve gives alpha to its tolerance; Hutchinson's diagonal of
    K_y^{-1} lies within 4 of its standard errors sqrt(sum_{j!=i} Q_ij^2 / probes)."""
    import jax.numpy as jnp

    from aniso_gp import hypergrad
    from aniso_gp.models import dense_covariance

    f, fit = field_and_fit
    d = fit.standardised_draws(fit.lengthscale_draws().shape[0])
    idx = np.array([5, 150, 333])
    pick = [np.asarray(d[k])[idx] for k in ("A_std", "signal", "noise", "mean")]
    Xs, ys = fit.std.x(fit.X), fit.std.y(fit.y)
    probes = 400
    alpha, diag, info = influence._iterative_alpha_diag(
        Xs, ys, "rbf", pick, hypergrad.NystromRichardson(rank=20, tol=1e-11), probes, 0)
    assert info["residual"] < 1e-9 and info["matvecs"] > 0
    for k, (A, s, e, mu) in enumerate(zip(*pick, strict=True)):
        Q = np.linalg.inv(np.asarray(dense_covariance(Xs @ jnp.asarray(A), s, e, "rbf")))
        np.testing.assert_allclose(alpha[k], Q @ (np.asarray(ys) - mu), rtol=1e-6,
                                   atol=1e-8 * np.abs(Q).max())
        se = np.sqrt((np.sum(Q**2, axis=1) - np.diag(Q) ** 2) / probes)
        assert np.all(np.abs(diag[k] - np.diag(Q)) < 4 * se)


def test_first_order_errors(field_and_fit):
    from aniso_gp import hypergrad

    _, fit = field_and_fit
    with pytest.raises(ValueError, match="`num_draws`"):
        influence.first_order(fit, num_draws=0)
    with pytest.raises(ValueError, match="`probes`"):
        influence.first_order(fit, solver=hypergrad.CG(), probes=0)
    table = influence.first_order(fit, num_draws=5, solver=hypergrad.CG(), probes=8)
    assert table.attrs["solves"]["residual"] < 1e-8
