r"""FFT structure of stationary covariances on regular 3-D grids (whole volumes).

A stationary kernel ``k`` on a grid of shape ``n = (n0, n1, n2)`` gives the
covariance ``K_st = k(s - t)`` between voxels ``s`` and ``t``: a 3-level
Toeplitz matrix. Everything here starts from the kernel's values at *every
signed integer lag*, held as a ``(2 n0, 2 n1, 2 n2)`` array in FFT order: along
axis ``d``, index ``j`` holds lag ``j`` for ``j < n_d`` and ``j - 2 n_d`` for
``j >= n_d``, i.e. ``[0, 1, ..., n-1, -n, ..., -1]`` (:func:`lag_axes`). Lag
``-n`` never separates two voxels; it only completes the torus. A rotated
kernel is *not* even in each lag separately (``k(t0, t1, t2) != k(|t0|, t1,
t2)``), so no half-lag shortcut is taken anywhere.

With taper weights ``g`` (masked voxels 0, ``sum g^2 = 1``) and the tapered DFT
``J(w) = sum_s g_s x_s e^{-i w.s}`` at the Fourier frequencies ``w = 2 pi j / n``:

* periodogram ``I(w) = |J(w)|^2`` (:func:`periodogram`);
* mask autocorrelation ``c_g(tau) = sum_s g_s g_{s+tau}`` (:func:`autocorrelation`);
* expected periodogram ``E I(w) = sum_tau c_g(tau) k(tau) e^{-i w.tau}``: the
  product on the lag array, folded onto the ``n`` torus (``tau mod n``) and
  transformed (:func:`expected_periodogram`; the summand is even, so half the
  lags suffice). This is exact for the finite grid, mask and taper
  (Guillaumin et al., JRSS-B 2022): no spectral density, no aliasing error.
* ``K v`` by circulant embedding of the lag array in the ``2n`` torus: exact,
  ``O(8 N log 8N)`` (:func:`toeplitz_matvec`);
* unconditional draws by circulant embedding on a torus large enough for the
  embedding to be positive semi-definite (:func:`circulant_draws`).

Real-input FFTs keep half of the last axis (``n2 // 2 + 1`` entries);
:func:`half_spectrum_weights` counts how often each entry appears in the full
grid. Every function is pure JAX on arrays (batched over leading axes where
stated), usable inside ``jit`` and differentiable.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from aniso_gp import _validation as check

_AXES = (-3, -2, -1)


def torus_lags(size: int, spacing: float = 1.0) -> np.ndarray:
    """Minimum-image lags of a 1-D torus of ``size`` points, FFT order, times ``spacing``."""
    return np.fft.fftfreq(size, d=1.0 / size) * spacing


def lag_axes(shape, spacing=(1.0, 1.0, 1.0), half: bool = False):
    """Physical signed lags of each grid axis, ``(2 n_d,)`` each, FFT order.

    ``[0, 1, ..., n-1, -n, ..., -1] * spacing_d``: the outer grid of the three is
    the lag array of :func:`toeplitz_spectrum` and :func:`autocorrelation`. With
    ``half=True`` the last axis keeps the lags ``[0, ..., n2-1]`` only: the
    half-lag array of :func:`expected_periodogram`.
    """
    shape = check.shape3(shape)
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    axes = [torus_lags(2 * n, s) for n, s in zip(shape, sp, strict=True)]
    if half:
        axes[2] = axes[2][: shape[2]]
    return tuple(axes)


TAPERS = ("hann", "tukey")


def _window(kind: str, n: int) -> np.ndarray:
    u = (np.arange(n) + 0.5) / n  # voxel centres in (0, 1)
    if kind == "hann":
        return np.sin(np.pi * u) ** 2
    ramp = 0.25  # tukey: Hann ramps over the outer quarter at each end
    edge = np.minimum(u, 1.0 - u) / ramp
    return np.where(edge < 1.0, np.sin(0.5 * np.pi * edge) ** 2, 1.0)


def taper_weights(mask, taper=None) -> np.ndarray:
    """Taper weights ``g`` (n0, n1, n2): 0 off the mask, ``sum g^2 = 1``.

    Args:
        mask: (n0, n1, n2) boolean, True where a voxel is observed.
        taper: ``None`` (flat), ``"hann"`` (separable Hann window
            ``sin^2(pi (j + 1/2) / n_d)`` over the grid), ``"tukey"`` (flat with
            Hann ramps over the outer quarter of each axis at each end: less
            variance inflation than Hann, most of its leakage suppression) or an
            array of the grid's shape with non-negative entries.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"`mask` must be a 3-D boolean array; got shape {mask.shape}")
    if taper is None:
        h = np.ones(mask.shape)
    elif isinstance(taper, str):
        if taper not in TAPERS:
            raise ValueError(f"`taper` must be None, one of {TAPERS} or an array; "
                             f"got {taper!r}")
        w = [_window(taper, n) for n in mask.shape]
        h = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
    else:
        h = np.asarray(taper, dtype=np.float64)
        if h.shape != mask.shape:
            raise ValueError(f"`taper` has shape {h.shape} but the grid has {mask.shape}")
        if not np.all(np.isfinite(h)) or np.any(h < 0):
            raise ValueError("`taper` must be finite and non-negative")
    g = np.where(mask, h, 0.0)
    total = float(np.sum(g * g))
    if not total > 0:
        raise ValueError("the taper is zero on every observed voxel")
    return g / np.sqrt(total)


def half_spectrum_weights(shape) -> np.ndarray:
    """Multiplicity (1 or 2) in the full grid of each real-FFT entry, (n0, n1, n2//2 + 1).

    Entries with ``0 < k2 < n2/2`` stand for themselves and their conjugates at
    ``-k``; the planes ``k2 = 0`` (and ``k2 = n2/2`` for even ``n2``) already
    hold both members of each conjugate pair. ``sum`` of the weights is ``n0 n1 n2``.
    """
    n0, n1, n2 = check.shape3(shape)
    w = np.full(n2 // 2 + 1, 2.0)
    w[0] = 1.0
    if n2 % 2 == 0:
        w[-1] = 1.0
    return np.broadcast_to(w, (n0, n1, n2 // 2 + 1)).copy()


def autocorrelation(g) -> jnp.ndarray:
    """``c_g(tau) = sum_s g_s g_{s+tau}`` at every signed lag, (2 n0, 2 n1, 2 n2), FFT order.

    Zero padding to ``2n`` makes the circular correlation the linear one; ``c_g``
    is 0 at lag ``-n``. Batched over leading axes of ``g``.
    """
    g = jnp.asarray(g, dtype=jnp.float64)
    s = tuple(2 * n for n in g.shape[-3:])
    F = jnp.fft.rfftn(g, s=s, axes=_AXES)
    return jnp.fft.irfftn(F.real**2 + F.imag**2, s=s, axes=_AXES)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def fold(a, axes=(-3, -2, -1)) -> jnp.ndarray:
    """Fold a lag array onto the ``n`` torus along ``axes`` (each of size ``2 n_d``):
    ``sum`` over ``tau mod n``.

    In FFT order the lags at indices ``j`` and ``j + n`` differ by ``n``, so the
    fold adds the two halves of each axis (slices, one axis at a time); its
    pullback tiles the cotangent. (A 6-D reshape and sum, and the autodiff
    pullback of the slices, ran 5-20x slower on CPU at 128^3.)
    """
    for axis in axes:
        m = a.shape[axis]
        if m % 2:
            raise ValueError(f"folded lag axes have even sizes 2 n; got {a.shape}")
        a = (jax.lax.slice_in_dim(a, 0, m // 2, axis=axis)
             + jax.lax.slice_in_dim(a, m // 2, m, axis=axis))
    return a


def _fold_fwd(a, axes):
    return fold(a, axes), None


def _fold_bwd(axes, _, g):
    reps = [1] * g.ndim
    for axis in axes:
        reps[axis] = 2
    return (jnp.tile(g, reps),)


fold.defvjp(_fold_fwd, _fold_bwd)


def half_lag_weights(c_g) -> jnp.ndarray:
    """``c_g`` on the half-lag array (last axis ``[0, n2)``), doubled off the ``tau2 = 0``
    plane: the weights of :func:`expected_periodogram`."""
    n2 = c_g.shape[-1] // 2
    w = jnp.where(jnp.arange(n2) == 0, 1.0, 2.0)
    return c_g[..., :n2] * w


def expected_periodogram(k_half, c_half) -> jnp.ndarray:
    r"""``E I(w)`` at the Fourier frequencies, real half spectrum (..., n0, n1, n2//2 + 1).

    ``Ibar(w) = sum_tau c_g(tau) k(tau) e^{-i w.tau}`` over every signed lag. The
    summand is even in ``tau``, so ``Ibar(w) = sum_tau c_g k cos(w.tau)``: the
    real part of the same sum over ``tau2 >= 0`` with the ``tau2 > 0`` terms
    doubled. That halves the lag array: ``k_half`` is the kernel on
    :func:`lag_axes` with ``half=True``, (2 n0, 2 n1, n2), and ``c_half`` is
    :func:`half_lag_weights` of :func:`autocorrelation`; the product is folded
    on the first two axes (``tau2 < n2`` needs no fold) and transformed.
    Batched over leading axes of ``k_half``.
    """
    return transform_folded(fold(k_half * c_half, (-3, -2)))


def transform_folded(folded) -> jnp.ndarray:
    """The last step of :func:`expected_periodogram`: ``Re rfftn`` of the folded product
    (..., n0, n1, n2) (from :func:`aniso_gp.kernels.folded_on_lags`), (..., n0, n1, n2//2 + 1)."""
    return jnp.fft.rfftn(folded, axes=_AXES).real


def tapered_dft(x, g) -> jnp.ndarray:
    """``J(w) = sum_s g_s x_s e^{-i w.s}`` (complex half spectrum); ``x`` is read only where
    ``g > 0`` (masked voxels may hold NaN). Batched over leading axes of ``x``."""
    x = jnp.asarray(x, dtype=jnp.float64)
    g = jnp.asarray(g, dtype=jnp.float64)
    return jnp.fft.rfftn(jnp.where(g > 0, g * x, 0.0), axes=_AXES)


def periodogram(x, g, mean=0.0) -> jnp.ndarray:
    """``I(w) = |sum_s g_s (x_s - mean) e^{-i w.s}|^2``, real half spectrum (n0, n1, n2//2 + 1)."""
    J = tapered_dft(x, g) - mean * jnp.fft.rfftn(jnp.asarray(g, jnp.float64), axes=_AXES)
    return J.real**2 + J.imag**2


def toeplitz_spectrum(k_lags) -> jnp.ndarray:
    """Eigenvalues of the ``2n``-torus circulant that embeds ``K``: ``rfftn`` of the lag array."""
    return jnp.fft.rfftn(jnp.asarray(k_lags, dtype=jnp.float64), axes=_AXES)


def toeplitz_matvec(spectrum, v) -> jnp.ndarray:
    r"""``K v`` for the 3-level Toeplitz ``K_st = k(s - t)``, exactly, by circulant embedding.

    ``(K v)_s = sum_t k(s - t) v_t`` is a linear convolution; on the ``2n`` torus
    with ``v`` zero-padded, every ``s - t`` in ``(-n, n)`` is its own lag index,
    so the circular convolution ``irfftn(spectrum * rfftn(v))`` restricted to the
    grid equals it. ``spectrum`` is :func:`toeplitz_spectrum` of the signed-lag
    array (whatever its sign structure); ``v`` (..., n0, n1, n2).
    """
    v = jnp.asarray(v, dtype=jnp.float64)
    n0, n1, n2 = v.shape[-3:]
    s = (2 * n0, 2 * n1, 2 * n2)
    out = jnp.fft.irfftn(spectrum * jnp.fft.rfftn(v, s=s, axes=_AXES), s=s, axes=_AXES)
    return out[..., :n0, :n1, :n2]


def circulant_eigenvalues(k_torus) -> jnp.ndarray:
    """Real half-spectrum eigenvalues of the circulant whose first column is ``k_torus``
    (kernel at the minimum-image lags of a torus, :func:`torus_lags`)."""
    return jnp.fft.rfftn(jnp.asarray(k_torus, dtype=jnp.float64), axes=_AXES).real


def circulant_draws(eigenvalues, torus_shape, shape, key, num: int = 1) -> jnp.ndarray:
    r"""Draws of a zero-mean stationary field on ``shape`` by circulant embedding.

    With the circulant ``C`` on the torus (eigenvalues ``lam``, half spectrum,
    from :func:`circulant_eigenvalues`) and white noise ``w``,
    ``IFFT(sqrt(lam) FFT(w))`` has covariance ``C``; its first ``shape`` block
    has the kernel's covariance exactly when every in-block lag is its own
    minimum image (torus ``>= 2 n - 1`` per axis) and ``lam >= 0``. Negative
    ``lam`` (an embedding too small for the kernel) are clipped at 0: the
    caller checks ``min(lam)`` first and enlarges the torus.

    Returns (num, n0, n1, n2).
    """
    lam = jnp.clip(jnp.asarray(eigenvalues, jnp.float64), 0.0, None)
    m = tuple(int(v) for v in torus_shape)
    w = jax.random.normal(key, (num, *m), dtype=jnp.float64)
    f = jnp.fft.irfftn(jnp.sqrt(lam) * jnp.fft.rfftn(w, axes=_AXES), s=m, axes=_AXES)
    return f[:, : shape[0], : shape[1], : shape[2]]
