r"""Figures of anisotropy results: stereonets, metric ellipsoids, length-scale
densities, volume slices, trace and rank plots.

Matplotlib only, through its object API: each function builds a fresh
``matplotlib.figure.Figure`` (no pyplot, so nothing is registered in global
state, nothing leaks, and any backend, Agg included, can save it) and returns it.

Conventions: coordinates are x = East, y = North, z = Up. Principal directions
are the *columns* of a (3, 3) matrix, ordered like the length-scales sorted
descending ("long", "mid", "short"); one colour per axis throughout
(:data:`AXIS_COLOURS`). Directions are axial: v and -v are the same axis.

Lower-hemisphere equal-area (Schmidt) projection: an axis is first turned to
point down (``u <= 0``), then a unit vector ``v = (e, n, u)`` maps to

.. math:: P(v) = \frac{(e, n)}{\sqrt{1 - u}},

which is Lambert's azimuthal equal-area projection about the downward vertical,
scaled so the horizontal (primitive) circle has radius 1: the angle ``theta``
from the vertical maps to radius ``sqrt(2) sin(theta / 2)``, and every area on the
hemisphere maps to half its size (Jacobian ``1/2``). A vertical axis plots at
the centre, a horizontal one on the primitive circle, at its trend (azimuth
clockwise from North).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from scipy import stats

from aniso_gp import _validation as check

AXIS_LABELS = ("long", "mid", "short")
AXIS_COLOURS = ("tab:blue", "tab:green", "tab:red")


# --------------------------------------------------------------------------- #
# Spherical geometry (pure functions on arrays)
# --------------------------------------------------------------------------- #
def lower_hemisphere(v) -> np.ndarray:
    """Unit axes (..., 3) turned to point down: ``v / |v|``, negated where ``v_z > 0``."""
    v = np.asarray(v, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(v[..., 2:3] > 0, -v, v)


def equal_area(v) -> np.ndarray:
    """Lower-hemisphere equal-area projection of axes (..., 3) -> points (..., 2) in the unit disk.

    ``(x, y) = (e, n) / sqrt(1 - u)`` after :func:`lower_hemisphere`; x is East, y North.
    """
    w = lower_hemisphere(v)
    # 1 - u >= 1 on the lower hemisphere: no division hazard.
    return w[..., :2] / np.sqrt(1.0 - w[..., 2:3])


def trend_plunge(v) -> np.ndarray:
    """Trend (azimuth clockwise from North, [0, 360)) and plunge (down from horizontal,
    [0, 90]) in degrees of axes (..., 3) -> (..., 2)."""
    w = lower_hemisphere(v)
    trend = np.degrees(np.arctan2(w[..., 0], w[..., 1])) % 360.0
    plunge = np.degrees(np.arcsin(np.clip(-w[..., 2], -1.0, 1.0)))
    return np.stack([trend, plunge], axis=-1)


def axial_angle_deg(v, w) -> np.ndarray:
    """Angle in degrees between axes, blind to sign: ``arccos |v.w| / (|v| |w|)``; (..., 3)."""
    v = np.asarray(v, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    c = np.abs(np.sum(v * w, -1)) / (np.linalg.norm(v, axis=-1) * np.linalg.norm(w, axis=-1))
    return np.degrees(np.arccos(np.clip(c, 0.0, 1.0)))


def mean_axis(v) -> np.ndarray:
    """Mean of axial data (S, 3): the leading eigenvector of ``T = mean(v v^T)``, pointing down.

    Sign-blind, unlike the mean of the vectors, which two antipodal draws cancel.
    """
    v = np.asarray(v, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    _, vecs = np.linalg.eigh(v.T @ v / len(v))
    return lower_hemisphere(vecs[:, -1])


def cone_angle(v, axis, level: float = 0.95) -> float:
    """Credible cone (degrees) of axis draws (S, 3) about ``axis`` (3,): the ``level``
    quantile of their axial angles to it."""
    return float(np.quantile(axial_angle_deg(v, np.asarray(axis)[None, :]), level))


def small_circle(axis, angle_deg: float, n: int = 241) -> np.ndarray:
    """``n`` points (n, 3) on the unit sphere at ``angle_deg`` from ``axis`` (a cone's rim)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    # Any unit vector not parallel to a seeds an orthonormal basis (a, p, q).
    seed = np.eye(3)[np.argmin(np.abs(a))]
    p = np.cross(a, seed)
    p /= np.linalg.norm(p)
    q = np.cross(a, p)
    phi = np.linspace(0.0, 2.0 * np.pi, n)
    c = np.radians(angle_deg)
    return np.cos(c) * a + np.sin(c) * (np.cos(phi)[:, None] * p + np.sin(phi)[:, None] * q)


def _projected_curve(points3: np.ndarray) -> np.ndarray:
    """Project a curve on the sphere; where it crosses the horizontal, the lower-hemisphere
    flip sends it to the antipodal side, so break the line there (NaN) instead of joining."""
    xy = equal_area(points3)
    flipped = points3[:, 2] > 0
    out = [xy[0]]
    for i in range(1, len(xy)):
        if flipped[i] != flipped[i - 1]:
            out.append([np.nan, np.nan])
        out.append(xy[i])
    return np.asarray(out)


# --------------------------------------------------------------------------- #
# Stereonet
# --------------------------------------------------------------------------- #
def _axes_stack(a, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    want = "(S, 3, 3)" if ndim == 3 else "(3, 3)"
    if arr.ndim != ndim or arr.shape[-2:] != (3, 3):
        raise ValueError(
            f"`{name}` must have shape {want} (directions as columns); got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    if np.any(np.linalg.norm(arr, axis=-2) == 0):
        raise ValueError(f"`{name}` contains a zero-length direction")
    return arr


def _draw_net(ax) -> None:
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(t), np.sin(t), color="black", lw=1.0)
    # Light circles of equal plunge (30 and 60 degrees): radius sqrt(2) sin(theta/2).
    for plunge in (30.0, 60.0):
        r = np.sqrt(2.0) * np.sin(np.radians(90.0 - plunge) / 2.0)
        ax.plot(r * np.cos(t), r * np.sin(t), color="0.85", lw=0.6, zorder=0)
    for x, y, lab, ha, va in (
        (0, 1.04, "N", "center", "bottom"),
        (1.04, 0, "E", "left", "center"),
        (0, -1.04, "S", "center", "top"),
        (-1.04, 0, "W", "right", "center"),
    ):
        ax.text(x, y, lab, ha=ha, va=va, fontsize=9)
    ax.plot([-0.03, 0.03], [0, 0], color="black", lw=0.8)
    ax.plot([0, 0], [-0.03, 0.03], color="black", lw=0.8)
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-1.15, 1.15)
    ax.set_aspect("equal")
    ax.axis("off")


def stereonet(
    axes_draws,
    mean_axes=None,
    cone_deg=None,
    truth_axes=None,
    labels=AXIS_LABELS,
    title: str | None = None,
    level: float = 0.95,
    max_draws: int = 2000,
) -> Figure:
    """Lower-hemisphere equal-area stereonet of posterior principal-axis draws.

    Args:
        axes_draws:
            (S, 3, 3): draw s has its principal directions as columns, ordered like
            the length-scales sorted descending.
        mean_axes:
            (3, 3) mean directions as columns; by default the axial mean of the draws
            of each axis (:func:`mean_axis`).
        cone_deg:
            a number or 3 numbers, the credible cone half-angle of each axis in
            degrees; by default the ``level`` (95%) quantile of the draws' axial
            angles to the mean (:func:`cone_angle`). Drawn as the projected small
            circle.
        truth_axes:
            (3, 3) true directions as columns, drawn as black-edged stars.
        max_draws:
            at most this many draws are plotted (evenly thinned); the means and
            cones use all of them.
    """
    draws = _axes_stack(axes_draws, "axes_draws", 3)
    if len(labels) != 3:
        raise ValueError(f"`labels` must name the 3 axes; got {labels!r}")
    means = None if mean_axes is None else _axes_stack(mean_axes, "mean_axes", 2)
    truth = None if truth_axes is None else _axes_stack(truth_axes, "truth_axes", 2)
    if cone_deg is not None:
        cones = np.broadcast_to(np.asarray(cone_deg, dtype=np.float64), (3,))
        if not np.all((cones >= 0) & (cones <= 90)):
            raise ValueError(f"`cone_deg` must be in [0, 90] degrees; got {cone_deg!r}")
    thin = draws[:: max(1, int(np.ceil(len(draws) / max_draws)))]

    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.add_subplot()
    _draw_net(ax)
    for i in range(3):
        col = AXIS_COLOURS[i]
        xy = equal_area(thin[:, :, i])
        ax.scatter(xy[:, 0], xy[:, 1], s=4, color=col, alpha=0.25, lw=0, label=f"{labels[i]} draws")
        m = mean_axis(draws[:, :, i]) if means is None else lower_hemisphere(means[:, i])
        c = cone_angle(draws[:, :, i], m, level) if cone_deg is None else cones[i]
        mxy = equal_area(m)
        ax.scatter(*mxy, s=60, color=col, edgecolor="black", zorder=4, label=f"{labels[i]} mean")
        rim = _projected_curve(small_circle(m, c))
        ax.plot(rim[:, 0], rim[:, 1], color=col, lw=1.4, zorder=3)
        if truth is not None:
            txy = equal_area(truth[:, i])
            ax.scatter(*txy, s=140, marker="*", color=col, edgecolor="black", zorder=5)
    handles, names = ax.get_legend_handles_labels()
    if truth is not None:
        handles.append(
            ax.scatter([], [], s=140, marker="*", color="white", edgecolor="black", label="truth")
        )
        names.append("truth")
    ax.legend(
        handles,
        names,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
        title=f"cone: {level:.0%}" if cone_deg is None else "cone: given",
        title_fontsize=8,
    )
    ax.set_title(title or "Principal axes (lower hemisphere, equal area)", fontsize=10)
    return fig


# --------------------------------------------------------------------------- #
# Metric ellipsoid
# --------------------------------------------------------------------------- #
def _spd(M, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(length-scales descending (3,), directions as columns (3, 3)) of an SPD metric."""
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (3, 3) or not np.all(np.isfinite(M)):
        raise ValueError(f"`{name}` must be a finite (3, 3) matrix; got shape {M.shape}")
    if not np.allclose(M, M.T, rtol=1e-8, atol=1e-12 * np.abs(M).max()):
        raise ValueError(f"`{name}` must be symmetric")
    lam, V = np.linalg.eigh(0.5 * (M + M.T))
    if lam[0] <= 0:
        raise ValueError(f"`{name}` must be positive definite; eigenvalues {lam.tolist()}")
    # eigh sorts eigenvalues ascending, so lam^-1/2 is already descending and
    # column j of V stays paired with l[j].
    return lam**-0.5, V


def ellipsoid(M, ax=None, truth=None, labels=AXIS_LABELS, units: str = "") -> Figure:
    r"""The metric ellipsoid ``{x : x^T M x = 1}`` with its principal axes.

    Its semi-axes are the length-scales ``l_i = lambda_i^{-1/2}`` along the
    eigenvectors ``v_i`` of ``M`` (the distance at which the correlation has
    fallen to ``phi(1)``). ``truth`` (3, 3), another metric, is overlaid as a
    black wireframe. ``ax`` must be a 3-D Axes (``projection="3d"``); by
    default a new figure is made. Returns the figure.
    """
    l, V = _spd(M, "M")
    lt = Vt = None
    if truth is not None:
        lt, Vt = _spd(truth, "truth")
    if ax is None:
        fig = Figure(figsize=(5.5, 5.0), layout="constrained")
        ax = fig.add_subplot(projection="3d")
    elif getattr(ax, "name", None) != "3d":
        raise ValueError("`ax` must be a 3-D Axes (fig.add_subplot(projection='3d'))")
    fig = ax.get_figure()
    u, w = np.meshgrid(np.linspace(0, 2 * np.pi, 41), np.linspace(0, np.pi, 21))
    sphere = np.stack([np.cos(u) * np.sin(w), np.sin(u) * np.sin(w), np.cos(w)], -1)
    # x = V diag(l) s maps the unit sphere onto x^T M x = 1.
    surf = sphere @ (V * l).T
    ax.plot_surface(*np.moveaxis(surf, -1, 0), color="0.6", alpha=0.25, lw=0)
    for i in range(3):
        vi = V[:, i] * l[i]
        ax.plot(
            *np.stack([-vi, vi], 1),
            color=AXIS_COLOURS[i],
            lw=2.5,
            label=f"{labels[i]} = {l[i]:.3g} {units}".rstrip(),
        )
    if truth is not None:
        tsurf = sphere @ (Vt * lt).T
        ax.plot_wireframe(
            *np.moveaxis(tsurf, -1, 0),
            color="black",
            lw=0.4,
            alpha=0.5,
            rstride=2,
            cstride=4,
            label="truth",
        )
    r = max(l.max(), lt.max() if lt is not None else 0.0)
    for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        set_lim(-r, r)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("East")
    ax.set_ylabel("North")
    ax.set_zlabel("Up")
    ax.legend(loc="upper left", fontsize=8)
    return fig


# --------------------------------------------------------------------------- #
# Length-scale densities
# --------------------------------------------------------------------------- #
def lengthscale_densities(
    draws_by_kernel: Mapping, truth=None, labels=AXIS_LABELS, units: str = ""
) -> Figure:
    """Posterior densities of the sorted length-scales, one panel per axis, one curve per kernel.

    ``draws_by_kernel``: ``{kernel name: (S, 3) length-scale draws}``. Each draw
    is sorted descending first, so panels compare "long", "mid", "short" across
    kernels whatever their labelling (ARD's per-coordinate scales included).
    Densities are Gaussian KDEs of ``log l`` (length-scales are positive and
    skewed), shown against ``l`` on a log axis. ``truth`` (3,) draws vertical lines.
    """
    if not isinstance(draws_by_kernel, Mapping) or not draws_by_kernel:
        raise ValueError("`draws_by_kernel` must be a non-empty dict {kernel: (S, 3) draws}")
    logs = {}
    for name, d in draws_by_kernel.items():
        a = np.asarray(d, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 1:
            raise ValueError(f"draws for kernel {name!r} must have shape (S, 3); got {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"draws for kernel {name!r} must be finite and positive")
        logs[name] = np.log(-np.sort(-a, axis=1))
    t = None
    if truth is not None:
        t = np.sort(np.asarray(truth, dtype=np.float64).ravel())[::-1]
        if t.shape != (3,) or np.any(t <= 0):
            raise ValueError(f"`truth` must be 3 positive length-scales; got {truth!r}")
    fig = Figure(figsize=(10.0, 3.4), layout="constrained")
    axs = fig.subplots(1, 3)
    for i, ax in enumerate(axs):
        all_i = np.concatenate([v[:, i] for v in logs.values()])
        lo, hi = all_i.min(), all_i.max()
        if t is not None:
            lo, hi = min(lo, np.log(t[i])), max(hi, np.log(t[i]))
        pad = 0.1 * (hi - lo) + 0.05
        grid = np.linspace(lo - pad, hi + pad, 256)
        for k, (name, lg) in enumerate(logs.items()):
            x = lg[:, i]
            col = f"C{k}"
            if len(x) > 2 and np.std(x) > 1e-12:
                ax.plot(np.exp(grid), stats.gaussian_kde(x)(grid), color=col, label=name)
            else:  # a point mass: a KDE is undefined
                ax.axvline(np.exp(x.mean()), color=col, label=name)
        if t is not None:
            ax.axvline(t[i], color="black", ls="--", lw=1, label="truth")
        ax.set_xscale("log")
        # Plain numbers at 1-2-5 steps: the default 3x10^0 style labels are unreadable.
        ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{labels[i]} length-scale {f'({units})' if units else ''}".strip())
        ax.set_ylabel("density of log l")
    axs[0].legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- #
# Orthogonal slices of volumes
# --------------------------------------------------------------------------- #
def _as_grid(v, name: str):
    """(values (n0, n1, n2), spacing or None) of an array or a Volume-like object."""
    if hasattr(v, "density") and hasattr(v, "spacing"):
        return np.asarray(v.density, dtype=np.float64), np.asarray(v.spacing, dtype=np.float64)
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"volume {name!r} must be 3-D; got shape {a.shape}")
    return a, None


def slices(volumes, index=None, spacing=None, cmap="viridis", units: str = "") -> Figure:
    """Orthogonal slices through volumes side by side: one row per volume, one column per plane.

    ``volumes``: an (n0, n1, n2) array or ``Volume``, or a dict of them
    ``{"data": ..., "predictive mean": ..., "predictive sd": ...}``. ``index``
    (i, j, k) picks the planes ``axis0 = i``, ``axis1 = j``, ``axis2 = k``
    (default: the middle of each volume). Extents are physical: ``spacing`` (a
    number or 3) overrides the volumes' own (a Volume's, else 1). ``cmap`` is a
    colormap name or a dict of names by volume. Each row shares one colour scale
    and colour bar, so the three planes of a volume are comparable.
    """
    vols = dict(volumes) if isinstance(volumes, Mapping) else {"volume": volumes}
    if not vols:
        raise ValueError("`volumes` is empty")
    fig = Figure(figsize=(10.5, 3.1 * len(vols)), layout="constrained")
    axs = np.atleast_2d(fig.subplots(len(vols), 3))
    for r, (name, v) in enumerate(vols.items()):
        a, own = _as_grid(v, name)
        s = np.broadcast_to(
            np.asarray(
                spacing if spacing is not None else (own if own is not None else 1.0),
                dtype=np.float64,
            ),
            (3,),
        )
        if np.any(s <= 0):
            raise ValueError(f"`spacing` must be positive; got {s.tolist()}")
        idx = tuple(n // 2 for n in a.shape) if index is None else tuple(int(i) for i in index)
        if len(idx) != 3 or any(not 0 <= i < n for i, n in zip(idx, a.shape, strict=True)):
            raise ValueError(f"`index` {index!r} is outside volume {name!r} of shape {a.shape}")
        planes = [(a[idx[0]], 1, 2), (a[:, idx[1]], 0, 2), (a[:, :, idx[2]], 0, 1)]
        finite = a[np.isfinite(a)]
        vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        cm = cmap.get(name, "viridis") if isinstance(cmap, Mapping) else cmap
        im = None
        for c, (plane, h, vert) in enumerate(planes):
            ax = axs[r, c]
            # imshow wants (rows = vertical, cols = horizontal): transpose so the
            # later array axis runs horizontally.
            ext = (
                -0.5 * s[vert],
                (a.shape[vert] - 0.5) * s[vert],
                -0.5 * s[h],
                (a.shape[h] - 0.5) * s[h],
            )
            im = ax.imshow(
                plane,
                origin="lower",
                extent=ext,
                cmap=cm,
                vmin=vmin,
                vmax=vmax,
                interpolation="nearest",
            )
            u = f" ({units})" if units else ""
            ax.set_xlabel(f"axis {vert}{u}")
            ax.set_ylabel(f"axis {h}{u}")
            ax.set_title(f"{name}: axis {c} = {idx[c]}", fontsize=9)
        fig.colorbar(im, ax=list(axs[r]), shrink=0.9)
    return fig


# --------------------------------------------------------------------------- #
# Trace and rank plots
# --------------------------------------------------------------------------- #
def trace_rank(draws: Mapping, bins: int = 20) -> Figure:
    """Trace (left) and rank (right) plots of scalar quantities, one row each.

    ``draws``: ``{name: (chains, draws) array}`` of invariants (entries of M,
    sorted length-scales, ...); a 1-D array is one chain. The rank plot ranks
    all draws of a quantity together and histograms each chain's ranks in
    ``bins`` bins: for well-mixed chains every histogram is flat at
    ``draws / bins`` (dashed line); a chain stuck in one mode sits high at one
    end (Vehtari et al. 2021).
    """
    if not isinstance(draws, Mapping) or not draws:
        raise ValueError("`draws` must be a non-empty dict {name: (chains, draws) array}")
    bins = check.integer(bins, "bins", minimum=2)
    fig = Figure(figsize=(9.0, 2.2 * len(draws) + 0.4), layout="constrained")
    axs = np.atleast_2d(fig.subplots(len(draws), 2, gridspec_kw={"width_ratios": (2, 1)}))
    for r, (name, d) in enumerate(draws.items()):
        a = np.asarray(d, dtype=np.float64)
        a = a[None, :] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1] < 2:
            raise ValueError(
                f"draws of {name!r} must have shape (chains, draws >= 2); got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"draws of {name!r} contain NaN or infinite values")
        n_chain, n_draw = a.shape
        ranks = stats.rankdata(a, method="average").reshape(a.shape)
        edges = np.linspace(0.5, a.size + 0.5, int(bins) + 1)
        for c in range(n_chain):
            axs[r, 0].plot(a[c], lw=0.6, alpha=0.8, color=f"C{c}", label=f"chain {c}")
            counts, _ = np.histogram(ranks[c], bins=edges)
            axs[r, 1].stairs(counts, edges, color=f"C{c}", lw=1.2)
        axs[r, 1].axhline(n_draw / bins, color="black", ls="--", lw=0.8)
        axs[r, 0].set_ylabel(name)
        axs[r, 1].set_yticks([])
    axs[-1, 0].set_xlabel("draw")
    axs[-1, 1].set_xlabel("rank (all chains)")
    axs[0, 0].set_title("trace", fontsize=9)
    axs[0, 1].set_title("rank", fontsize=9)
    return fig


# --------------------------------------------------------------------------- #
# Orientation maps (an xarray Dataset from aniso_gp.orientation_map)
# --------------------------------------------------------------------------- #
def _fitted(ds):
    ok = np.asarray(ds["status"].values) == 1
    if not ok.any():
        raise ValueError("the map has no fitted tile to draw")
    return ok


def map_slice(ds, axis: int = 0, index: int | None = None, rank: int = 2, image=None,
              image_extent=None, units: str = "", max_cone: float = 45.0) -> Figure:
    """One lattice slice of an orientation map, a stick glyph per tile.

    The slice holds the tiles with lattice index ``index`` (default: the middle)
    along array ``axis``. Each stick is the tile's ``rank`` axis (2: the short axis)
    projected onto the slice plane, centred on the tile, as long as the tile
    spacing times the projected length (a stick seen end-on is a dot); its colour
    is the axis's 95% credible cone (degrees, clipped at ``max_cone``). Failed
    tiles are grey crosses. ``image``, an optional 2-D section of the volume through
    the slice (rows along the lower in-plane axis), is drawn underneath over
    ``image_extent = (x0, x1, y0, y1)`` (physical; default: the tiles' span).
    """
    import matplotlib
    from matplotlib import cm, colors

    ok = _fitted(ds)
    if axis not in (0, 1, 2) or rank not in (0, 1, 2):
        raise ValueError(f"`axis` and `rank` must be 0, 1 or 2; got {axis!r}, {rank!r}")
    n = ds["status"].shape[axis]
    index = n // 2 if index is None else int(index)
    if not 0 <= index < n:
        raise ValueError(f"`index` must be in [0, {n}); got {index}")
    a, b = (d for d in range(3) if d != axis)  # in-plane axes: plotted as (x, y) = (b, a)
    take = [slice(None)] * 3
    take[axis] = index
    take = tuple(take)
    ca, cb = np.asarray(ds[f"c{a}"].values), np.asarray(ds[f"c{b}"].values)
    step = min(np.diff(ca).min() if ca.size > 1 else np.inf,
               np.diff(cb).min() if cb.size > 1 else np.inf)
    step = 1.0 if not np.isfinite(step) else float(step)
    vec = np.asarray(ds["axis"].values)[take][..., rank, :]  # (na, nb, 3)
    cone = np.asarray(ds["cone"].values)[take][..., rank]
    good = ok[take]
    norm = colors.Normalize(0.0, max_cone)
    cmap = matplotlib.colormaps["plasma_r"]
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    if image is not None:
        img = np.asarray(image, dtype=float)
        half = step / 2.0
        extent = image_extent or (cb.min() - half, cb.max() + half, ca.min() - half,
                                  ca.max() + half)
        ax.imshow(img, cmap="gray", origin="lower", alpha=0.6, extent=extent)
    for i, j in np.ndindex(*good.shape):
        x, y = cb[j], ca[i]
        if not good[i, j]:
            ax.plot(x, y, marker="x", color="0.6", ms=6)
            continue
        u = vec[i, j]
        dx, dy = 0.45 * step * u[b], 0.45 * step * u[a]
        ax.plot([x - dx, x + dx], [y - dy, y + dy], color=cmap(norm(min(cone[i, j], max_cone))),
                lw=3.0, solid_capstyle="round")
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=f"95% cone of the {AXIS_LABELS[rank]} axis (deg)")
    unit = f" ({units})" if units else ""
    ax.set_xlabel(f"coordinate {b}{unit}")
    ax.set_ylabel(f"coordinate {a}{unit}")
    ax.set_aspect("equal")
    ax.set_title(f"{AXIS_LABELS[rank].capitalize()} axis per tile, slice {index} of {n} along "
                 f"axis {axis} (c{axis} = {float(ds[f'c{axis}'].values[index]):.4g} {units})"
                 .replace(" )", ")"), fontsize=10)
    return fig


def map_stereonet(ds, rank: int = 2, title: str | None = None) -> Figure:
    """The tiles' ``rank`` axes (2: short) on a lower-hemisphere equal-area net,
    coloured by their 95% cone. Coordinates (x, y, z) are array axes (0, 1, 2)."""
    from matplotlib import colors

    ok = _fitted(ds)
    v = np.asarray(ds["axis"].values)[ok][:, rank, :]
    cone = np.asarray(ds["cone"].values)[ok][:, rank]
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    _draw_net(ax)
    xy = equal_area(v)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=cone, cmap="plasma_r", s=18, edgecolor="black",
                    lw=0.3, norm=colors.Normalize(0.0, max(45.0, float(np.nanmax(cone)))))
    fig.colorbar(sc, ax=ax, label="95% cone (deg)", shrink=0.8)
    ax.set_title(title or f"{AXIS_LABELS[rank].capitalize()} axes of {int(ok.sum())} tiles",
                 fontsize=10)
    return fig


def map_cone_histogram(ds) -> Figure:
    """Histograms of the tiles' 95% cone half-angles, one per principal axis."""
    ok = _fitted(ds)
    cones = np.asarray(ds["cone"].values)[ok]  # (T, 3)
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 90.0, 31)
    for r in range(3):
        ax.hist(cones[:, r], bins=bins, histtype="step", lw=1.6, color=AXIS_COLOURS[r],
                label=f"{AXIS_LABELS[r]} axis (median {np.median(cones[:, r]):.1f} deg)")
    ax.set_xlabel("95% credible cone half-angle (deg)")
    ax.set_ylabel("tiles")
    ax.legend(fontsize=8)
    return fig


def influence_map(table, units: str = "", top: int = 10) -> Figure:
    """Where the influential observations (or groups) are: plan view (x, y) and an
    x-z section, colour the short axis's change when each is left out, the ``top``
    largest labelled, unreliable estimates (Pareto k > 0.7) ringed in red.

    ``table`` is :func:`aniso_gp.influence.case_deletion`, ``group_deletion`` or
    ``first_order`` (which has no Pareto k: nothing is ringed).
    """
    for col in ("x", "y", "z", "short_axis_change_deg"):
        if col not in table:
            raise ValueError(f"`table` has no column {col!r}: pass the table of "
                             "influence.case_deletion, group_deletion or first_order")
    change = table["short_axis_change_deg"].to_numpy(float)
    bad = (table["unreliable"].to_numpy(bool) if "unreliable" in table
           else np.zeros(len(table), bool))
    order = np.argsort(change)  # the largest drawn last, on top
    unit = f" ({units})" if units else ""
    fig = Figure(figsize=(9.6, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (a, b) in zip(axes, (("x", "y"), ("x", "z")), strict=True):
        u, v = table[a].to_numpy(float), table[b].to_numpy(float)
        sc = ax.scatter(u[order], v[order], c=change[order], cmap="magma_r", s=28,
                        vmin=0.0, vmax=max(float(change.max()), 1e-9), edgecolors="none")
        ax.scatter(u[bad], v[bad], s=70, facecolors="none", edgecolors="red", lw=1.0,
                   label="Pareto k > 0.7 (refit to check)" if bad.any() else None)
        for i in np.argsort(change)[::-1][:top]:
            ax.annotate(str(table.index[i]), (u[i], v[i]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(a + unit)
        ax.set_ylabel(b + unit)
        ax.set_aspect("equal", adjustable="datalim")
    if bad.any():
        axes[0].legend(fontsize=8, loc="best")
    axes[0].set_title("plan view", fontsize=10)
    axes[1].set_title("section", fontsize=10)
    fig.colorbar(sc, ax=axes, label="short-axis change when left out (deg)", shrink=0.85)
    return fig
