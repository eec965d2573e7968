r"""Orientation summaries of posterior draws of a 3-D anisotropic metric.

Everything here is a pure function of arrays of posterior draws (NumPy in, NumPy
or pandas out); nothing samples, nothing imports NumPyro, ArviZ or matplotlib.

Inputs and conventions
----------------------
* ``metric_draws`` (S, 3, 3): draws of ``M = R diag(l^-2) R^T`` (docs/design.md 2).
* ``lengthscale_draws`` (S, 3): canonical length-scales, sorted descending, so
  "axis 1" is the longest and "axis 3" the shortest in every draw.
* ``axes_draws`` (S, 3, 3): the matching principal directions as **columns**,
  ``axes_draws[s, :, i]`` belongs to ``lengthscale_draws[s, i]`` (what
  :func:`aniso_gp.so3.principal_axes` returns). Their signs are arbitrary.
* Coordinates: x = East, y = North, z = Up.

Principal directions are *axes*, not vectors: ``v`` and ``-v`` are the same
direction. All averaging is therefore done on the orientation tensor
:math:`T = \frac1S \sum_s v_s v_s^T`, which is blind to the sign of each draw,
and all angles are axial angles :math:`\arccos|v \cdot w|` (``so3.axial_angle``).

Leading dimensions of the draws (e.g. ``(chain, draw, ...)``) are flattened.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from aniso_gp import so3

# The so3 routines are run jitted: called eagerly, every jnp primitive inside
# them compiles separately for each new number of draws (~0.3-1.4 s on 2
# cores), while one jitted program per shape costs ~0.1 s.
_principal_axes = jax.jit(so3.principal_axes)
_axial_angle = jax.jit(so3.axial_angle)
_relative_frobenius = jax.jit(so3.relative_frobenius)
_affine_invariant = jax.jit(so3.affine_invariant)
_log_euclidean = jax.jit(so3.log_euclidean)
_spd_log = jax.jit(lambda M: so3._sym_fn(M, jnp.log))
_spd_exp = jax.jit(lambda M: so3._sym_fn(M, jnp.exp))

AXIS_LABELS = ("axis 1 (longest)", "axis 2 (intermediate)", "axis 3 (shortest)")

# Relative tolerance below which two unit-vector components count as zero when
# choosing the representative end of an exactly horizontal axis.
_TIE_TOL = 1e-12

# A pair of sorted length-scales counts as "not distinguishable" when the lower
# end of the credible interval of their ratio is below 1 + _RATIO_TOL: a 5 %
# difference in correlation length is below what a few hundred noisy points
# resolve, and the rotation mixing the two axes then barely changes the field.
_RATIO_TOL = 0.05

# An axis whose credible cone is wider than this many degrees is reported as
# weakly identified even when the length-scale ratios are resolved: a posterior
# spread of +-30 deg is too wide to read a direction from, and it is what a
# near-equal pair looks like once the prior keeps the ratio away from 1.
CONE_LIMIT_DEG = 30.0


# --------------------------------------------------------------------------- #
# input coercion                                                              #
# --------------------------------------------------------------------------- #
def _array(x, name: str, tail: tuple[int, ...]) -> np.ndarray:
    """Coerce to float64 with trailing shape ``tail``, flatten leading dims, check finite."""
    if hasattr(x, "to_numpy"):  # pandas / xarray
        x = x.to_numpy()
    arr = np.asarray(x, dtype=np.float64)
    k = len(tail)
    if arr.ndim < k or arr.shape[arr.ndim - k :] != tail:
        raise ValueError(
            f"`{name}` must have shape (S, {', '.join(map(str, tail))}); got {arr.shape}"
        )
    arr = arr.reshape((-1,) + tail)
    if arr.shape[0] == 0:
        raise ValueError(f"`{name}` holds no draws")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return arr


def _unit_vectors(v, name: str = "v") -> np.ndarray:
    """(..., 3) -> (S, 3) unit vectors; a zero vector has no direction and is an error."""
    v = _array(v, name, (3,))
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError(f"`{name}` contains zero vectors, which have no direction")
    return v / norm


def _unit_vector(v, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != (3,):
        raise ValueError(f"`{name}` must have shape (3,); got {arr.shape}")
    return _unit_vectors(arr[None], name)[0]


def _level(level: float, name: str) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"`{name}` must lie strictly between 0 and 1; got {level}")
    return level


def _positive_lengthscales(lengthscale_draws) -> np.ndarray:
    l = _array(lengthscale_draws, "lengthscale_draws", (3,))
    if np.any(l <= 0):
        raise ValueError("`lengthscale_draws` must be strictly positive")
    if np.any(np.diff(l, axis=-1) > 0):
        # Every identifiability rule below compares neighbours in sorted order.
        raise ValueError(
            "`lengthscale_draws` must be sorted descending in every draw (canonical "
            "labelling, so3.canonicalize / so3.principal_axes)"
        )
    return l


# --------------------------------------------------------------------------- #
# metrics -> principal axes                                                   #
# --------------------------------------------------------------------------- #
def axes_from_metrics(metric_draws) -> tuple[np.ndarray, np.ndarray]:
    """Principal length-scales and directions of each metric draw.

    Args:
        metric_draws: (S, 3, 3) symmetric positive-definite matrices.

    Returns:
        lengthscale_draws: (S, 3), ``l_i = lambda_i^{-1/2}`` sorted descending.
        axes_draws: (S, 3, 3), unit principal directions as columns matching
            ``lengthscale_draws``, ``det = +1``, signs otherwise arbitrary.

    A thin checked wrapper on :func:`aniso_gp.so3.principal_axes` (vectorised
    over draws by ``eigh``).
    """
    M = _array(metric_draws, "metric_draws", (3, 3))
    # eigh reads one triangle only, so an asymmetric input would be silently
    # misread; a symmetric-indefinite one would give NaN length-scales.
    scale = np.linalg.norm(M, axis=(-2, -1))
    if np.any(np.linalg.norm(M - np.swapaxes(M, -1, -2), axis=(-2, -1)) > 1e-8 * scale):
        raise ValueError("`metric_draws` must be symmetric")
    if np.any(np.linalg.eigvalsh(M)[..., 0] <= 0):
        raise ValueError("`metric_draws` must be positive definite")
    l, V = _principal_axes(M)
    return np.asarray(l, dtype=np.float64), np.asarray(V, dtype=np.float64)


# --------------------------------------------------------------------------- #
# axial statistics                                                            #
# --------------------------------------------------------------------------- #
def lower_hemisphere(v) -> np.ndarray:
    """Representative end of each axis, pointing down (z <= 0); (..., 3) -> (..., 3).

    Geology plots and reports the downward end of a line. For an exactly
    horizontal axis (``|z| <= 1e-12 |v|``) the end with x > 0 is taken (trend in
    [0, 180)), and for an axis along y the end with y > 0 (trend 0), so the
    choice is unique. The tolerance only absorbs round-off on exactly
    horizontal input; a genuinely tiny downward z is kept.
    """
    v = np.asarray(v, dtype=np.float64)
    tol = _TIE_TOL * np.linalg.norm(v, axis=-1)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    # The first component that is not zero decides which end is kept.
    key = np.where(np.abs(z) > tol, -z, np.where(np.abs(x) > tol, x, y))
    return v * np.where(key < 0, -1.0, 1.0)[..., None]


def _orientation_tensor(u: np.ndarray) -> np.ndarray:
    return u.T @ u / u.shape[0]


def orientation_tensor_eigen(v) -> np.ndarray:
    r"""Eigenvalues of the orientation tensor of unit axes, sorted descending.

    .. math:: T = \frac{1}{S}\sum_s \hat v_s \hat v_s^T,\qquad
              e_1 \ge e_2 \ge e_3 \ge 0,\quad e_1 + e_2 + e_3 = 1.

    ``v`` (S, 3) is normalised first, so only directions count, and ``T`` is the
    same for ``v`` and ``-v``. Concentration measures: a tight cluster has
    ``e1 -> 1``; a girdle (axes spread in a plane, e.g. two axes swapping
    labels) has ``e1 ~ e2 ~ 1/2``; uniformly random axes have ``e_i ~ 1/3``.
    Returns (3,).
    """
    u = _unit_vectors(v)
    return np.linalg.eigvalsh(_orientation_tensor(u))[::-1]


def mean_axis(v) -> np.ndarray:
    """Mean axial direction of unit vectors ``v`` (S, 3) -> (3,), sign-blind.

    The principal eigenvector of the orientation tensor ``T = mean(v v^T)``:
    the axis ``m`` maximising ``mean((v . m)^2)``. Unlike the arithmetic mean of
    ``v``, it does not cancel when draws carry random signs. Returned as a unit
    vector in the lower hemisphere (:func:`lower_hemisphere`). When the top two
    eigenvalues are close (see :func:`orientation_tensor_eigen`) it is not
    well defined.
    """
    u = _unit_vectors(v)
    _, W = np.linalg.eigh(_orientation_tensor(u))
    return lower_hemisphere(W[:, -1])


def axial_angles(v, axis) -> np.ndarray:
    """Axial angles in degrees between each row of ``v`` (S, 3) and ``axis`` (3,); (S,)."""
    u = _unit_vectors(v)
    m = _unit_vector(axis, "axis")
    return np.asarray(_axial_angle(u, m[None, :]), dtype=np.float64)


def cone_half_angle(v, mean, level: float = 0.95) -> float:
    """Half-angle in degrees of the credible cone of an axis.

    The ``level`` quantile of the axial angles ``arccos |v_s . m|`` between the
    draws ``v`` (S, 3) and the mean axis ``m`` (3,): a fraction ``level`` of the
    draws lies within that angle of ``m``. Sign-blind, so it can never exceed
    90 degrees.
    """
    level = _level(level, "level")
    return float(np.quantile(axial_angles(v, mean), level))


def trend_plunge(v) -> tuple[np.ndarray, np.ndarray]:
    """Geological trend and plunge of axes, in degrees; (..., 3) -> two (...) arrays.

    With x = East, y = North, z = Up and the downward end ``d`` of the axis
    (:func:`lower_hemisphere`):

    * plunge = atan2(-d_z, |(d_x, d_y)|) in [0, 90]: angle below horizontal;
    * trend = atan2(d_x, d_y) mod 360 in [0, 360): azimuth of ``d``'s horizontal
      projection, clockwise from North. Vertical axes have no trend; 0 is returned.

    ``v`` and ``-v`` give the same answer; ``v`` need not be unit length.
    ``atan2`` keeps full precision near horizontal and vertical, where ``arcsin``
    and ``arccos`` lose it.
    """
    v = np.asarray(v, dtype=np.float64)
    if v.shape[-1:] != (3,):
        raise ValueError(f"`v` must have shape (..., 3); got {v.shape}")
    if np.any(np.linalg.norm(v, axis=-1) == 0):
        raise ValueError("`v` contains zero vectors, which have no direction")
    # Adding +0.0 turns -0.0 into +0.0 (here and on plunge below): atan2 then
    # gives trend 0, not 180, for a vertical axis and plunge 0, not -0, for a
    # horizontal one.
    d = lower_hemisphere(v) + 0.0
    horizontal = np.hypot(d[..., 0], d[..., 1])
    plunge = np.degrees(np.arctan2(-d[..., 2], horizontal)) + 0.0
    trend = np.degrees(np.arctan2(d[..., 0], d[..., 1])) % 360.0
    # -0.0 % 360 is 0, but a tiny negative azimuth rounds to exactly 360.0.
    trend = np.where(trend >= 360.0, 0.0, trend)
    return trend, plunge


# --------------------------------------------------------------------------- #
# label switching                                                             #
# --------------------------------------------------------------------------- #
_PERMUTATIONS = np.array(list(itertools.permutations(range(3))))  # (6, 3)


def align_axes(axes_draws, reference_axes) -> tuple[np.ndarray, np.ndarray]:
    """Relabel and sign-align each draw's axes to a reference frame.

    Why: the canonical labelling names axes by *sorted length-scale*. When two
    length-scales are close, their order flips from draw to draw, so "axis 1"
    is sometimes one physical direction and sometimes the perpendicular one.
    The draws of that label then form a girdle, and their mean axis and cone
    describe the label switching, not the posterior of a direction. Labelling
    by *direction* instead (matching each draw to ``reference_axes``) removes
    the switching. The well-separated axis never switches, so its mean axis
    and cone are the same either way, and the plane spanned by a near-equal
    pair is identified regardless of labels.

    Caution: when a pair is truly unidentified (see
    :func:`identifiability_notes`) the aligned directions are conditional on
    the reference you chose; aligning makes them look concentrated without
    adding information. Use it to compare with a known truth or to display
    draws, not to claim that such axes are resolved.

    Args:
        axes_draws: (S, 3, 3), directions as columns.
        reference_axes: (3, 3), reference directions as columns (e.g. the truth,
            or the mean axes of a well-identified fit).

    Returns:
        aligned: (S, 3, 3), ``aligned[s, :, i] = ±axes_draws[s, :, perm[s, i]]``,
            the column permutation maximising ``sum_i |ref_i . v_perm(i)|`` (all 6
            permutations are tried), each column's sign chosen so that its dot
            product with ``ref_i`` is >= 0. These are axes, not a rotation: the
            determinant may be -1.
        perm: (S, 3) int, the permutation used; apply it to the length-scales with
            ``np.take_along_axis(lengthscale_draws, perm, axis=1)``.
    """
    V = _array(axes_draws, "axes_draws", (3, 3))
    ref = np.asarray(reference_axes, dtype=np.float64)
    if ref.shape != (3, 3):
        raise ValueError(f"`reference_axes` must have shape (3, 3); got {ref.shape}")
    # C[s, i, j] = |ref_i . v_j| for reference column i and draw column j.
    C = np.abs(np.einsum("ki,skj->sij", ref, V))
    scores = C[:, np.arange(3)[None, :], _PERMUTATIONS].sum(-1)  # (S, 6)
    perm = _PERMUTATIONS[np.argmax(scores, axis=1)]  # (S, 3)
    aligned = np.take_along_axis(V, perm[:, None, :], axis=2)
    dots = np.einsum("ki,ski->si", ref, aligned)
    return aligned * np.where(dots < 0, -1.0, 1.0)[:, None, :], perm


# --------------------------------------------------------------------------- #
# identifiability                                                             #
# --------------------------------------------------------------------------- #
def _interval(x: np.ndarray, interval: float) -> tuple[np.ndarray, np.ndarray]:
    tail = 0.5 * (1.0 - interval)
    return np.quantile(x, tail, axis=0), np.quantile(x, 1.0 - tail, axis=0)


def _folded_ratio_threshold(interval: float) -> float:
    r"""``log(lo) / log(hi)`` of the sorted ratio when the unsorted interval just touches 1.

    Sorted draws give ``r = l_i / l_{i+1} >= 1`` by construction: the posterior
    of ``log r`` is folded at 0. If the unsorted log-ratio were
    ``N(mu, s^2)`` with its ``interval`` interval just reaching 0 (``mu = z s``,
    ``z`` the normal quantile), the folded interval ``[lo, hi]`` has
    ``log lo / log hi`` equal to this value (0.0725 at 90 %), independent of
    ``s``; a smaller value means the folded posterior piles up against 1 the
    way an unsorted one straddling 1 would.
    """
    z = stats.norm.ppf(0.5 * (1.0 + interval))
    folded = stats.foldnorm(z)
    tail = 0.5 * (1.0 - interval)
    return float(folded.ppf(tail) / folded.ppf(1.0 - tail))


def _ratio_report(l: np.ndarray, i: int, j: int, interval: float):
    """Interval of ``l_i / l_j`` and whether it is compatible with 1 (see identifiability_notes)."""
    lo, hi = _interval(l[:, i] / l[:, j], interval)
    near_one = lo < 1.0 + _RATIO_TOL
    folded = np.log(lo) < _folded_ratio_threshold(interval) * np.log(hi)
    return float(lo), float(hi), bool(near_one or folded)


def _pct(interval: float) -> str:
    return f"{100 * interval:g}%"


def _extents(extent, n: int = 3) -> np.ndarray | None:
    if extent is None:
        return None
    e = np.broadcast_to(np.asarray(extent, dtype=np.float64), (n,))
    if np.any(~np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"`extent` must be positive and finite; got {extent!r}")
    return e


def _analyse(lengthscale_draws, interval: float, extent):
    """Shared core of identifiability_notes and axis_notes."""
    l = _positive_lengthscales(lengthscale_draws)
    interval = _level(interval, "interval")
    pairs = {(i, j): _ratio_report(l, i, j, interval) for i, j in ((0, 1), (1, 2), (0, 2))}
    ext = _extents(extent)
    long = []
    if ext is not None:
        med = np.median(l, axis=0)
        lo, _ = _interval(l, interval)
        long = [(k, med[k], lo[k], ext[k]) for k in range(3) if med[k] > ext[k]]
    return l, interval, pairs, long


def identifiability_notes(lengthscale_draws, interval: float = 0.9, extent=None,
                          fixed_axes: bool = False) -> list[str]:
    """Plain-words warnings about what the length-scale posterior cannot resolve.

    Rule for a sorted neighbouring pair (i, i+1): the pair is *not
    distinguishable* when the ``interval`` equal-tailed credible interval
    ``[lo, hi]`` of ``r = l_i / l_{i+1}`` is compatible with ``r = 1``. Because
    the draws are sorted, ``r >= 1`` always and "the interval includes 1" can
    never hold literally, so two checks stand in for it:

    1. ``lo < 1.05``: the two length-scales may differ by less than 5 %;
    2. ``log lo < c * log hi`` with ``c`` from :func:`_folded_ratio_threshold`
       (0.0725 at 90 %): a diffuse posterior that straddles equality, folded at
       1 by sorting, has its lower end pinned near 1 relative to its width
       even when ``lo`` exceeds 1.05.

    Consequence, in words: when axes i and i+1 are not distinguishable,
    rotations about the third axis leave the field (almost) unchanged, so the
    two directions are not identified, only the plane they span. When both
    neighbouring pairs and ``l1/l3`` are compatible with 1, the field is close
    to isotropic and no direction is identified.

    ``extent`` (optional): size of the sampled domain, a scalar or (3,) per
    principal axis in the units of the length-scales. An axis whose posterior
    median length-scale exceeds it is flagged: beyond the domain the data see
    an almost linear field along that direction, the likelihood is flat and the
    upper tail is the prior's, so only the lower bound is informed.

    ``fixed_axes``: the kernel's axes are the coordinate axes (ARD). No rotation
    is estimated, so an indistinguishable pair only leaves open which of the two
    coordinate axes carries the longer length-scale; the notes say that instead.

    Returns a list of sentences, empty when nothing needs saying.
    """
    l, interval, pairs, long = _analyse(lengthscale_draws, interval, extent)
    pct = _pct(interval)
    (lo12, hi12, eq12), (lo23, hi23, eq23), (lo13, hi13, eq13) = (
        pairs[0, 1],
        pairs[1, 2],
        pairs[0, 2],
    )
    notes = []
    if eq12 and eq23 and eq13:
        what = ("the coordinate axes' length-scales are compatible with one another" if fixed_axes
                else "no direction is identified")
        notes.append(
            f"the field is close to isotropic: {what} (length-scale "
            f"ratio l1/l3 {pct} interval [{lo13:.2f}, {hi13:.2f}] is compatible with 1)"
        )
    elif eq12 and eq23:
        notes.append(
            f"axes 1, 2 and 3 are not distinguishable pairwise: length-scale ratios l1/l2 "
            f"{pct} interval [{lo12:.2f}, {hi12:.2f}] and l2/l3 [{lo23:.2f}, {hi23:.2f}] are "
            f"compatible with 1 (although l1/l3 [{lo13:.2f}, {hi13:.2f}] is not); "
            + ("the ordering of the coordinate axes by length-scale is not identified"
               if fixed_axes else "no principal direction is identified individually")
        )
    else:
        for (a, b, c), (lo, hi, eq) in (((1, 2, 3), pairs[0, 1]), ((2, 3, 1), pairs[1, 2])):
            if not eq:
                continue
            consequence = (
                "the kernel's axes are the coordinate axes, so only which of the two carries "
                "the longer length-scale is unresolved" if fixed_axes else
                f"rotation about axis {c} is unidentified, so the directions of axes {a} and "
                f"{b} are not meaningful, only the plane they span")
            notes.append(
                f"axes {a} and {b} are not distinguishable: length-scale ratio l{a}/l{b} "
                f"{pct} interval [{lo:.2f}, {hi:.2f}] is compatible with 1; {consequence}"
            )
    for k, med, lo, ext in long:
        notes.append(
            f"axis {k + 1} is longer than the sampled domain: only a lower bound "
            f"(about {lo:.3g}) is informed by the data; posterior median {med:.3g} "
            f"exceeds the extent {ext:.3g}"
        )
    return notes


def axis_notes(lengthscale_draws, interval: float = 0.9, extent=None,
               fixed_axes: bool = False) -> list[str]:
    """One plain-words note per principal axis (3 strings, "" when the axis is fine).

    Same rules (and ``fixed_axes``) as :func:`identifiability_notes`, phrased for
    the row of that axis in :func:`orientation_table`.
    """
    l, interval, pairs, long = _analyse(lengthscale_draws, interval, extent)
    pct = _pct(interval)
    eq12, eq23, eq13 = pairs[0, 1][2], pairs[1, 2][2], pairs[0, 2][2]
    unresolved = ("which coordinate axis it is, is not identified" if fixed_axes
                  else "direction not identified")
    parts: list[list[str]] = [[], [], []]
    if eq12 and eq23:
        what = "close to isotropic" if eq13 else "not distinguishable from the neighbouring axes"
        for k in range(3):
            parts[k].append(f"{what}: {unresolved}")
    else:
        for i, j in ((0, 1), (1, 2)):
            lo, hi, eq = pairs[i, j]
            if not eq:
                continue
            for a, b in ((i, j), (j, i)):
                where = ("" if fixed_axes
                         else f", only the plane of axes {i + 1} and {j + 1}")
                parts[a].append(
                    f"not distinguishable from axis {b + 1} (l{i + 1}/l{j + 1} {pct} interval "
                    f"[{lo:.2f}, {hi:.2f}]): {unresolved}{where}"
                )
    for k, med, lo, ext in long:
        parts[k].append(
            f"longer than the sampled domain: only a lower bound (about {lo:.3g}); "
            f"median {med:.3g} exceeds the extent {ext:.3g}"
        )
    return ["; ".join(p) for p in parts]


# --------------------------------------------------------------------------- #
# the table                                                                   #
# --------------------------------------------------------------------------- #
def orientation_table(
    lengthscale_draws,
    axes_draws,
    interval: float = 0.9,
    cone_level: float = 0.95,
    extent=None,
    cone_limit_deg: float = CONE_LIMIT_DEG,
    fixed_axes: bool = False,
) -> pd.DataFrame:
    """One row per principal axis: length-scale, direction, trend/plunge, cone, note.

    Args:
        lengthscale_draws: (S, 3) canonical length-scales, sorted descending.
        axes_draws: (S, 3, 3) matching directions as columns.
        interval: mass of the equal-tailed length-scale interval (and of the
            ratio intervals behind the notes).
        cone_level: level of the credible cone (:func:`cone_half_angle`).
        extent: optional domain size: a scalar, or (3,) bounding-box side lengths
            along x, y, z. For a box, the extent along a unit direction ``d`` is
            the width of its projection, ``sum_i |d_i| L_i``; that is what each
            axis's length-scale is compared against.
        cone_limit_deg: an axis with a wider cone is noted as weakly identified
            (:func:`cone_notes`).
        fixed_axes: the kernel's axes are the coordinate axes (ARD): the notes say
            which coordinate axis is unresolved instead of which direction, and no
            cone notes are made (a wide cone there is label switching between
            coordinate axes, which the length-scale notes already report).

    Returns:
        DataFrame indexed by "axis 1 (longest)", "axis 2 (intermediate)",
        "axis 3 (shortest)" with columns ``l_median, l_lo, l_hi, dir_x, dir_y,
        dir_z, trend_deg, plunge_deg, cone<level>_deg`` (``cone95_deg`` by default)
        and ``note``. ``df.attrs["notes"]`` holds :func:`identifiability_notes` and
        the sentences of :func:`cone_notes`.

    Axes are labelled by sorted length-scale (no relabelling); where a pair is
    not distinguishable the note says so and its directions and cones mostly
    reflect label switching (see :func:`align_axes`).
    """
    l = _positive_lengthscales(lengthscale_draws)
    V = _array(axes_draws, "axes_draws", (3, 3))
    if V.shape[0] != l.shape[0]:
        raise ValueError(
            f"`lengthscale_draws` has {l.shape[0]} draws but `axes_draws` has {V.shape[0]}"
        )
    interval = _level(interval, "interval")
    cone_level = _level(cone_level, "cone_level")

    dirs = np.stack([mean_axis(V[:, :, k]) for k in range(3)])  # (3, 3), rows
    cones = [cone_half_angle(V[:, :, k], dirs[k], cone_level) for k in range(3)]
    trend, plunge = trend_plunge(dirs)
    axis_extent = None
    if extent is not None:
        box = np.asarray(extent, dtype=np.float64)
        if box.ndim == 0:
            axis_extent = _extents(box)
        elif box.shape == (3,):
            axis_extent = np.abs(dirs) @ _extents(box)
        else:
            raise ValueError(f"`extent` must be a scalar or shape (3,); got {box.shape}")
    lo, hi = _interval(l, interval)
    notes = axis_notes(l, interval, axis_extent, fixed_axes)
    overall = identifiability_notes(l, interval, axis_extent, fixed_axes)
    skip = [fixed_axes or (bool(n) and "distinguishable" in n) for n in notes]
    wide_axes, wide_notes = cone_notes(cones, l, interval, cone_level, cone_limit_deg, skip)
    notes = ["; ".join(filter(None, pair)) for pair in zip(notes, wide_axes, strict=True)]
    table = pd.DataFrame(
        {
            "l_median": np.median(l, axis=0),
            "l_lo": lo,
            "l_hi": hi,
            "dir_x": dirs[:, 0],
            "dir_y": dirs[:, 1],
            "dir_z": dirs[:, 2],
            "trend_deg": trend,
            "plunge_deg": plunge,
            f"cone{100 * cone_level:g}_deg": cones,
            "note": notes,
        },
        index=pd.Index(AXIS_LABELS, name="axis"),
    )
    table.attrs["notes"] = overall + wide_notes
    return table


def cone_notes(cones, lengthscale_draws, interval: float, cone_level: float,
               limit_deg: float = CONE_LIMIT_DEG, skip=(False, False, False)):
    """Notes for axes whose credible cone is wider than ``limit_deg``.

    The length-scale rule (:func:`identifiability_notes`) reads only the ratio
    posterior, which a prior can push away from 1; the cones read the directions
    themselves. When two axes are wide and the third is not, the plane they span
    is determined and the rotation about the third axis only weakly. Axes marked
    in ``skip`` already carry a length-scale note. Returns ``(per_axis, sentences)``:
    three strings ("" when fine) and a list of whole sentences.
    """
    l = _positive_lengthscales(lengthscale_draws)
    pct, cpct = _pct(interval), _pct(cone_level)
    wide = [c > limit_deg and not s for c, s in zip(cones, skip, strict=True)]
    per_axis, sentences = ["", "", ""], []
    for i, j in ((0, 1), (1, 2), (0, 2)):
        k = 3 - i - j
        if wide[i] and wide[j] and cones[k] <= limit_deg:
            lo, hi = _interval(l[:, i] / l[:, j], interval)
            ratio = f"l{i + 1}/l{j + 1} {pct} interval [{lo:.2f}, {hi:.2f}]"
            for a in (i, j):
                per_axis[a] = (f"weakly identified: {cpct} cone {cones[a]:.0f} deg; only the "
                               f"plane of axes {i + 1} and {j + 1} is well determined ({ratio})")
            sentences.append(
                f"axes {i + 1} and {j + 1} are weakly identified: their {cpct} credible cones "
                f"({cones[i]:.0f} and {cones[j]:.0f} deg) exceed {limit_deg:g} deg while axis "
                f"{k + 1}'s is {cones[k]:.0f} deg, so the plane they span is determined but the "
                f"rotation about axis {k + 1} only weakly ({ratio})")
            wide[i] = wide[j] = False
    for a in range(3):
        if wide[a]:
            per_axis[a] = f"weakly identified: {cpct} cone {cones[a]:.0f} deg"
            sentences.append(f"axis {a + 1} is weakly identified: its {cpct} credible cone "
                             f"({cones[a]:.0f} deg) exceeds {limit_deg:g} deg")
    return per_axis, sentences


# --------------------------------------------------------------------------- #
# errors against a known truth                                                #
# --------------------------------------------------------------------------- #
def _check_spd(M: np.ndarray, name: str) -> None:
    if np.any(np.linalg.eigvalsh(M)[..., 0] <= 0):
        raise ValueError(f"`{name}` must be positive definite")


def log_euclidean_mean(metric_draws) -> np.ndarray:
    r"""Log-Euclidean mean ``expm(mean_s logm M_s)`` of SPD draws (S, 3, 3) -> (3, 3).

    The Fréchet mean under the log-Euclidean distance. It is always SPD (an
    elementwise median or mean of entries need not be: the median of each entry
    comes from different draws), it depends on the draws only through ``M``
    (so it is blind to the 24 labellings), it commutes with rotations
    ``M -> Q M Q^T`` and with scaling, and its length-scales are geometric
    means, matching a log-normal posterior on ``l``.
    """
    M = _array(metric_draws, "metric_draws", (3, 3))
    _check_spd(M, "metric_draws")
    log_mean = np.asarray(_spd_log(M)).mean(axis=0)
    log_mean = 0.5 * (log_mean + log_mean.T)  # symmetric up to round-off; make it exact
    return np.asarray(_spd_exp(log_mean), dtype=np.float64)


def metric_errors(metric_draws, truth_metric, estimator: str = "log_euclidean") -> dict:
    """Distances between a posterior point estimate of the metric and the truth.

    Args:
        metric_draws: (S, 3, 3) SPD draws.
        truth_metric: (3, 3) SPD.
        estimator: ``"log_euclidean"`` (default, :func:`log_euclidean_mean`) or
            ``"median"`` (elementwise median; rejected if it is not SPD).

    Returns:
        dict of floats (docs/design.md 2), computed by :mod:`aniso_gp.so3`:
        ``relative_frobenius`` ``|M_hat - M|_F / |M|_F``, ``affine_invariant``
        ``|log(M^-1/2 M_hat M^-1/2)|_F`` and ``log_euclidean``
        ``|log M_hat - log M|_F``. Only scalars, so it can extend a table row;
        the estimate itself is :func:`log_euclidean_mean`.
    """
    truth = np.asarray(truth_metric, dtype=np.float64)
    if truth.shape != (3, 3):
        raise ValueError(f"`truth_metric` must have shape (3, 3); got {truth.shape}")
    _check_spd(truth, "truth_metric")
    if estimator == "log_euclidean":
        est = log_euclidean_mean(metric_draws)
    elif estimator == "median":
        est = np.median(_array(metric_draws, "metric_draws", (3, 3)), axis=0)
        _check_spd(est, "elementwise median of metric_draws")
    else:
        raise ValueError(f"`estimator` must be 'log_euclidean' or 'median'; got {estimator!r}")
    return {
        "relative_frobenius": float(_relative_frobenius(truth, est)),
        "affine_invariant": float(_affine_invariant(truth, est)),
        "log_euclidean": float(_log_euclidean(truth, est)),
    }


def axis_errors(axes_draws, truth_axes) -> np.ndarray:
    """Axial angle in degrees between each posterior mean axis and the true axis; (3,).

    ``axes_draws`` (S, 3, 3) and ``truth_axes`` (3, 3) both hold directions as
    columns ordered by descending length-scale, so column i of the truth is
    compared with :func:`mean_axis` of column i of the draws. Signs are
    irrelevant. For a pair that is not distinguishable the two errors are not
    meaningful (see :func:`align_axes`).
    """
    V = _array(axes_draws, "axes_draws", (3, 3))
    truth = np.asarray(truth_axes, dtype=np.float64)
    if truth.shape != (3, 3):
        raise ValueError(f"`truth_axes` must have shape (3, 3); got {truth.shape}")
    means = np.stack([mean_axis(V[:, :, k]) for k in range(3)])
    return np.asarray(_axial_angle(means, truth.T), dtype=np.float64)
