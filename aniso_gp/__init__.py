"""aniso_gp: Bayesian inference of rotated 3-D anisotropy with Gaussian processes.

Importing the package enables float64 in JAX (``jax_enable_x64``); every
numerical routine here assumes it.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
