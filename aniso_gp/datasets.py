"""Data sets with known truth (synthetic fields and volumes) and shipped real data.

Synthetic: :func:`synthetic_field` (points) and :func:`nano_brick` (a voxel
volume). Real, shipped under ``aniso_gp/data/`` with provenance in
``data/README.md``: :func:`oilsands` (drill-core assays),
:func:`laminated_needle` (an electron-tomography crop) and
:func:`polymer_fibres` (a micro-CT crop).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.fft

from aniso_gp import _validation as check
from aniso_gp import kernels, so3
from aniso_gp.linalg.dense import checked_cholesky

DESIGNS = ("uniform", "jittered_grid", "grid")


@dataclasses.dataclass(frozen=True)
class Truth:
    """Generating parameters of a synthetic field (canonical labelling)."""

    lengthscales: np.ndarray  # (3,), sorted descending
    axis_angle: np.ndarray  # (3,), canonical
    metric: np.ndarray  # (3, 3)
    axes: np.ndarray  # (3, 3) principal directions as columns, matching lengthscales
    variance: float
    noise_sd: float
    base: str
    mean: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}


@dataclasses.dataclass(frozen=True)
class Field:
    """Points ``X`` (n, 3), values ``y`` (n,), optionally the noise-free ``f`` and the truth."""

    X: np.ndarray
    y: np.ndarray
    truth: Truth | None = None
    f: np.ndarray | None = None

    def __len__(self) -> int:
        return self.X.shape[0]

    def subset(self, idx) -> Field:
        return Field(self.X[idx], self.y[idx], self.truth, None if self.f is None else self.f[idx])

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[Field, Field]:
        """Random train/test split; ``test_fraction`` in (0, 1)."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be in (0, 1); got {test_fraction}")
        n = len(self)
        n_test = int(round(test_fraction * n))
        if n_test < 1 or n_test > n - 1:
            raise ValueError(f"`test_fraction`={test_fraction} leaves an empty split of {n} points")
        perm = np.random.default_rng(check.seed(seed)).permutation(n)
        return self.subset(np.sort(perm[n_test:])), self.subset(np.sort(perm[:n_test]))


def design_points(n: int, design: str = "uniform", extent: float = 1.0, seed: int = 0):
    """Sampling locations in the box ``[0, extent]^3``, shape (n, 3).

    ``"grid"`` needs ``n = k^3`` and places cell centres; ``"jittered_grid"``
    takes the smallest ``k^3 >= n`` cells, jitters each point uniformly within its
    cell and keeps a random ``n`` of them.
    """
    check.one_of(design, DESIGNS, "design")
    n = check.integer(n, "n", minimum=2)
    extent = check.positive_scalar(extent, "extent")
    rng = np.random.default_rng([check.seed(seed), 0])
    if design == "uniform":
        return rng.uniform(0.0, extent, size=(n, 3))
    k = int(round(n ** (1 / 3)))
    if design == "grid" and k**3 != n:
        raise ValueError(f"`design`='grid' needs `n` to be a perfect cube; got n={n}")
    while k**3 < n:
        k += 1
    h = extent / k
    centres = (np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5)
    if design == "grid":
        return centres * h
    pts = (centres + rng.uniform(-0.5, 0.5, size=centres.shape)) * h
    return pts[np.sort(rng.choice(len(pts), size=n, replace=False))]


def synthetic_field(
    n: int,
    lengthscales,
    axis_angle,
    base: str = "rbf",
    variance: float = 1.0,
    noise_sd: float = 0.1,
    design: str = "uniform",
    extent: float = 1.0,
    seed: int = 0,
) -> Field:
    """Draw a zero-mean GP field with a rotated anisotropic kernel and known truth.

    ``y = f + eps``, ``f ~ GP(0, s^2 phi)`` with metric ``R diag(l^-2) R^T``,
    ``eps ~ N(0, noise_sd^2)``. The draw uses the exact kernel and a jittered
    Cholesky, and is reproducible by ``seed``.
    """
    l = np.asarray(check.lengthscales(lengthscales))
    a = np.asarray(check.vector3(axis_angle, "axis_angle"))
    base = check.base_name(base)
    variance = check.positive_scalar(variance, "variance")
    noise_sd = check.positive_scalar(noise_sd, "noise_sd", allow_zero=True)
    seed = check.seed(seed)
    X = design_points(n, design, extent, seed)
    params = {"lengthscales": jnp.asarray(l), "axis_angle": jnp.asarray(a), "variance": variance}
    K = kernels.gram(jnp.asarray(X), jnp.asarray(X), params, base)
    L, _ = checked_cholesky(K, "synthetic field's kernel matrix")
    # Independent streams for the design ([seed, 0]) and the field ([seed, 1]).
    rng = np.random.default_rng([seed, 1])
    f = np.array(L @ rng.standard_normal(n))
    y = f + noise_sd * rng.standard_normal(n)
    lc, ac = (np.array(v) for v in so3.canonicalize(l, a))
    truth = Truth(
        lengthscales=lc,
        axis_angle=ac,
        metric=np.array(so3.metric(l, a)),
        axes=np.array(so3.exp(ac)),
        variance=variance,
        noise_sd=noise_sd,
        base=base,
    )
    return Field(X=X, y=y, truth=truth, f=f)


# --------------------------------------------------------------------------- #
# Voxel volumes
# --------------------------------------------------------------------------- #
def voxel_coordinates(shape, spacing=1.0, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Physical coordinates of voxel centres, shape (n0 n1 n2, 3), in C order.

    Voxel ``(i, j, k)`` sits at ``origin + (i s0, j s1, k s2)``: array axis ``d``
    is coordinate column ``d``, and row ``(i n1 + j) n2 + k`` of the result
    matches ``volume.ravel()``.
    """
    if len(shape) != 3:
        raise ValueError(f"`shape` must have 3 entries; got {tuple(shape)}")
    s = np.asarray(check.triple(spacing, "spacing", positive=True))
    o = np.asarray(check.triple(origin, "origin", positive=False))
    idx = np.indices(tuple(int(n) for n in shape), dtype=np.float64).reshape(3, -1).T
    return o + idx * s


@dataclasses.dataclass(frozen=True)
class Volume:
    """Values on a regular 3-D grid with physical voxel spacing.

    ``density`` (n0, n1, n2) float64; voxel ``(i, j, k)`` is centred at
    ``origin + (i, j, k) * spacing`` (see :func:`voxel_coordinates`), so array
    axis ``d`` is coordinate ``d`` and orientations found from
    :meth:`to_points` are in that frame. ``units`` names the length unit of
    ``spacing``/``origin`` (and of the truth's length-scales), ``value_units``
    that of the values. Synthetic volumes carry their ``truth`` and the
    noise-free field ``f``. NaN values are allowed (e.g. outside a sample) but
    must be masked out before :meth:`to_points`.
    """

    density: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    truth: Truth | None = None
    f: np.ndarray | None = None
    units: str = ""
    value_units: str = ""

    def __post_init__(self):
        d = self._grid(self.density, "density")
        object.__setattr__(self, "density", d)
        object.__setattr__(self, "spacing", check.triple(self.spacing, "spacing", positive=True))
        object.__setattr__(self, "origin", check.triple(self.origin, "origin", positive=False))
        if self.f is not None:
            f = self._grid(self.f, "f")
            if f.shape != d.shape:
                raise ValueError(f"`f` has shape {f.shape} but `density` has {d.shape}")
            object.__setattr__(self, "f", f)

    @staticmethod
    def _grid(a, name: str) -> np.ndarray:
        try:
            arr = np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError) as err:
            kind = type(a).__name__
            raise ValueError(f"`{name}` must be a numeric 3-D array; got {kind}") from err
        if arr.ndim != 3 or arr.size == 0:
            raise ValueError(f"`{name}` must be a non-empty 3-D array; got shape {arr.shape}")
        return arr

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.density.shape

    @property
    def extent(self) -> np.ndarray:
        """Physical size of the grid, ``n_d * s_d`` per axis (3,)."""
        return np.asarray(self.shape) * np.asarray(self.spacing)

    def coordinates(self) -> np.ndarray:
        """Voxel-centre coordinates (n0 n1 n2, 3), C order."""
        return voxel_coordinates(self.shape, self.spacing, self.origin)

    def to_points(self, mask=None) -> Field:
        """Voxels as a point :class:`Field`: ``X`` (N, 3) physical coordinates, ``y`` (N,).

        ``mask`` (n0, n1, n2) boolean keeps the voxels where it is True (all when
        None). Raises ``ValueError`` if a kept value is NaN or infinite.
        """
        keep = np.ones(self.density.size, dtype=bool)
        if mask is not None:
            keep = check.mask(mask, self.shape).ravel()
        y = self.density.ravel()[keep]
        bad = ~np.isfinite(y)
        if bad.any():
            raise ValueError(
                f"`density` has {int(bad.sum())} NaN/infinite values among the {y.size} selected "
                "voxels; pass a `mask` that excludes them"
            )
        X = self.coordinates()[keep]
        f = None if self.f is None else self.f.ravel()[keep]
        return Field(X=X, y=y, truth=self.truth, f=f)


# --------------------------------------------------------------------------- #
# Nano-brick: a stationary GP texture on a voxel grid, by circulant embedding
# --------------------------------------------------------------------------- #
TEXTURES = ("laminated", "fibrous")
# Defaults in voxels (scaled by the smallest spacing). Laminated: thin sheets, two
# long in-plane scales that differ (so the in-plane rotation is identified) and a
# short one across; fibrous: one long scale along the fibre, two short across.
NANO_BRICK_LENGTHSCALES = {"laminated": (10.0, 6.0, 2.0), "fibrous": (10.0, 3.0, 2.0)}
# A ~49 degree rotation about (0.70, -0.58, 0.41): every principal axis is at
# least ~30 degrees from every grid axis, so an axis-aligned (ARD) kernel cannot
# represent the metric.
NANO_BRICK_AXIS_ANGLE = (0.6, -0.5, 0.35)
# The embedding torus is padded until the kernel has decayed to exp(-6^2/2)
# ~ 1.5e-8 at its seam; the circulant's eigenvalues are then non-negative to
# that order and clipping them changes the covariance by less than that.
_EMBED_SIGMAS = 6.0
_MAX_EMBED_VOXELS = 64_000_000


def _texture_of(l_sorted: np.ndarray) -> str | None:
    """'laminated' when the largest gap between sorted length-scales is mid/short,
    'fibrous' when it is long/mid, None when there is no gap (isotropic or a tie)."""
    hi, lo = l_sorted[0] / l_sorted[1], l_sorted[1] / l_sorted[2]
    if np.isclose(hi, lo):
        return None
    return "laminated" if lo > hi else "fibrous"


def embedding_sizes(shape, spacing, M) -> tuple[int, int, int]:
    r"""Torus sizes (voxels) of the circulant embedding of an RBF kernel with metric ``M``.

    Along grid axis ``d`` the kernel on the plane ``r_d = t`` is at most
    ``exp(-t^2 / (2 \Sigma_{dd}))`` with ``\Sigma = M^{-1}`` (the minimum of
    ``r^T M r`` subject to ``r_d = t`` is ``t^2 / \Sigma_{dd}``), so a torus of
    ``m_d >= 2 * 6 sqrt(\Sigma_{dd}) / s_d`` voxels puts its seam 6 "sigmas"
    out; ``m_d >= 2 n_d`` keeps every in-block displacement its own minimum
    image. Sizes are rounded up to fast FFT lengths.
    """
    Sigma = np.linalg.inv(np.asarray(M, dtype=np.float64))
    half = _EMBED_SIGMAS * np.sqrt(np.diag(Sigma)) / np.asarray(spacing)
    return tuple(
        int(scipy.fft.next_fast_len(max(2 * int(n), int(np.ceil(2.0 * h))), real=True))
        for n, h in zip(shape, half, strict=True)
    )


def stationary_rbf_grid(shape, spacing, M, variance: float, rng) -> np.ndarray:
    r"""Exact draw of a zero-mean GP with kernel ``s^2 exp(-r^T M r / 2)`` on a voxel grid.

    Circulant embedding (Dietrich & Newsam 1997; Wood & Chan 1994): on a torus of
    ``m = embedding_sizes(...)`` voxels let ``c(k) = s^2 exp(-d_k^T M d_k / 2)``
    with ``d_k`` the minimum-image displacement of offset ``k`` times the spacing.
    Its circulant matrix ``C`` has eigenvalues ``lam = FFT(c)``; with white noise
    ``w`` the field ``C^{1/2} w = IFFT(sqrt(lam) FFT(w))`` has covariance ``C``,
    whose restriction to the first ``n0 x n1 x n2`` block is exactly the kernel
    (in-block displacements are their own minimum images). ``lam`` is
    non-negative up to the ~1e-8 seam error, and clipped at 0.

    Cost: a few real FFTs of ``prod(m)`` points (e.g. 120^3 for 24^3 voxels with
    a 10-voxel length-scale), against an ``N^3`` Cholesky of the ``N = 13,824``
    voxel covariance. Returns an (n0, n1, n2) float64 array.
    """
    m = embedding_sizes(shape, spacing, M)
    if np.prod(m, dtype=np.float64) > _MAX_EMBED_VOXELS:
        raise ValueError(
            f"the embedding torus {m} is too large ({np.prod(m, dtype=np.float64):.3g} voxels); "
            "use a smaller `shape` or shorter `lengthscales`"
        )
    d = []
    for ax, (mi, si) in enumerate(zip(m, spacing, strict=True)):
        k = np.arange(mi)
        disp = np.where(k <= mi // 2, k, k - mi) * si
        d.append(disp.reshape([mi if a == ax else 1 for a in range(3)]))
    # r^T M r from the three 1-D displacement axes by broadcasting: no (m^3, 3) array.
    q = sum(M[i, j] * d[i] * d[j] for i in range(3) for j in range(3))
    lam = scipy.fft.rfftn(variance * np.exp(-0.5 * q)).real
    neg = -lam.min()
    if neg > 1e-6 * lam.max():  # would mean the padding rule above is wrong
        raise RuntimeError(f"circulant embedding not PSD: min eigenvalue {-neg:.3g}")
    lam = np.clip(lam, 0.0, None)
    w = rng.standard_normal(m)
    f = scipy.fft.irfftn(np.sqrt(lam) * scipy.fft.rfftn(w), s=m)
    return f[: shape[0], : shape[1], : shape[2]]


@jax.jit
def _canonical_truth(l, a):
    """(canonical l, canonical a, metric, axes) in one compiled call: op-by-op eager
    dispatch of the same so3 functions costs several seconds of compilation."""
    lc, ac = so3.canonicalize(l, a)
    return lc, ac, so3.metric(l, a), so3.exp(ac)


def nano_brick(
    shape=(24, 24, 24),
    spacing=1.0,
    texture: str = "laminated",
    lengthscales=None,
    axis_angle=NANO_BRICK_AXIS_ANGLE,
    noise_sd: float = 0.1,
    variance: float = 1.0,
    mean: float = 0.0,
    seed: int = 0,
) -> Volume:
    r"""Synthetic density volume of a fabricated material with a known orientation.

    ``density = mean + f + noise_sd * eps`` on the voxel grid of ``shape``, with
    ``f`` an exact draw of the stationary GP ``f ~ GP(0, s^2 exp(-r^T M r / 2))``,
    ``M = R diag(l^-2) R^T``, ``R = so3.exp(axis_angle)``, ``s^2 = variance``,
    drawn by circulant embedding (:func:`stationary_rbf_grid`), so the RBF
    rotated-anisotropic kernel is the true model, not an approximation.

    ``texture`` fixes what the metric looks like: ``"laminated"`` (sheets: one
    short length-scale across the laminae, two long ones in their plane; the
    normal is the shortest principal axis) or ``"fibrous"`` (one long
    length-scale along the fibre axis, two short across). With
    ``lengthscales=None`` the defaults in :data:`NANO_BRICK_LENGTHSCALES`
    (voxels, scaled by the smallest spacing) are used; given length-scales
    (physical units) must have the texture's shape: the larger ratio of
    consecutive sorted length-scales is mid/short for laminated and long/mid for
    fibrous. The default ``axis_angle`` turns every principal axis at least ~30
    degrees away from the grid axes.

    Returns a :class:`Volume` (origin 0) with ``truth`` in canonical form (see
    :class:`Truth`; ``truth.axes[:, 2]`` is the lamina normal, ``[:, 0]`` the
    fibre axis) and the noise-free ``f`` (including the mean). ``seed`` makes it
    reproducible.
    """
    check.one_of(texture, TEXTURES, "texture")
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`shape` must be 3 integers; got {shape!r}") from err
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"`shape` must be 3 integers >= 2; got {shape}")
    spacing = check.triple(spacing, "spacing", positive=True)
    if lengthscales is None:
        lengthscales = np.asarray(NANO_BRICK_LENGTHSCALES[texture]) * min(spacing)
    l = np.asarray(check.lengthscales(lengthscales))
    a = np.asarray(check.vector3(axis_angle, "axis_angle"))
    variance = check.positive_scalar(variance, "variance")
    noise_sd = check.positive_scalar(noise_sd, "noise_sd", allow_zero=True)
    mean = check.finite_scalar(mean, "mean")
    found = _texture_of(np.sort(l)[::-1])
    if found != texture:
        raise ValueError(
            f"`lengthscales` {l.tolist()} do not describe a {texture} texture "
            f"({'no single gap between them' if found is None else 'they are ' + found}): "
            "laminated needs long, long >> short; fibrous needs long >> short, short"
        )
    lc, ac, M, axes = (np.asarray(v) for v in _canonical_truth(l, a))
    rng = np.random.default_rng(check.seed(seed))
    f = mean + stationary_rbf_grid(shape, spacing, M, variance, rng)
    density = f + noise_sd * rng.standard_normal(shape)
    truth = Truth(
        lengthscales=lc,
        axis_angle=ac,
        metric=M,
        axes=axes,
        variance=variance,
        noise_sd=noise_sd,
        base="rbf",
        mean=mean,
    )
    return Volume(density=density, spacing=spacing, truth=truth, f=f)


# --------------------------------------------------------------------------- #
# Shipped real data (aniso_gp/data/; provenance and licences in data/README.md)
# --------------------------------------------------------------------------- #
OILSANDS_UNITS = {
    "drillhole": "drillhole number",
    "east_m": "m",
    "north_m": "m",
    "elevation_m": "m",
    "bitumen_wt_pct": "wt%",
    "fines_wt_pct": "wt%",
    "chlorides": "not stated by the source",
    "facies_code": "integer code",
}
# Pixel size of the etspy tilt series (3.36 nm) times the 2x binning of the crop.
NEEDLE_VOXEL_NM = 6.72
# Centre of the crop's first voxel in the full reconstruction frame: native
# pixels (90, 114, 114) plus half a 2-pixel bin, times 3.36 nm.
NEEDLE_ORIGIN_NM = (90.5 * 3.36, 114.5 * 3.36, 114.5 * 3.36)


def patchwork(blocks=(2, 2, 1), block=24, lengthscales=(6.0, 4.0, 1.5), noise_sd: float = 0.1,
              seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A patchwork of nano-bricks: ``blocks`` blocks of ``block`` voxels a side, each an
    independent stationary field (:func:`nano_brick`) with its own random orientation.

    The test bed of orientation maps: every tile inside a block should find that
    block's axes. Returns the volume (no single ``truth``) and ``axes`` (b0, b1, b2,
    3, 3): each block's principal axes as columns, longest first (column 2 is the
    short axis).
    """
    nb = tuple(int(b) for b in blocks)
    rng = np.random.default_rng(check.seed(seed))
    density = np.empty(tuple(b * block for b in nb))
    axes = np.empty((*nb, 3, 3))
    for idx in np.ndindex(*nb):
        a = rng.normal(size=3)
        a *= rng.uniform(0.5, np.pi - 0.2) / np.linalg.norm(a)  # a well-turned rotation
        vol = nano_brick(shape=(block,) * 3, lengthscales=lengthscales, axis_angle=a,
                         noise_sd=noise_sd, seed=int(rng.integers(2**31)))
        box = tuple(slice(i * block, (i + 1) * block) for i in idx)
        density[box] = vol.density
        axes[idx] = vol.truth.axes
    return Volume(density=density, spacing=1.0, units="voxel"), axes


def data_path(name: str):
    """Path (an ``importlib.resources`` Traversable) of a shipped file in ``aniso_gp/data/``."""
    res = importlib.resources.files("aniso_gp").joinpath("data", name)
    if not res.is_file():
        raise FileNotFoundError(
            f"shipped data file {name!r} not found at {res}; the installation lacks "
            "aniso_gp/data/ (see data/README.md)"
        )
    return res


def oilsands() -> pd.DataFrame:
    """Oil-sands drill-core assays (pygeostat 1.2.0 example data, MIT): 5,808 rows.

    Columns: ``drillhole`` (int, 280 holes), ``east_m``, ``north_m``,
    ``elevation_m`` (metres, local grid), ``bitumen_wt_pct``, ``fines_wt_pct``
    (wt%), ``chlorides`` (units not stated by the source; NaN in 2,248 rows) and
    ``facies_code`` (nullable Int64; missing in 1,132 rows). ``df.attrs`` holds
    ``units`` (column -> unit), ``source`` and ``licence``. The field is layered:
    vertical ranges of ~20 m against > 1 km horizontally, with a vertical trend
    to remove before a stationary fit.
    """
    with data_path("oilsands.csv").open("r") as fh:
        df = pd.read_csv(fh, dtype={"drillhole": np.int64, "facies_code": "Int64"})
    df.attrs.update(
        units=dict(OILSANDS_UNITS),
        source="pygeostat==1.2.0, pygeostat/data/example_data/oilsands.dat",
        licence="MIT (Copyright (c) 2025 Center for Computational Geostatistics); "
        "see aniso_gp/data/LICENSE-pygeostat.txt",
    )
    return df


def laminated_needle() -> Volume:
    """Electron-tomography crop of a laminated needle, 32 x 14 x 14 voxels of 6.72 nm.

    A filtered back-projection of the HAADF-STEM tilt series shipped in
    ``etspy==1.3.0`` (NIST, public domain), cropped inside the needle and binned
    2x2x2 (``data/scripts/make_laminated_needle.py``). Axis 0 runs along the
    needle (the tilt axis), axis 1 across it in the image plane, axis 2 along
    the beam at zero tilt. Three lamina interfaces cross axis 0, so the
    laminae's normal lies close to axis 0 (about 114 nm period). Values are FBP
    intensities in arbitrary units; spacing and origin are in nm.
    """
    with data_path("laminated_needle.npy").open("rb") as fh:
        arr = np.load(fh, allow_pickle=False)
    return Volume(
        density=arr.astype(np.float64),
        spacing=(NEEDLE_VOXEL_NM,) * 3,
        origin=NEEDLE_ORIGIN_NM,
        units="nm",
        value_units="FBP intensity (arbitrary units)",
    )


def polymer_fibres() -> Volume:
    """X-ray micro-CT of a polymer fibre scaffold, a 48^3 crop of 8-bit grey values.

    From the quanfima repository's ``polymer3d_8bit_128x128x128.raw`` (MIT; block
    ``[40:88, 0:48, 40:88]``, ``data/scripts/make_polymer_fibres.py``). Thin fibres
    (correlation lengths of 1.4 to 5 voxels) run mostly along array axis 1. The voxel
    size is not documented upstream, so the units are voxels.
    """
    with data_path("polymer_fibres.npy").open("rb") as fh:
        arr = np.load(fh, allow_pickle=False)
    return Volume(density=arr.astype(np.float64), spacing=1.0, units="voxel",
                  value_units="grey value (8-bit)")
