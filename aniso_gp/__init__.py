"""aniso_gp: Bayesian inference of rotated 3-D anisotropy with Gaussian processes.

Importing the package enables float64 in JAX (``jax_enable_x64``); every
numerical routine here assumes it. If JAX's CPU backend has not started yet, it
also asks for single-threaded XLA CPU kernels (unless ``XLA_FLAGS`` is set) and
``max(4, cores)`` CPU devices, so NUTS chains run in parallel, one per device
(docs/design.md section 2: XLA's multi-threaded CPU Cholesky is erratic on small
machines; one chain per core was stable).
"""

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

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
try:
    jax.config.update("jax_num_cpu_devices", max(4, os.cpu_count() or 1))
except RuntimeError:  # the backend is already initialised: keep its devices
    pass

__version__ = "0.1.0"
