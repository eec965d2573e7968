r"""A volume prepared for the whole-volume (debiased spatial Whittle) likelihood.

A :class:`GriddedVolume` is a checked 3-D array of values with a mask of the
observed voxels, a physical spacing and origin; every check of a volume given to
:func:`aniso_gp.inference.fit` lives in :func:`as_gridded`. From it, in
standardised units (coordinates divided by the fit's common scale, values
centred and scaled to unit sd over the observed voxels):

* :func:`fourier_data`: what the sampler reads, computed once per data set:
  the lag axes, the mask autocorrelation ``c_g``, the half-spectrum weights and
  the DFT of the taper (:class:`GridData`), and the tapered DFT of the data;
* :func:`moment_start`: a kernel-free starting metric from the empirical
  autocovariance at small lags;
* :func:`simulate`: exact draws of the model on the grid (circulant embedding
  on a torus grown until it is positive semi-definite), for the parametric
  bootstrap of :mod:`aniso_gp.calibration`.

Frame: voxel ``(i, j, k)`` is at ``origin + (i, j, k) * spacing`` (array axis
``d`` is coordinate ``d``), as everywhere in aniso_gp.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from aniso_gp import _validation as check
from aniso_gp import kernels
from aniso_gp.linalg import grid as fft_grid

MIN_VOXELS_PER_AXIS = 4
TAPERS = (None, *fft_grid.TAPERS)
LOO_GROUPS = 1000
_MAX_TORUS_VOXELS = 16_000_000


class GridData(NamedTuple):
    """The Fourier structure of a gridded data set that the Whittle site reads.

    Attributes:
        lags: the half-lag axes (:func:`~aniso_gp.linalg.grid.lag_axes`,
            ``half=True``): (2 n0,), (2 n1,), (n2,), standardised units.
        c_half: (2 n0, 2 n1, n2) mask (taper) autocorrelation on them, doubled off
            the ``tau2 = 0`` plane (:func:`~aniso_gp.linalg.grid.half_lag_weights`);
            ``c_half[0, 0, 0] = c_g(0) = 1``.
        weights: (n0, n1, m) half-spectrum multiplicities, ``m = n2 // 2 + 1``.
        G: (2, n0, n1, m) real and imaginary parts of the DFT of the taper.
    """

    lags: tuple
    c_half: jnp.ndarray
    weights: jnp.ndarray
    G: jnp.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        m0, m1, n2 = self.c_half.shape
        return m0 // 2, m1 // 2, n2


@dataclasses.dataclass(frozen=True)
class GriddedVolume:
    """Values on a regular grid with the observed voxels marked.

    ``values`` (n0, n1, n2) float64 is NaN exactly where ``mask`` is False.
    """

    values: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    taper: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.values.shape

    @property
    def num_observed(self) -> int:
        return int(self.mask.sum())

    def axis_coordinates(self) -> list[np.ndarray]:
        return [o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, self.shape,
                                                        strict=True)]

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Observed voxels as points: ``X`` (N, 3) centres and ``y`` (N,) values, C order."""
        idx = np.nonzero(self.mask)
        X = np.stack([c[i] for c, i in zip(self.axis_coordinates(), idx, strict=True)], axis=1)
        return X, self.values[idx]

    def coordinate_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean (3,), variance (3,) and range (3,) of the observed voxel centres, from the
        mask's marginal counts (no (N, 3) array)."""
        mean, var, ptp = [], [], []
        for d, c in enumerate(self.axis_coordinates()):
            counts = self.mask.sum(axis=tuple(a for a in range(3) if a != d)).astype(np.float64)
            w = counts / counts.sum()
            m = float(w @ c)
            mean.append(m)
            var.append(float(w @ (c - m) ** 2))
            nz = np.nonzero(counts)[0]
            ptp.append(float(c[nz[-1]] - c[nz[0]]))
        return np.array(mean), np.array(var), np.array(ptp)


def is_volume(X) -> bool:
    """True for what :func:`as_gridded` reads: a ``Volume`` or a 3-D array (not points)."""
    from aniso_gp.datasets import Volume

    if isinstance(X, Volume | GriddedVolume):
        return True
    return hasattr(X, "ndim") and getattr(X, "ndim", 0) == 3


def as_gridded(volume, spacing=None, mask=None, taper=None, origin=None,
               name: str = "volume") -> GriddedVolume:
    """Check a volume and its mask once; every error names the argument.

    Args:
        volume: a :class:`~aniso_gp.datasets.Volume` (its spacing and origin are
            used) or a 3-D array of real numbers; NaN voxels count as missing.
        spacing: voxel size, one number or one per array axis (arrays only;
            default 1).
        mask: optional (n0, n1, n2) boolean, True where a voxel is observed;
            combined with the non-NaN voxels.
        taper: ``None``, ``"hann"`` or ``"tukey"`` (see
            :func:`~aniso_gp.linalg.grid.taper_weights`).
        origin: centre of voxel (0, 0, 0) (arrays only; default 0).
        name: what the caller calls ``volume``, for the messages (``fit`` says ``X``).
    """
    from aniso_gp.datasets import Volume

    if isinstance(volume, GriddedVolume):
        given = [k for k, v in (("spacing", spacing), ("mask", mask), ("taper", taper),
                                ("origin", origin)) if v is not None]
        if given:
            raise ValueError(f"`{name}` is a GriddedVolume with its own spacing, origin, mask "
                             f"and taper; do not pass `{'`, `'.join(given)}` as well")
        return volume
    if isinstance(volume, Volume):
        if spacing is not None or origin is not None:
            raise ValueError(f"`{name}` is a Volume with its own spacing and origin; do not "
                             "pass `spacing`/`origin` as well")
        values, spacing, origin = volume.density, volume.spacing, volume.origin
    else:
        values = volume
        spacing = 1.0 if spacing is None else spacing
        origin = (0.0, 0.0, 0.0) if origin is None else origin
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a 3-D numeric array; got {type(values).__name__}") \
            from err
    if arr.ndim != 3:
        raise ValueError(f"`{name}` must be a 3-D array (n0, n1, n2); got a {arr.ndim}-D array "
                         f"of shape {arr.shape}")
    if arr.dtype == bool:  # a segmented (binary) volume is data too
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"`{name}` must hold real numbers; got dtype {arr.dtype}")
    if min(arr.shape) < MIN_VOXELS_PER_AXIS:
        raise ValueError(f"`{name}` needs at least {MIN_VOXELS_PER_AXIS} voxels along every "
                         f"axis; got shape {arr.shape}")
    spacing = check.triple(spacing, "spacing", positive=True)
    origin = check.triple(origin, "origin", positive=False)
    if taper is not None:
        check.one_of(taper, TAPERS, "taper")
    vals = arr.astype(np.float64, copy=True)
    if np.any(np.isinf(vals)):
        raise ValueError(f"`{name}` has {int(np.isinf(vals).sum())} infinite values; mark them "
                         "NaN or exclude them with `mask`")
    observed = ~np.isnan(vals)
    if not observed.any():
        raise ValueError(f"`{name}` is NaN everywhere: no voxel is observed")
    if mask is not None:
        observed &= check.mask(mask, arr.shape)
        if not observed.any():
            raise ValueError("`mask` selects only NaN voxels: nothing to fit")
    vals[~observed] = np.nan
    if observed.sum() < 10:
        raise ValueError(f"the volume has {int(observed.sum())} observed voxels; at least 10 "
                         "are needed")
    return GriddedVolume(vals, observed, spacing, origin, taper)


def fourier_data(gv: GriddedVolume, x_scale: float, y_mean: float, y_sd: float):
    """The sampler's data for a volume: ``(GridData, J, g)`` in standardised units.

    ``J`` (2, n0, n1, m) holds the real and imaginary parts of the tapered DFT
    of the standardised values (0 off the mask), the observation of
    :class:`~aniso_gp.models.WhittleFourier`; ``g`` (n0, n1, n2) the taper weights.
    """
    g = fft_grid.taper_weights(gv.mask, gv.taper)
    c_g = fft_grid.autocorrelation(g)
    G = jnp.fft.rfftn(jnp.asarray(g))
    ys = np.where(gv.mask, (gv.values - y_mean) / y_sd, 0.0)
    J = fft_grid.tapered_dft(ys, g)
    lags = tuple(jnp.asarray(t) for t in
                 fft_grid.lag_axes(gv.shape, np.asarray(gv.spacing) / x_scale, half=True))
    weights = jnp.asarray(fft_grid.half_spectrum_weights(gv.shape))
    data = GridData(lags=lags, c_half=fft_grid.half_lag_weights(c_g), weights=weights,
                    G=jnp.stack([G.real, G.imag]))
    return data, jnp.stack([J.real, J.imag]), g


def loo_groups(shape, num_groups: int = LOO_GROUPS, seed: int = 0) -> np.ndarray:
    """Group index (n0, n1, m) of every half-spectrum entry for leave-one-group-out.

    The groups are a random partition of the conjugate pairs (each pair, which
    the planes ``k2 = 0`` and ``k2 = n2/2`` hold twice, falls in one group), so
    each group is a random set of frequencies from the whole spectrum.
    """
    n0, n1, n2 = shape
    m = n2 // 2 + 1
    k0, k1, k2 = np.meshgrid(np.arange(n0), np.arange(n1), np.arange(m), indexing="ij")
    edge = (k2 == 0) | ((n2 % 2 == 0) & (k2 == n2 // 2))
    c0, c1 = (-k0) % n0, (-k1) % n1
    swap = edge & ((c0 < k0) | ((c0 == k0) & (c1 < k1)))
    r0, r1 = np.where(swap, c0, k0), np.where(swap, c1, k1)
    rep = (r0 * n1 + r1) * m + k2
    uniq, inverse = np.unique(rep, return_inverse=True)
    num = min(int(num_groups), len(uniq))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    return (perm[inverse] % num).reshape(rep.shape)


def empirical_autocovariance(ys, g, c_g) -> np.ndarray:
    """``sum_s g_s g_{s+tau} x_s x_{s+tau} / c_g(tau)`` at every signed lag (FFT order):
    the tapered empirical autocovariance, unbiased for a zero-mean field; NaN where
    ``c_g(tau) < 1e-3``."""
    a = np.asarray(fft_grid.autocorrelation(np.asarray(g) * np.asarray(ys)))
    c = np.asarray(c_g)
    return np.where(c > 1e-3, a / np.where(c > 1e-3, c, 1.0), np.nan)


def moment_start(ys, g, spacing, max_lag: int = 2):
    r"""A kernel-free start ``(mean, signal, noise, M)`` from the autocovariance at small lags.

    With ``chat(tau)`` the empirical autocovariance of the demeaned field
    (:func:`empirical_autocovariance`), fits ``log chat(tau) = log s^2 -
    tau^T M tau / 2`` (an RBF-shaped covariance) by least squares over the lags
    ``0 < |tau|_inf <= max_lag`` where ``chat`` is above 5% of ``chat(0)``,
    weighted by ``chat``; ``M`` is projected onto SPD matrices and the nugget is
    ``chat(0) - s^2`` (at least 2% of ``chat(0)``). For a stationary RBF field
    ``E chat = s^2 exp(-tau^T M tau/2)`` away from 0, so this is a method-of-
    moments estimate; for Matern bases it is a rough start that Newton steps on
    the likelihood refine. Falls back to an isotropic start when fewer than 7
    lags qualify (a field rougher than the voxel size). All in standardised units.
    """
    ys, g = np.asarray(ys), np.asarray(g)
    lags = fft_grid.lag_axes(g.shape, spacing)
    mean = float(np.sum(g * ys) / np.sum(g))
    x0 = np.where(g > 0, ys - mean, 0.0)
    chat = empirical_autocovariance(x0, g, fft_grid.autocorrelation(g))
    c0 = float(chat[0, 0, 0])
    rows, vals, wts = [], [], []
    for j in np.ndindex(*(2 * max_lag + 1,) * 3):
        t = np.array(j) - max_lag
        if not t.any():
            continue
        idx = tuple(int(v) % len(lag) for v, lag in zip(t, lags, strict=True))
        c = chat[idx]
        if not np.isfinite(c) or c < 0.05 * c0:
            continue
        tau = np.array([float(lag[i]) for lag, i in zip(lags, idx, strict=True)])
        q = [tau[0] ** 2, tau[1] ** 2, tau[2] ** 2, 2 * tau[0] * tau[1], 2 * tau[0] * tau[2],
             2 * tau[1] * tau[2]]
        rows.append([1.0] + [-0.5 * v for v in q])
        vals.append(math.log(c))
        wts.append(c / c0)
    steps = np.array([float(lag[1]) for lag in lags])
    if len(rows) >= 7:
        Amat, b, w = np.array(rows), np.array(vals), np.sqrt(np.array(wts))
        sol = np.linalg.lstsq(Amat * w[:, None], b * w, rcond=None)[0]
        signal2 = min(math.exp(sol[0]), 0.98 * c0)
        m = sol[1:]
        M = np.array([[m[0], m[3], m[4]], [m[3], m[1], m[5]], [m[4], m[5], m[2]]])
    else:  # rougher than the grid: isotropic, correlation ~exp(-1/2) at one voxel
        signal2, M = 0.8 * c0, np.diag(1.0 / steps**2)
    lam, V = np.linalg.eigh(0.5 * (M + M.T))
    # Length-scales between half a voxel and the grid's largest lag.
    hi = 1.0 / (0.5 * steps.min()) ** 2
    lo = 1.0 / max(float(np.max(np.abs(lag))) for lag in lags) ** 2
    M = (V * np.clip(lam, lo, hi)) @ V.T
    noise2 = max(c0 - signal2, 0.02 * c0)
    return mean, math.sqrt(signal2), math.sqrt(noise2), M


def psd_torus(shape, lag_spacing, A, variance, base, max_factor: float = 8.0,
              max_voxels: int = _MAX_TORUS_VOXELS):
    """Torus sizes and circulant eigenvalues of the smallest PSD embedding of the kernel.

    Starts at ``2 n`` per axis and grows by 1.5x (fast FFT lengths), up to
    ``max_factor n`` per axis and ``max_voxels`` in all, until the smallest
    eigenvalue is above ``-1e-10`` of the largest. Returns ``(torus, eigenvalues,
    min_ratio)``; ``min_ratio < -1e-10`` means no torus within the caps was PSD
    (a length-scale long against the grid): draws then clip the negative
    eigenvalues, which perturbs the covariance by about that relative amount.
    """
    import scipy.fft

    def fast(m):
        return int(scipy.fft.next_fast_len(int(m), real=True))

    torus = [fast(2 * n) for n in shape]
    while True:
        lags = [fft_grid.torus_lags(m, s) for m, s in zip(torus, lag_spacing, strict=True)]
        lam = fft_grid.circulant_eigenvalues(kernels.on_lags(lags, A, variance, base))
        ratio = float(jnp.min(lam) / jnp.max(lam))
        bigger = [fast(1.5 * m + 1) for m in torus]
        if (ratio > -1e-10 or math.prod(bigger) > max_voxels
                or any(b > max_factor * n for b, n in zip(bigger, shape, strict=True))):
            return tuple(torus), lam, ratio
        torus = bigger


def simulate(embedding, shape, noise, mean, key, num: int):
    """``num`` exact draws (num, n0, n1, n2) of ``mean + f + noise eps`` on the grid.

    ``embedding = (torus, eigenvalues, min_ratio)`` from :func:`psd_torus` for the
    signal kernel ``f ~ GP(0, signal^2 phi)`` (standardised units).
    """
    torus, lam, _ = embedding
    kf, ke = jax.random.split(key)
    f = fft_grid.circulant_draws(lam, torus, shape, kf, num)
    return mean + f + noise * jax.random.normal(ke, f.shape)
