"""Fits saved by either ArviZ line load in the one in use (the same NetCDF groups).

``tests/data/saved_fits/arviz0`` was written by ArviZ 0.23 on Python 3.11 and
``arviz1`` by ArviZ 1.3 on Python 3.12 (``make_fixture.py`` beside them); this file
runs in the main suite and in the Python 3.11 step (``make test-py311``).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from aniso_gp import diagnostics
from aniso_gp.inference import Fit

FIXTURES = Path(__file__).resolve().parent / "data" / "saved_fits"


@pytest.mark.parametrize("line", ["arviz0", "arviz1"])
def test_a_saved_fit_of_either_arviz_line_loads(line):
    expected = json.loads((FIXTURES / line / "expected.json").read_text())
    fit = Fit.load(FIXTURES / line)
    table = fit.orientation()
    np.testing.assert_allclose(table["l_median"], expected["l_median"], rtol=1e-12)
    np.testing.assert_allclose(table[["dir_x", "dir_y", "dir_z"]].to_numpy(), expected["axes"],
                               rtol=1e-12, atol=1e-12)
    assert float(fit.lengthscale_draws().sum()) == pytest.approx(
        expected["lengthscale_draws_sum"], rel=1e-12)
    # what the current line computes from it
    assert np.isfinite(fit.summary()["r_hat"].dropna()).all()
    assert fit.diagnostics()["flags"]
    loo = fit.loo()
    assert np.isfinite(loo["elpd_loo"]) and loo["max_pareto_k"] < 2
    mean, sd = fit.predict(fit.X[:5], num_draws=10)
    assert np.all(np.isfinite(mean)) and np.all(sd > 0)


def test_the_two_lines_agree_on_one_fit():
    fits = {line: Fit.load(FIXTURES / line) for line in ("arviz0", "arviz1")}
    table = diagnostics.compare({k: f.idata for k, f in fits.items()})
    assert sorted(table["rank"]) == [0, 1] and (table["elpd_diff"] >= 0).all()
    assert table["elpd_diff"].min() == 0.0
