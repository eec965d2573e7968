"""Invariant summaries: ArviZ R-hat / ESS, and invariants the model holds fixed."""

import warnings

import numpy as np

from aniso_gp import diagnostics


def test_invariant_summary_skips_fixed_invariants_and_matches_arviz():
    import arviz as az

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 warning from a constant invariant
        s = diagnostics.invariant_summary({"l1": x, "M_xy": np.zeros((4, 300))})
    assert np.isclose(s.loc["l1", "r_hat"], float(az.rhat(x)))
    assert np.isclose(s.loc["l1", "ess_bulk"], float(az.ess(x, method="bulk")))
    assert np.isnan(s.loc["M_xy", "r_hat"]) and np.isnan(s.loc["M_xy", "ess_bulk"])
    assert s.loc["M_xy", "sd"] == 0.0
    assert s["ess_bulk"].min() == s.loc["l1", "ess_bulk"]


def test_psis_log_weights_are_the_smoothed_loo_ratios():
    # Mild ratios (k well below 0.5): the smoothed weights are the raw 1/p ratios.
    rng = np.random.default_rng(1)
    C, D, N = 2, 400, 6
    ll = -1.0 + 0.1 * rng.standard_normal((C, D, N))
    idata = diagnostics.inference_data(
        {"a": rng.standard_normal((C, D))}, {"diverging": np.zeros((C, D), bool)},
        {"y": ll}, {"y": np.zeros(N)}, {"X": np.zeros((N, 3))}, {"obs": np.arange(N)},
        {"y": ["obs"], "X": ["obs", "coord"]})
    log_w, k = diagnostics.psis_log_weights(idata)
    assert log_w.shape == (N, C * D) and k.shape == (N,) and np.all(k < 0.5)
    np.testing.assert_allclose(np.exp(log_w).sum(axis=1), 1.0, rtol=1e-12)
    raw = -ll.reshape(C * D, N).T
    raw = np.exp(raw - np.logaddexp.reduce(raw, axis=1, keepdims=True))
    np.testing.assert_allclose(np.exp(log_w), raw, rtol=0.05)
