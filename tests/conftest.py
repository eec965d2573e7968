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
