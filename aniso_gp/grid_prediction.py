r"""Prediction on the grid of a whole-volume fit: kriging by FFT, sd by conditional simulation.

For one posterior draw (standardised units: metric ``A A^T``, signal ``s``,
noise ``e``, mean ``mu``) and the observed voxels ``O``:

* the latent mean at every voxel is ``mu + K_{:,O} alpha`` with
  ``(K_OO + e^2 I) alpha = y_O - mu``, solved by preconditioned CG. ``K v`` is
  the exact circulant-embedding product (:func:`~aniso_gp.linalg.grid.toeplitz_matvec`);
  the preconditioner applies ``(C + e^2 I)^{-1}`` on the same ``2n`` torus (``C``
  the embedding circulant, its eigenvalues clipped at 0) to the zero-padded,
  zero-filled residual and restricts the result to the observed voxels. On a
  14 x 16 x 16 grid with an RBF kernel of 6 voxels and noise sd 0.1 it halved
  the iterations of plain CG (293 against 608 to 1e-6), where T. Chan's circulant
  on the ``n`` torus saved nothing: the kernel does not decay within the box.
  Iterations grow as the noise shrinks (roughly as ``1 / e``);
* the pointwise variance comes from conditional simulation (Hoffman &
  Ribak 1991): an unconditional draw ``f*`` on the grid (circulant embedding on a
  positive semi-definite torus) and noise ``eps*`` give ``y* = f*_O + eps*``;
  with ``(K_OO + e^2 I) beta = y*``, ``f* - K_{:,O} beta`` is a draw of the
  posterior residual, exactly, so its square is an unbiased estimate of the
  posterior variance.

Over draws the predictive is a mixture: mean ``E_s[m_s]``, variance
``E_s[r_s^2] + Var_s[m_s]``, accumulated draw by draw. Memory is O(N) (a few
(2n)^3 arrays, whatever the number of draws); no N x N matrix is formed.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from aniso_gp import _validation as check
from aniso_gp import gridded, kernels
from aniso_gp.linalg import grid as fft_grid
from aniso_gp.linalg.solvers import pcg


def _solver(shape, lags, mask, base, tol, maxiter):
    """Compiled ``(A, s, e, rhs) -> (K_{:,O} x, x, info)`` for ``x = (K_OO + e^2 I)^-1 rhs``."""
    m = jnp.asarray(mask, dtype=jnp.float64)

    @jax.jit
    def solve(A, s, e, rhs):
        k = kernels.on_lags(lags, A, s**2, base)
        spectrum = fft_grid.toeplitz_spectrum(k)
        # spectrum.real: the eigenvalues of the symmetrised embedding (for a rotated
        # kernel the lag -n planes break the torus symmetry); as a preconditioner only.
        shifted = jnp.maximum(spectrum.real, 0.0) + e**2

        def matvec(v):
            v = v.reshape(shape) * m
            return (m * fft_grid.toeplitz_matvec(spectrum, v) + e**2 * v).ravel()

        def precond(r):
            return (m * fft_grid.toeplitz_matvec(1.0 / shifted, r.reshape(shape) * m)).ravel()

        x, info = pcg(matvec, (rhs * m).ravel(), precond, tol=tol, maxiter=maxiter)
        x = x.reshape(shape)
        return fft_grid.toeplitz_matvec(spectrum, x), x, info

    return solve


def predict_draw(solve, shape, lag_spacing, base, A, s, e, mu, ys, key, num_simulations=1):
    """One posterior draw's latent mean (n0, n1, n2) and a Monte Carlo estimate of its
    latent variance from ``num_simulations`` conditional simulations, with the solver's
    largest residual and iteration count (standardised units; ``ys`` zero off the mask)."""
    Kx, _, info = solve(jnp.asarray(A), s, e, jnp.asarray(ys - mu))
    mean = mu + np.asarray(Kx)
    resid, iters = float(info.residual_norm), int(info.iterations)
    embedding = gridded.psd_torus(shape, lag_spacing, jnp.asarray(A), float(s) ** 2, base)
    if embedding[2] < -1e-6:
        warnings.warn(
            f"the conditional simulations behind the predictive sd are approximate: no "
            f"circulant embedding up to {embedding[0]} voxels is positive definite for this "
            f"draw (smallest eigenvalue {embedding[2]:.1e} of the largest), because a "
            "length-scale is long against the grid", UserWarning, stacklevel=3)
    var = np.zeros(shape)
    for _ in range(int(num_simulations)):
        key, k1, k2 = jax.random.split(key, 3)
        f_star = gridded.simulate(embedding, shape, 0.0, 0.0, k1, 1)[0]
        Kb, _, info = solve(jnp.asarray(A), s, e, f_star + e * jax.random.normal(k2, shape))
        var += np.asarray(f_star - Kb) ** 2 / num_simulations
        resid, iters = max(resid, float(info.residual_norm)), max(iters, int(info.iterations))
    return mean, var, resid, iters


def predict_grid(fit, num_draws: int = 20, num_simulations: int = 1, *, seed: int = 0,
                 tol: float = 1e-5, maxiter: int = 2000, include_noise: bool = False,
                 progress: bool = False):
    """Posterior predictive mean and sd of a whole-volume fit at every voxel of its grid.

    Args:
        fit: a :class:`~aniso_gp.inference.Fit` with ``likelihood="whittle"``.
        num_draws: posterior draws (evenly thinned) to mix over.
        num_simulations: conditional simulations per draw for the variance.
        seed: random seed of the simulations.
        tol, maxiter: preconditioned-CG relative tolerance and iteration cap.
        include_noise: add the noise variance (predicting new measurements).
        progress: show a progress bar over the draws.

    Returns:
        ``(mean, sd, info)``: two (n0, n1, n2) arrays in the values' units (masked
        voxels are predicted too) and a dict with the largest CG residual and
        iteration count over the solves.
    """
    if not fit.is_volume:
        raise ValueError("predict_grid needs a whole-volume fit (likelihood='whittle'); "
                         "use Fit.predict for points")
    num_draws = check.positive_int(num_draws, "num_draws")
    num_simulations = check.positive_int(num_simulations, "num_simulations")
    gv, std, base = fit.gridded(), fit.std, fit.settings["base"]
    spacing = np.asarray(gv.spacing) / std.x_scale
    lags = tuple(jnp.asarray(t) for t in fft_grid.lag_axes(gv.shape, spacing))
    solve = _solver(gv.shape, lags, gv.mask, base, tol, maxiter)
    ys = np.where(gv.mask, (gv.values - std.y_mean) / std.y_sd, 0.0)
    d = fit.standardised_draws(num_draws)
    keys = jax.random.split(jax.random.PRNGKey(seed), d["signal"].shape[0])
    # Running sums over draws, so memory stays a few volumes whatever num_draws is.
    s1, s2, sv = (np.zeros(gv.shape) for _ in range(3))
    resid, iters = 0.0, 0
    draws = list(zip(keys, *(np.asarray(d[k]) for k in ("A_std", "signal", "noise", "mean")),
                     strict=True))
    for key, A, s, e, mu in tqdm(draws, desc="predict_grid", unit="draw", disable=not progress):
        m, v, r, i = predict_draw(solve, gv.shape, spacing, base, A, s, e, mu, ys, key,
                                  num_simulations)
        s1 += m
        s2 += m * m
        sv += v + (e**2 if include_noise else 0.0)
        resid, iters = max(resid, r), max(iters, i)
    if resid > tol:
        warnings.warn(f"preconditioned CG stopped at relative residual {resid:.1e} > tol = "
                      f"{tol:g} after {iters} iterations (maxiter = {maxiter}): the predictions "
                      "are approximate; raise `maxiter`", UserWarning, stacklevel=2)
    n = len(draws)
    mean = s1 / n
    var = sv / n + np.clip(s2 / n - mean * mean, 0.0, None)
    info = {"max_cg_residual": resid, "max_cg_iterations": iters, "draws": n,
            "simulations_per_draw": int(num_simulations)}
    return mean * std.y_sd + std.y_mean, np.sqrt(var) * std.y_sd, info
