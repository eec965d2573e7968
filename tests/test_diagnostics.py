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
