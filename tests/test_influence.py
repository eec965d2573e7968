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
