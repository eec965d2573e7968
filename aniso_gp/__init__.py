"""aniso_gp: Bayesian inference of rotated 3-D anisotropy with Gaussian processes.

The everyday names live here::

    import aniso_gp
    vol = aniso_gp.polymer_fibres()
    f = aniso_gp.fit(vol)                   # NUTS; a Fit in the user's units
    f.orientation()                         # axes, length-scales, credible cones
    aniso_gp.compare([f, aniso_gp.fit(vol, kernel="ard")])

They load on first use (the inference stack takes seconds to import; the command
line and the Dask workers need only parts of it). The modules hold the rest:
``aniso_gp.kernels``, ``orientation``, ``hypergrad``, ``linalg``, ...

Importing the package enables float64 in JAX (``jax_enable_x64``), here and only
here: every numerical routine assumes it, and every module of the package is
imported through this file first. If JAX's CPU backend has not started yet, it
also asks for single-threaded XLA CPU kernels (unless ``XLA_FLAGS`` is set) and
``max(4, cores)`` CPU devices, so NUTS chains run in parallel, one per device
(docs/design.md section 2: XLA's multi-threaded CPU Cholesky is erratic on small
machines; one chain per core was stable).
"""

import importlib
import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
# JAX's CPU Cholesky calls LAPACK from SciPy's OpenBLAS, which starts one thread per
# core; with one NUTS chain per core those threads fight (15-100x slower measured on
# 2 cores). This takes effect only if NumPy/SciPy were not loaded yet: the Makefile
# and the test suite also export it.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402

# ArviZ 1.x, when imported before NumPyro, leaves a lazy placeholder for it in
# sys.modules. If the first thing to load NumPyro is then an import of one of its
# submodules, the package runs twice and the second numpyro.distributions lacks its
# `distribution` attribute, which numpyro.factor reads. Loading the placeholder now
# (any attribute access does it) avoids that; a real module is left as it is.
getattr(sys.modules.get("numpyro"), "__name__", None)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
try:
    jax.config.update("jax_num_cpu_devices", max(4, os.cpu_count() or 1))
except RuntimeError:  # the backend is already initialised: keep its devices
    pass

__version__ = "0.1.0"

# name -> the module that defines it. No name here may be a module's name: an
# imported submodule becomes an attribute of the package and would shadow it
# (hence no `orientation_map`, which stays in aniso_gp.orientation_map).
_PUBLIC = {
    **dict.fromkeys(("fit", "compare", "predict"), "inference"),
    **dict.fromkeys(("Fit", "Standardizer"), "fit_result"),
    **dict.fromkeys(("read_volume", "read_table", "subsample", "volume_to_points"), "io"),
    **dict.fromkeys(("open_volume", "LazyVolume"), "chunked"),
    **dict.fromkeys(("Volume", "Truth", "synthetic_field", "nano_brick", "patchwork",
                     "oilsands", "laminated_needle", "polymer_fibres"), "datasets"),
    **dict.fromkeys(("RotatedAnisotropic", "ARD", "FullSPD"), "kernels"),
    "write_report": "report",
    "Priors": "models",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"aniso_gp.{_PUBLIC[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'aniso_gp' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
