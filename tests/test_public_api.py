"""The package face: the everyday names from ``import aniso_gp``, loaded on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import aniso_gp


def test_every_public_name_resolves_to_its_module_object():
    import importlib

    for name in aniso_gp.__all__:
        module = importlib.import_module(f"aniso_gp.{aniso_gp._PUBLIC[name]}")
        assert getattr(aniso_gp, name) is getattr(module, name), name
        assert name in dir(aniso_gp)
    assert not any(isinstance(getattr(aniso_gp, n), type(sys)) for n in aniso_gp.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        aniso_gp.nope  # noqa: B018


def test_import_is_light_and_enables_float64():
    code = ("import sys, aniso_gp, jax; "
            "assert 'numpyro' not in sys.modules and 'arviz' not in sys.modules; "
            "assert jax.numpy.ones(1).dtype == 'float64'; "
            "from aniso_gp import kernels; import numpyro; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_arviz_imported_first_leaves_numpyro_whole():
    # ArviZ 1.x puts a lazy NumPyro in sys.modules; numpyro.factor (used by the models)
    # reads numpyro.distributions.distribution, which a badly timed load loses.
    # (datasets loads first: it reaches numpyro through one of its submodules)
    code = ("import arviz, aniso_gp; aniso_gp.synthetic_field; import numpyro; "
            "from numpyro.handlers import trace; "
            "tr = trace(lambda: numpyro.factor('f', 1.0)).get_trace(); "
            "print(float(tr['f']['fn'].log_factor))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "1.0", out.stderr[-2000:]


def test_predict_dispatches_on_the_kind_of_fit():
    from aniso_gp import inference

    with pytest.raises(ValueError, match="`fit` must be a Fit"):
        aniso_gp.predict("run/")
    point_fit = inference.Fit.__new__(inference.Fit)
    point_fit.settings = {}
    with pytest.raises(ValueError, match="`X_new` is required"):
        aniso_gp.predict(point_fit)
