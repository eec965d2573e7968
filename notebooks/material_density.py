# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Which way is a material anisotropic? Density volumes with rotated-anisotropy GPs
#
# A density volume from tomography (X-ray CT, electron tomography) of a textured
# material (laminae, fibres) decorrelates fast across the texture and slowly along it.
# A stationary Gaussian process with the metric
# $M = R\,\mathrm{diag}(l^{-2})\,R^\top$ captures that: the columns of the rotation $R$
# are the principal directions and $l$ their correlation lengths. Here we infer
# $(l, R)$ with NUTS and read off, with uncertainty, the orientation of the texture.
#
# Two volumes:
#
# 1. **The nano-brick**, a synthetic laminated volume drawn from the model at a known,
#    deliberately oblique orientation: the rotated kernel should recover it and beat an
#    axis-aligned (ARD) kernel, which cannot represent an oblique metric.
# 2. **The laminated needle**, a real electron-tomography crop (etspy test data, public
#    domain) whose laminae are nearly perpendicular to the needle axis (array axis 0):
#    a *control* where the structure is close to axis-aligned, so ARD should do about as
#    well as the rotated kernel, and the rotated kernel should find axes near the grid.
#
# Set `ANISO_GP_SMOKE=1` to run everything at toy sizes (the test suite does).

# %%
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from aniso_gp import datasets, inference, io, orientation, plots

SMOKE = os.environ.get("ANISO_GP_SMOKE") == "1"
# Toy sizes in smoke mode: the point is to run every cell, not to learn anything.
N_POINTS = 60 if SMOKE else 360
CHAINS = 2
WARMUP, SAMPLES = (60, 60) if SMOKE else (400, 400)
KERNELS = ("rotated", "ard") if SMOKE else ("rotated", "ard", "full")
NEEDLE_KERNELS = ("rotated",) if SMOKE else KERNELS  # each fit compiles a sampler: keep smoke short
SEED = 0


def _reports_dir() -> Path:
    """Where figures go: $ANISO_GP_REPORTS, else reports/ (reports/smoke/, git-ignored,
    in smoke mode), relative to the repository root."""
    if os.environ.get("ANISO_GP_REPORTS"):
        return Path(os.environ["ANISO_GP_REPORTS"])
    root = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
    if not (root / "pyproject.toml").exists():  # not run from the repository
        return Path(tempfile.mkdtemp(prefix="aniso_gp_reports_"))
    return root / "reports" / ("smoke" if SMOKE else "")


FIG_DIR = _reports_dir() / "figures" / "material_density"
FIG_DIR.mkdir(parents=True, exist_ok=True)
pd.set_option("display.precision", 3)
pd.set_option("display.width", 140)


def save(fig, name):
    """Write a figure under FIG_DIR and hand it back for display."""
    fig.savefig(FIG_DIR / f"{name}.png", dpi=110)
    return fig


def prepare(volume, n, seed=SEED):
    """Voxels -> points, a reproducible stratified subsample of n, and an 80/20 split."""
    field = volume.to_points()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "kept n of N points": we know
        X, y = io.subsample(field.X, field.y, n, method="stratified", seed=seed)
    return datasets.Field(X, y, truth=volume.truth).split(0.2, seed=seed)


def fit_kernels(train, kernels=KERNELS):
    """One NUTS fit per kernel on the same training points."""
    return {
        k: inference.fit(train.X, train.y, kernel=k, num_chains=CHAINS, num_warmup=WARMUP,
                         num_samples=SAMPLES, seed=SEED, progress=not SMOKE)
        for k in kernels
    }


def show_orientation(fit):
    """The orientation table without the long note column, then the notes in full."""
    table = fit.orientation()
    for note in table.attrs["notes"]:
        print("note:", note)
    return table.drop(columns="note")


print(f"smoke={SMOKE}: N={N_POINTS}, {CHAINS} chains x ({WARMUP} + {SAMPLES}), "
      f"kernels {KERNELS}; figures -> {FIG_DIR}")

# %% [markdown]
# ## 1. The nano-brick: a laminated volume at a known orientation
#
# $24^3$ voxels, length-scales (10, 6, 2) voxels: laminae whose normal is the short
# axis, with two different in-plane scales so that every direction is identifiable.

# %%
brick = datasets.nano_brick(shape=(24, 24, 24), texture="laminated", seed=SEED)
truth = brick.truth
print("true length-scales:", truth.lengthscales)
print("true axes (columns):\n", truth.axes.round(3))
save(plots.slices({"density": brick}, units="voxel"), "brick_data_slices")

# %%
train, test = prepare(brick, N_POINTS)
brick_fits = fit_kernels(train)
show_orientation(brick_fits["rotated"])

# %% [markdown]
# Each row is a principal axis: the median length-scale with its 90% interval, the mean
# direction, its trend (azimuth clockwise from +y) and plunge (down from horizontal), and
# the 95% credible cone around it. The stereonet shows the posterior draws of the three
# axes against the truth (stars).

# %%
rot = brick_fits["rotated"]
table = rot.orientation()
save(plots.stereonet(rot._draws("axes"),
                     mean_axes=table[["dir_x", "dir_y", "dir_z"]].to_numpy().T,
                     cone_deg=table["cone95_deg"].to_numpy(), truth_axes=truth.axes,
                     title="nano-brick: rotated kernel"), "brick_stereonet")

# %%
errors = orientation.axis_errors(rot._draws("axes"), truth.axes)
print("axis errors vs truth (deg):", errors.round(1))
save(plots.ellipsoid(orientation.log_euclidean_mean(rot.metric_draws()), truth=truth.metric,
                     units="voxel"), "brick_ellipsoid")

# %% [markdown]
# **Comparison.** LOO (closed-form GP leave-one-out, PSIS) on the training points, RMSE,
# NLPD and 90% coverage on the 20% held out, and the distance of each kernel's metric to
# the truth. ARD has to approximate an oblique metric with an axis-aligned one.

# %%
brick_cmp = inference.compare(brick_fits, X_test=test.X, y_test=test.y, truth=truth)
brick_cmp[["elpd_loo", "elpd_se", "rmse", "nlpd", "coverage90", "affine_invariant",
           "max_r_hat", "divergences"]]

# %%
save(plots.lengthscale_densities({k: f._draws("lengthscales") for k, f in brick_fits.items()},
                                 truth=truth.lengthscales, units="voxel"),
     "brick_lengthscales")

# %% [markdown]
# ## 2. The laminated needle: a real electron-tomography volume
#
# A $32 \times 14 \times 14$ crop (6.72 nm voxels) of a filtered back-projection of a
# HAADF-STEM tilt series. Axis 0 runs along the needle; the laminae cross it, so their
# normal is close to axis 0 (x in the fitted frame). Intensities are in arbitrary units.

# %%
needle = datasets.laminated_needle()
print(needle.shape, "voxels of", needle.spacing[0], needle.units)
save(plots.slices({"FBP intensity": needle}, units=needle.units), "needle_data_slices")

# %%
n_train, n_test = prepare(needle, N_POINTS)
needle_fits = fit_kernels(n_train, NEEDLE_KERNELS)
show_orientation(needle_fits["rotated"])

# %%
nrot = needle_fits["rotated"]
ntable = nrot.orientation()
save(plots.stereonet(nrot._draws("axes"),
                     mean_axes=ntable[["dir_x", "dir_y", "dir_z"]].to_numpy().T,
                     cone_deg=ntable["cone95_deg"].to_numpy(),
                     title="laminated needle: rotated kernel"), "needle_stereonet")

# %% [markdown]
# How far is each posterior axis from the nearest grid axis? For this nearly axis-aligned
# control the shortest axis (the lamina normal) should sit close to x (array axis 0).

# %%
mean_dirs = ntable[["dir_x", "dir_y", "dir_z"]].to_numpy()
to_grid = np.degrees(np.arccos(np.clip(np.abs(mean_dirs).max(axis=1), 0, 1)))
pd.DataFrame({"nearest grid axis": np.array(list("xyz"))[np.abs(mean_dirs).argmax(axis=1)],
              "angle to it (deg)": to_grid.round(1)}, index=ntable.index)

# %%
needle_cmp = inference.compare(needle_fits, X_test=n_test.X, y_test=n_test.y)
needle_cmp[["elpd_loo", "elpd_se", "elpd_diff", "rmse", "nlpd", "coverage90", "max_r_hat"]]

# %%
save(plots.lengthscale_densities({k: f._draws("lengthscales") for k, f in needle_fits.items()},
                                 units=needle.units), "needle_lengthscales")

# %% [markdown]
# ## 3. What the weak-identifiability notes mean
#
# The rotated kernel describes the field by three length-scales and three directions,
# but the directions are only as well determined as the length-scales are *different*:
#
# * If two length-scales are equal, say $l_1 = l_2$, the correlation is unchanged by any
#   rotation about the third axis. The data then carry **no information** about where
#   axes 1 and 2 point within their plane; only the plane (equivalently its normal, axis
#   3) is identified. The posterior draws of axes 1 and 2 spread around a great circle
#   on the stereonet and their cones are wide. The orientation table says so in its
#   `note` column: *"not distinguishable from axis 2 ... only the plane of axes 1 and 2"*.
# * The rule: the 90% credible interval of the ratio $l_i / l_{i+1}$ is compatible with 1.
#   (Draws are sorted, so the ratio is never below 1; the check is that the interval
#   starts within 5% of 1, or piles up against 1 the way a sorted, diffuse posterior
#   that straddles equality would.)
# * If all three are compatible, the field is nearly isotropic and no direction means
#   anything: report the length-scale, not an orientation.
# * *"Longer than the sampled domain"*: a length-scale exceeding the extent of the data
#   along that axis is only bounded from below; its upper tail is the prior's.
#
# For a laminated material the question is usually the lamina **normal** (the shortest
# axis). It stays well identified even when the two in-plane length-scales are close and
# the in-plane directions are not: read its row, and ignore the in-plane directions when
# their note says they are not distinguishable. Sampler flags (R-hat, ESS, divergences)
# are separate: they say whether the chains have explored the posterior, and are
# computed on label-free invariants (sorted length-scales, metric entries).

# %%
for name, fits in (("nano-brick", brick_fits), ("needle", needle_fits)):
    for k, f in fits.items():
        print(f"{name:10s} {k:8s}", "; ".join(f.diagnostics()["flags"]))

# %% [markdown]
# ## 4. Whole volumes: every voxel of a real micro-CT crop
#
# Sections 1 and 2 fit a few hundred voxels with the exact likelihood, whose cost grows
# as $N^3$. A volume is a regular grid and the kernel is stationary, so the covariance of
# the whole grid has FFT structure: the **debiased spatial Whittle likelihood**
# (`likelihood="whittle"`, the default when `fit` is given a volume) costs
# $O(N \log N)$ per gradient and uses every voxel. It is a pseudo-likelihood (it treats
# Fourier coefficients as independent), so `fit` applies a curvature adjustment that
# makes its intervals honest (`fit.settings["calibration"]`).
#
# The data: a $48^3$ crop of an X-ray micro-CT of a polymer fibre scaffold (quanfima,
# MIT licence; `datasets.polymer_fibres()`), fibres running mostly along array axis 1.
# Side by side: the whole crop with the Whittle likelihood, and a 400-voxel stratified
# subsample with the exact one, both with the defaults (identifiable chart, RBF base: on
# this crop RBF beats Matérn 5/2 by 74 nats of LOO and its axes agree with the kernel-free
# structure tensor; `benchmarks/volume_scaling.py` section 7).

# %%
import time  # noqa: E402

fibres = datasets.polymer_fibres()
if SMOKE:  # a corner of the crop: the point is to run every cell
    fibres = datasets.Volume(density=fibres.density[:16, :16, :16], units="voxel")
N_SUB = 60 if SMOKE else 400
t0 = time.perf_counter()
whole = inference.fit(fibres, kernel="rotated", num_chains=CHAINS, num_warmup=WARMUP,
                      num_samples=SAMPLES, seed=SEED, progress=not SMOKE,
                      num_bootstrap=40 if SMOKE else 200)
t_whole = time.perf_counter() - t0
pts = fibres.to_points()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    Xs, ys = io.subsample(pts.X, pts.y, N_SUB, method="stratified", seed=SEED)
t0 = time.perf_counter()
sub = inference.fit(Xs, ys, kernel="rotated", num_chains=CHAINS, num_warmup=WARMUP,
                    num_samples=SAMPLES, seed=SEED, progress=not SMOKE)
t_sub = time.perf_counter() - t0


def summary_row(f, seconds, what):
    t = f.orientation()
    return {"data": what, "l1": t["l_median"].iloc[0], "l2": t["l_median"].iloc[1],
            "l3": t["l_median"].iloc[2], "cone95 axis 1": t["cone95_deg"].iloc[0],
            "cone95 axis 3": t["cone95_deg"].iloc[2], "wall s": seconds}


side = pd.DataFrame([summary_row(whole, t_whole, f"whole crop ({fibres.density.size} voxels, "
                                 "whittle)"),
                     summary_row(sub, t_sub, f"subsample ({N_SUB} voxels, exact)")])
side  # noqa: B018  (the notebook shows the table)

# %%
axis_gap = orientation.axis_errors(whole.axes_draws(),
                                   orientation.axes_from_metrics(
                                       orientation.log_euclidean_mean(sub.metric_draws())[None]
                                   )[1][0])
print("angle between the two fits' mean axes (deg):", axis_gap.round(1))
print("calibration:", {k: v for k, v in whole.settings["calibration"].items()
                       if k in ("adjusted", "width_factors")})
table_w = whole.orientation()
save(plots.stereonet(whole.axes_draws(),
                     mean_axes=table_w[["dir_x", "dir_y", "dir_z"]].to_numpy().T,
                     cone_deg=table_w["cone95_deg"].to_numpy(),
                     title="polymer fibres: whole crop (Whittle)"), "fibres_stereonet")

# %% [markdown]
# Both describe the same fibres: the long axis (the fibre direction) points along array
# axis 1, and the two fits agree within their cones. Using every voxel narrows the cones
# and the length-scale intervals, in about the time of the subsample fit.

# %%
assert whole.settings["likelihood"] == "whittle" and whole.settings["calibration"]["adjusted"]
assert np.all(np.isfinite(side[["l1", "l2", "l3"]].to_numpy()))
long_axis = table_w[["dir_x", "dir_y", "dir_z"]].to_numpy()[0]
if not SMOKE:
    assert np.argmax(np.abs(long_axis)) == 1, long_axis  # fibres along array axis 1
    assert side["cone95 axis 3"].iloc[0] < side["cone95 axis 3"].iloc[1]
    assert axis_gap[0] < max(side["cone95 axis 1"])

# %% [markdown]
# ## 5. Where does it point? An orientation map
#
# A real sample is not one stationary field: tows cross, fibres bend, laminae fold.
# `orientation_map` cuts a volume into tiles of one shape, fits each with the same
# whole-volume likelihood (MAP plus the calibrated Laplace approximation by default) as
# tasks on a Dask cluster, and returns an xarray Dataset on the lattice of tile
# centres, with the kernel-free structure tensor's short axis beside the GP's. Here a
# patchwork of nano-bricks, each block with its own known orientation. (A file is opened
# lazily with `chunked.open_volume`, so a volume larger than memory maps the same way;
# `store="map.zarr"` makes the map resumable.)

# %%
from distributed import Client, LocalCluster  # noqa: E402

from aniso_gp.orientation_map import orientation_map  # noqa: E402

BLOCKS, BLOCK, TILE = ((2, 1, 1), 16, 16) if SMOKE else ((2, 2, 2), 32, 16)
patch, patch_axes = datasets.patchwork(blocks=BLOCKS, block=BLOCK,
                                       lengthscales=(4.0, 2.5, 1.0), seed=SEED)
# Threads in this process in smoke mode (one compilation, shared with the notebook);
# otherwise one process per core, as `aniso-gp map` uses.
with LocalCluster(n_workers=1 if SMOKE else None, threads_per_worker=1,
                  processes=not SMOKE, dashboard_address=":0") as cluster, \
        Client(cluster) as client:
    omap = orientation_map(patch, tile=TILE, scheduler=client, progress=not SMOKE)
per_block = BLOCK // TILE
short_err = np.array([
    orientation.axial_angles(omap["axis"].values[idx][2][None],
                             patch_axes[tuple(i // per_block for i in idx)][:, 2])[0]
    for idx in np.ndindex(*omap["status"].shape)])
print(f"{short_err.size} tiles; short-axis error: median {np.median(short_err):.1f}, "
      f"max {short_err.max():.1f} deg; structure tensor vs GP: median "
      f"{np.nanmedian(omap['st_angle'].values):.1f} deg")
save(plots.map_slice(omap, axis=2, image=patch.density[:, :, patch.density.shape[2] // 2]),
     "patchwork_map")
save(plots.map_stereonet(omap), "patchwork_stereonet")

# %% [markdown]
# Every tile finds its block's short axis, and its credible cone says how sure it is;
# the stereonet shows one tight cluster per block.

# %%
assert (omap["status"].values == 1).all(), omap["error"].values
assert short_err.max() < 10.0, short_err
