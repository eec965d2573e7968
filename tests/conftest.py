import os

# Must precede the first jax import (docs/design.md section 2: single-threaded XLA CPU
# kernels are the stable choice on small machines).
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
)
os.environ.setdefault("MPLBACKEND", "Agg")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("ANISO_GP_SMOKE", "1")
# JAX's persistent compilation cache, shared by the session and its child processes
# (the CLI, the demo, notebook kernels, benchmark smoke runs): they compile many of the
# same programs, down to the small op-by-op ones of eager code. Kept between runs in
# .pytest_cache/ (git-ignored; `make clean` removes it); entries are keyed by the program,
# the XLA flags and the JAX version, so a stale entry is never used. Every compiled
# program is stored (by default only those that took over a second to compile).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                 ".pytest_cache", "jax-compilation-cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)

# At test sizes compiling a NUTS sampler dominates; unoptimised XLA code compiles ~40%
# faster and gives the same draws up to round-off. Child processes (the CLI, the demo,
# notebooks, benchmark smoke runs) get it through fast_compile_env().
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def fast_compile_env(**extra) -> dict:
    """``os.environ`` plus XLA's cheap-compile flags (and ``extra``), for a child process."""
    env = {**os.environ, **extra}
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    return env


# --------------------------------------------------------------------------- #
# Shared by the property tests (hypothesis)
# --------------------------------------------------------------------------- #
import numpy as np  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def property_settings(max_examples: int = 30, *extra_checks) -> settings:
    """Deterministic hypothesis settings (no database, no deadline): the same
    examples on every machine, so a failure reproduces."""
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, *extra_checks])


def lengthscale_vectors(lo: float, hi: float):
    """Three length-scales, log-uniform in [lo, hi]."""
    return st.tuples(*[st.floats(np.log(lo), np.log(hi))] * 3).map(lambda t: np.exp(np.array(t)))


#: Axis-angle vectors with components in [-4, 4] (past pi: the wrap is exercised too).
AXIS_ANGLES = st.tuples(*[st.floats(-4.0, 4.0)] * 3).map(np.array)
