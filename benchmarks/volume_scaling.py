"""Whole volumes with the debiased spatial Whittle likelihood (issue 14).

Sections (``--sections 1,2,...``; all by default):

1. value and value+gradient time of the fit's potential against N = n^3
   (16^3 ... 128^3): log-log slope and the gradient/value ratio;
2. the same likelihood value through the peer package ``debiased-spatial-whittle``
   2.2.0 (numpy < 2, in its own virtual environment that this script makes under
   ``.bench/``), on a case it can express (complete 3-D grid, isotropic squared
   exponential + nugget): values and time ratio, same run;
3. end to end on nano-brick volumes, length-scales (10, 6, 2) voxels: wall time,
   metric error, axis errors;
4. against the exact posterior on complete 12^3 grids: posterior mean metric and
   widths of the 90% intervals of the log length-scales;
5. calibration over replicate 24^3 volumes (complete, or the inscribed cylinder
   of a tomogram): coverage of the 90% intervals of the sorted length-scales and of
   the 90% cone of the short axis, before and after the curvature adjustment;
6. ESS per second against the FITC route on the same ~20,000 voxels;
7. the defaults on a real volume (the shipped polymer-fibre crop): the
   identifiable against the axis-angle chart, RBF against Matern 5/2;
8. the sampling spread of the Whittle (flat, Tukey, Hann tapers) and exact MAP
   estimators over replicate complete 12^3 grids: the efficiency that section 4's
   width ratios should match.

    python benchmarks/volume_scaling.py                      # everything (hours on 2 cores)
    python benchmarks/volume_scaling.py --sections 1,2       # minutes
    python benchmarks/volume_scaling.py --quick --no-append  # smoke (a minute)

Results are printed and appended to ``reports/benchmark-log.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from aniso_gp import datasets, gridded, inference, models, orientation
from aniso_gp.linalg import grid as fft_grid

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "reports" / "benchmark-log.md"
PEER_VENV = ROOT / ".bench" / "peer-venv"
PEER = "debiased-spatial-whittle==2.2.0"
BRICK_L = (10.0, 6.0, 2.0)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": f"{cpu} x {os.cpu_count()} logical cores",
        "devices": ", ".join(str(d) for d in jax.devices()),
        "jax": jax.__version__,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "load average at start": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def median_time(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def log_entry(script: str, argv, info: dict, facts: str, rows: list[dict],
              verdict: str) -> str:
    """One benchmark-log block: heading, command and machine, the table of ``rows``
    (dicts with the same keys), the verdict."""
    name = Path(script).stem
    return "\n".join([
        f"## {name} ({info['date']})", "",
        f"`python benchmarks/{name}.py {' '.join(argv or sys.argv[1:])}`; {info['cpu']}; "
        f"load at start {info['load average at start']}; {facts}", "",
        table(list(rows[0]), [list(r.values()) for r in rows]), "", verdict, ""])


def potential_of(values, spacing=1.0, kernel="rotated", base="rbf",
                 parameterization="identifiable", taper=None):
    """Jitted potential and its value_and_grad for a volume, at the moment start."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    gv = gridded.as_gridded(values, spacing=spacing, taper=taper)
    std = inference.Standardizer.from_grid(gv)
    spec = inference._spec(kernel, base, parameterization, "whittle", models.Priors(), std)
    grid, data, g = gridded.fourier_data(gv, std.x_scale, std.y_mean, std.y_sd)
    ys = np.where(gv.mask, (gv.values - std.y_mean) / std.y_sd, 0.0)
    start = models.unconstrained_start(spec, *gridded.moment_start(
        ys, g, np.asarray(gv.spacing) / std.x_scale))
    flat, unravel = ravel_pytree(start)

    def pot(v):
        return potential_energy(models.gp_model, (None, data), {"spec": spec, "grid": grid},
                                unravel(v))

    return jax.jit(pot), jax.jit(jax.value_and_grad(pot)), flat


def axial_deg(u, v) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(float(np.dot(u, v))), 0.0, 1.0))))


def rel_frobenius(M, T) -> float:
    return float(np.linalg.norm(M - T) / np.linalg.norm(T))


# --------------------------------------------------------------------------- #
# 1. Scaling
# --------------------------------------------------------------------------- #
def _site_gradients(n):
    """Value and gradient in ``A`` of the Whittle log-likelihood of an n^3 grid, with the
    expected periodogram fused (:func:`kernels.folded_on_lags`, as the fit does) and
    unfused (kernel on lags, product, fold: three passes in the pullback)."""
    from aniso_gp import kernels
    from aniso_gp.likelihoods import whittle_loglik

    shape = (n, n, n)
    lags = [jnp.asarray(t) for t in fft_grid.lag_axes(shape, (1.0 / n,) * 3, half=True)]
    c = fft_grid.half_lag_weights(fft_grid.autocorrelation(fft_grid.taper_weights(
        np.ones(shape, bool))))
    rng = np.random.default_rng(0)
    A = jnp.asarray(np.linalg.qr(rng.standard_normal((3, 3)))[0] * np.array([3.0, 6.0, 15.0]))
    I = jnp.asarray(rng.exponential(size=(n, n, n // 2 + 1)))
    w = jnp.asarray(fft_grid.half_spectrum_weights(shape))

    def fused(A):
        return whittle_loglik(jnp.maximum(fft_grid.transform_folded(
            kernels.folded_on_lags(lags, A, c, "rbf")), 0.0) + 0.01, I, w)

    def unfused(A):
        return whittle_loglik(jnp.maximum(fft_grid.expected_periodogram(
            kernels.on_lags(lags, A, 1.0, "rbf"), c), 0.0) + 0.01, I, w)

    return [jax.jit(jax.value_and_grad(f)) for f in (fused, unfused)], A


def bench_scaling(sizes, repeats):
    rows, ns, tv, tg = [], [], [], []
    for n in sizes:
        vol = datasets.nano_brick(shape=(n, n, n), seed=0)
        val, vg, flat = potential_of(vol.density)
        (fused, unfused), A = _site_gradients(n)
        # Rounds alternate the calls so that a noisy stretch of the machine hits all;
        # the median over rounds of each one's median.
        rounds = [(median_time(val, flat, repeats=repeats), median_time(vg, flat, repeats=repeats),
                   median_time(fused, A, repeats=repeats), median_time(unfused, A, repeats=repeats))
                  for _ in range(3)]
        a, b, fu, un = (statistics.median(r[i] for r in rounds) for i in range(4))
        ns.append(n**3)
        tv.append(a)
        tg.append(b)
        rows.append([f"{n}^3", f"{n**3:,}", f"{1e3 * a:.2f}", f"{1e3 * b:.2f}", f"{b / a:.2f}",
                     f"{1e9 * b / n**3:.0f}", f"{1e3 * fu:.2f}", f"{1e3 * un:.2f}",
                     f"{un / fu:.2f}"])
        print(rows[-1], flush=True)
    slope_v = float(np.polyfit(np.log(ns), np.log(tv), 1)[0])
    slope_g = float(np.polyfit(np.log(ns), np.log(tg), 1)[0])
    ratio = max(g / v for g, v in zip(tg, tv, strict=True))
    notes = [f"log-log slope over N: value {slope_v:.2f}, value+gradient {slope_g:.2f} "
             f"(target <= 1.15: {'met' if slope_g <= 1.15 else 'missed'})",
             f"largest value+gradient / value: {ratio:.2f} (target <= 3: "
             f"{'met' if ratio <= 3 else 'missed'})",
             "rotated kernel, identifiable chart, RBF, flat taper; medians over 3 alternating "
             f"rounds of the medians of {repeats} calls after compilation, one process, "
             "single-threaded XLA",
             "last three columns: value + gradient in A of the Whittle log-likelihood alone, "
             "with the kernel, c_g and fold fused in one pullback (the fit's) and unfused "
             "(kernel on lags, product, fold, each with its own pullback), same run"]
    return table(["grid", "N", "value ms", "value+grad ms", "ratio", "ns/voxel (v+g)",
                  "site v+g fused ms", "unfused ms", "unfused / fused"], rows), notes


# --------------------------------------------------------------------------- #
# 2. The peer package, in its own environment
# --------------------------------------------------------------------------- #
PEER_SCRIPT = r"""
import json, sys, time
import numpy as np
from debiased_spatial_whittle.grids.base import RectangularGrid
from debiased_spatial_whittle.models.univariate import SquaredExponentialModel, NuggetModel
from debiased_spatial_whittle.inference.periodogram import Periodogram, ExpectedPeriodogram
from debiased_spatial_whittle.inference.likelihood import DebiasedWhittle
cfg = json.loads(sys.argv[1])
z = np.load(cfg["data"])
grid = RectangularGrid(tuple(z.shape))
model = NuggetModel(SquaredExponentialModel(rho=cfg["rho"], sigma=cfg["sigma"]),
                    nugget=cfg["nugget"])
per = Periodogram()
dbw = DebiasedWhittle(per, ExpectedPeriodogram(grid, per))
value = float(dbw(z, model))
ts = []
for _ in range(cfg["repeats"]):
    t = time.perf_counter(); dbw(z, model); ts.append(time.perf_counter() - t)
print(json.dumps({"value": value, "time": sorted(ts)[len(ts) // 2]}))
"""


def peer_python() -> Path:
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {PEER_VENV} with {PEER} (numpy < 2) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", PEER], check=True)
    return py


def bench_peer(sizes, repeats):
    py = peer_python()
    rows, notes = [], []
    for n in sizes:
        rho, sigma, nugget = 2.5, 1.3, 0.1
        M = np.eye(3) / rho**2
        z = datasets.stationary_rbf_grid((n, n, n), (1.0,) * 3, M, (1 - nugget) * sigma**2,
                                         np.random.default_rng(n))
        z = z + math.sqrt(nugget) * sigma * np.random.default_rng(n + 1).standard_normal(z.shape)
        path = ROOT / ".bench" / f"peer_{n}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, z)
        cfg = {"data": str(path), "rho": rho, "sigma": sigma, "nugget": nugget,
               "repeats": repeats}
        proc = subprocess.run([str(py), "-c", PEER_SCRIPT, json.dumps(cfg)], check=True,
                              capture_output=True, text=True)
        peer = json.loads(proc.stdout.strip().splitlines()[-1])
        # Ours, in the data's units (no standardisation): flat taper on the complete grid.
        gv = gridded.as_gridded(z)
        gdata, J, _ = gridded.fourier_data(gv, 1.0, 0.0, 1.0)
        A = jnp.eye(3) / rho

        @jax.jit
        def ours(J, gdata, s, e, A):
            return models.whittle_site(gdata, 0.0, s, e, A, "rbf").log_prob(J)

        args = (J, gdata, math.sqrt(1 - nugget) * sigma, math.sqrt(nugget) * sigma, A)
        t_ours = median_time(ours, *args, repeats=repeats)
        v = float(ours(*args))
        N = n**3
        # Ours is -N/2 (peer's mean + log 2 pi): a sum with the Whittle 1/2, not a mean.
        mapped = -0.5 * N * (peer["value"] + math.log(2 * math.pi))
        rel = abs(v - mapped) / abs(mapped)
        rows.append([f"{n}^3", f"{peer['value']:.12f}", f"{v:.6f}", f"{mapped:.6f}",
                     f"{rel:.1e}", f"{1e3 * peer['time']:.1f}", f"{1e3 * t_ours:.2f}",
                     f"{peer['time'] / t_ours:.1f}"])
        print(rows[-1], flush=True)
    notes = [f"peer: {PEER} (numpy backend) in {PEER_VENV.relative_to(ROOT)}; value "
             "= mean over frequencies of log Ibar + I / Ibar",
             "ours: -1/2 sum over frequencies of log(2 pi Ibar) + I / Ibar, so ours = "
             "-N/2 (peer + log 2 pi); agreement target 1e-8 relative",
             "model: isotropic squared exponential, rho 2.5 voxels, sigma 1.3, nugget "
             "share 0.1, complete grid, no taper; timings exclude our compilation"]
    return table(["grid", "peer value", "ours", "-N/2 (peer + log 2pi)", "rel. diff",
                  "peer ms", "ours ms", "peer / ours"], rows), notes


# --------------------------------------------------------------------------- #
# 3. End to end
# --------------------------------------------------------------------------- #
def brick_fit(n, chains, warmup, samples, seed=0, **kw):
    vol = datasets.nano_brick(shape=(n, n, n), seed=seed)
    t = time.perf_counter()
    f = inference.fit(vol, kernel="rotated", num_chains=chains, num_warmup=warmup,
                      num_samples=samples, seed=seed, progress=False, **kw)
    return vol, f, time.perf_counter() - t


def bench_end_to_end(sizes, chains, warmup, samples, parameterization):
    rows = []
    for n in sizes:
        vol, f, wall = brick_fit(n, chains, warmup, samples, parameterization=parameterization)
        d = f.diagnostics()
        err = orientation.axis_errors(f.axes_draws(), vol.truth.axes)
        M = orientation.log_euclidean_mean(f.metric_draws())
        rf = rel_frobenius(np.asarray(M), vol.truth.metric)
        l = f.orientation()["l_median"].to_numpy()
        rows.append([f"{n}^3", f"{wall:.0f}", f"{f.settings['wall_time_s']:.0f}",
                     f"{d['mean_steps_per_draw']:.1f}", f"{d['max_r_hat']:.3f}",
                     f"{d['min_ess_bulk']:.0f}", f"{d['divergences']}",
                     ", ".join(f"{v:.2f}" for v in l), f"{rf:.3f}",
                     ", ".join(f"{e:.1f}" for e in err)])
        print(rows[-1], flush=True)
    notes = [f"nano-brick (laminated), true length-scales {BRICK_L} voxels, noise sd 0.1; "
             f"rotated kernel, {parameterization} chart, RBF, {chains} chains x ({warmup} + "
             f"{samples}), curvature-adjusted",
             "targets: 64^3 <= 15 min and 32^3 <= 3 min on 2 cores; relative Frobenius error "
             "of the metric (log-Euclidean posterior mean) < 0.1 and short axis < 2 deg at "
             "64^3"]
    return table(["grid", "total s", "NUTS s", "steps/draw", "max R-hat", "min ESS",
                  "div.", "l median (voxel)", "rel. Frobenius", "axis errors deg"],
                 rows), notes


# --------------------------------------------------------------------------- #
# 4. Against the exact posterior
# --------------------------------------------------------------------------- #
def _log_l_widths(f, draws="lengthscales"):
    l = f.lengthscale_draws()
    q = np.quantile(np.log(l), [0.05, 0.95], axis=0)
    return q[1] - q[0]


def bench_exact(n, seeds, chains, warmup, samples, lengthscales, taper):
    rows = []
    for seed in seeds:
        vol = datasets.nano_brick(shape=(n, n, n), lengthscales=lengthscales, seed=seed)
        X, y = vol.to_points().X, vol.to_points().y
        common = dict(kernel="rotated", parameterization="identifiable", num_chains=chains,
                      num_warmup=warmup, num_samples=samples, seed=seed, progress=False)
        t = time.perf_counter()
        fw = inference.fit(vol, taper=taper, **common)
        tw = time.perf_counter() - t
        t = time.perf_counter()
        fe = inference.fit(X, y, likelihood="exact", **common)
        te = time.perf_counter() - t
        Mw = np.asarray(orientation.log_euclidean_mean(fw.metric_draws()))
        Me = np.asarray(orientation.log_euclidean_mean(fe.metric_draws()))
        ww, we = _log_l_widths(fw), _log_l_widths(fe)
        rows.append([seed, f"{rel_frobenius(Mw, Me):.3f}",
                     ", ".join(f"{a / b:.2f}" for a, b in zip(ww, we, strict=True)),
                     f"{tw:.0f}", f"{te:.0f}",
                     ", ".join(f"{e:.1f}" for e in orientation.axis_errors(
                         fw.axes_draws(), vol.truth.axes)),
                     ", ".join(f"{e:.1f}" for e in orientation.axis_errors(
                         fe.axes_draws(), vol.truth.axes))])
        print(rows[-1], flush=True)
    notes = [f"complete {n}^3 grids ({n**3:,} voxels), nano-brick with length-scales "
             f"{lengthscales} voxels, noise sd 0.1; rotated, identifiable, RBF; {chains} x "
             f"({warmup} + {samples}); Whittle taper {taper or 'none'}, adjusted",
             "targets: posterior mean metrics within 0.1 relative Frobenius; widths of the "
             "90% intervals of the sorted log length-scales within a factor 1.5"]
    return table(["seed", "rel. Frobenius (means)", "width ratio W/E (l1, l2, l3)",
                  "Whittle s", "exact s", "axis err. W", "axis err. E"], rows), notes


# --------------------------------------------------------------------------- #
# 5. Calibration
# --------------------------------------------------------------------------- #
def _covered(l_draws, axes_draws, truth, level=0.9):
    lo, hi = np.quantile(l_draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    l_ok = (truth.lengthscales >= lo) & (truth.lengthscales <= hi)
    short = axes_draws[:, :, 2]
    mean = orientation.mean_axis(short)
    cone = orientation.cone_half_angle(short, mean, level)
    return np.append(l_ok, axial_deg(mean, truth.axes[:, 2]) <= cone)


def cylinder_mask(n) -> np.ndarray:
    """The cylinder inscribed in an n^3 grid along axis 0 (a tomography field of view)."""
    c = (np.arange(n) - (n - 1) / 2) / (n / 2)
    disc = c[:, None] ** 2 + c[None, :] ** 2 <= 1.0
    return np.broadcast_to(disc, (n, n, n)).copy()


def bench_calibration(n, replicates, chains, warmup, samples, lengthscales, taper,
                      mask=None, first=0):
    before, after, factors, times, log_ratio = [], [], [], [], []
    for r in range(first, first + replicates):
        vol = datasets.nano_brick(shape=(n, n, n), lengthscales=lengthscales, seed=1000 + r)
        data = vol if mask is None else vol.density
        t = time.perf_counter()
        f = inference.fit(data, kernel="rotated", parameterization="identifiable",
                          num_chains=chains, num_warmup=warmup, num_samples=samples,
                          seed=r, progress=False, taper=taper, mask=mask)
        times.append(time.perf_counter() - t)
        raw = np.asarray(f.idata.posterior["A_std_unadjusted"])
        raw = raw.reshape(-1, 3, 3)
        _, l_raw, _, ax_raw = (np.asarray(v) for v in inference._canonical(
            jnp.asarray(raw), f.std.x_scale))
        before.append(_covered(l_raw, ax_raw, vol.truth))
        after.append(_covered(f.lengthscale_draws(), f.axes_draws(), vol.truth))
        factors.append(max(f.settings["calibration"]["width_factors"]))
        med = np.median(f.lengthscale_draws(), axis=0)
        log_ratio.append(np.log(med / vol.truth.lengthscales))
        print(f"replicate {r}: before {before[-1].astype(int)}, after {after[-1].astype(int)},"
              f" median l {np.round(med, 2)}, width factor {factors[-1]:.2f}, "
              f"{times[-1]:.0f} s", flush=True)
    b, a = np.mean(before, axis=0), np.mean(after, axis=0)
    names = ["l1 (longest)", "l2", "l3 (shortest)", "short-axis 90% cone"]
    se = math.sqrt(0.9 * 0.1 / replicates)
    rows = [[nm, f"{x:.3f}", f"{y:.3f}", "yes" if 0.80 <= y <= 0.97 else "no"]
            for nm, x, y in zip(names, b, a, strict=True)]
    notes = [f"{replicates} replicate {n}^3 nano-bricks (length-scales {lengthscales} voxels, "
             f"noise sd 0.1, seeds {1000 + first}+), rotated identifiable RBF, {chains} x "
             f"({warmup} + {samples}), Whittle taper {taper or 'none'}, "
             + ("complete grid" if mask is None else
                f"mask: {mask.mean():.1%} of the voxels observed"),
             f"nominal 0.90; Monte Carlo sd of a coverage at 0.9 with {replicates} "
             f"replicates: {se:.3f}; target after adjustment: every coverage in [0.80, 0.97]",
             "mean (sd) over replicates of log(posterior median / truth) of the sorted "
             "length-scales: " + ", ".join(f"{m:+.3f} ({v:.3f})" for m, v in zip(
                 np.mean(log_ratio, axis=0), np.std(log_ratio, axis=0, ddof=1), strict=True)),
             f"median largest width factor of the adjustment {np.median(factors):.2f}; median "
             f"fit time {np.median(times):.0f} s"]
    return table(["quantity", "coverage before", "coverage after", "in [0.80, 0.97]"],
                 rows), notes


# --------------------------------------------------------------------------- #
# 6. ESS/s against FITC on the same voxels
# --------------------------------------------------------------------------- #
def bench_fitc(shape, chains, warmup, samples, landmarks):
    vol = datasets.nano_brick(shape=shape, lengthscales=(4.0, 2.5, 1.2), seed=0)
    common = dict(kernel="rotated", parameterization="identifiable", num_chains=chains,
                  num_warmup=warmup, num_samples=samples, seed=0, progress=False)
    rows = []
    t = time.perf_counter()
    fw = inference.fit(vol, **common)
    tw = time.perf_counter() - t
    pts = vol.to_points()
    t = time.perf_counter()
    ff = inference.fit(pts.X, pts.y, likelihood="fitc", num_landmarks=landmarks, **common)
    tf = time.perf_counter() - t
    for name, f, total in (("whittle", fw, tw), ("fitc", ff, tf)):
        d = f.diagnostics()
        err = orientation.axis_errors(f.axes_draws(), vol.truth.axes)
        rows.append([name, f"{total:.0f}", f"{f.settings['wall_time_s']:.0f}",
                     f"{d['min_ess_bulk']:.0f}", f"{d['min_ess_bulk'] / total:.2f}",
                     f"{d['mean_steps_per_draw']:.1f}",
                     ", ".join(f"{e:.1f}" for e in err)])
        print(rows[-1], flush=True)
    ratio = (fw.diagnostics()["min_ess_bulk"] / tw) / (ff.diagnostics()["min_ess_bulk"] / tf)
    notes = [f"nano-brick {shape} ({math.prod(shape):,} voxels), length-scales (4, 2.5, 1.2) "
             f"voxels; rotated identifiable RBF, {chains} x ({warmup} + {samples}); FITC with "
             f"{landmarks} landmarks on all voxels as points",
             f"min bulk ESS per second of total time, Whittle / FITC: {ratio:.0f}x"]
    return table(["likelihood", "total s", "NUTS s", "min ESS", "ESS/s (total)",
                  "steps/draw", "axis errors deg"], rows), notes


# --------------------------------------------------------------------------- #
# 7. Defaults on a real volume
# --------------------------------------------------------------------------- #
def bench_defaults(chains, warmup, samples):
    vol = datasets.polymer_fibres()
    rows = []
    ref = gridded.moment_start(*_standardised(vol))[3]
    ref_axes = np.linalg.eigh(ref)[1]  # ascending eigenvalues of M: longest axis first
    # Gradient structure tensor E[grad f grad f^T] (central differences), proportional
    # to M for a stationary field: a second, kernel-free reference.
    grads = np.gradient(vol.density)
    S = np.array([[np.mean(a[1:-1, 1:-1, 1:-1] * b[1:-1, 1:-1, 1:-1]) for b in grads]
                  for a in grads])
    st_axes = np.linalg.eigh(S)[1]
    for param, base in (("axis-angle", "rbf"), ("identifiable", "rbf"),
                        ("identifiable", "matern52")):
        t = time.perf_counter()
        f = inference.fit(vol, kernel="rotated", parameterization=param, base=base,
                          num_chains=chains, num_warmup=warmup, num_samples=samples, seed=0,
                          progress=False)
        total = time.perf_counter() - t
        d = f.diagnostics()
        tab = f.orientation()
        mean_axes = tab[["dir_x", "dir_y", "dir_z"]].to_numpy()
        err = [axial_deg(mean_axes[i], ref_axes[:, i]) for i in range(3)]
        err_st = [axial_deg(mean_axes[i], st_axes[:, i]) for i in range(3)]
        rows.append([param, base, f"{total:.0f}", f"{d['mean_steps_per_draw']:.1f}",
                     f"{d['max_r_hat']:.3f}", f"{d['min_ess_bulk']:.0f}",
                     f"{d['min_ess_bulk'] / f.settings['wall_time_s']:.2f}",
                     ", ".join(f"{v:.2f}" for v in tab["l_median"]),
                     ", ".join(f"{c:.0f}" for c in tab[tab.columns[-2]]),
                     ", ".join(f"{e:.1f}" for e in err), ", ".join(f"{e:.1f}" for e in err_st),
                     f"{f.loo()['elpd_loo']:.0f}"])
        print(rows[-1], flush=True)
    notes = [f"polymer-fibre micro-CT crop shipped as datasets.polymer_fibres(), "
             f"{vol.shape} voxels; {chains} x ({warmup} + {samples}); kernel-free references: "
             "the moment estimate of the metric (autocovariance at lags <= 2 voxels) and the "
             "gradient structure tensor (central differences); their axes are "
             + ", ".join(f"{axial_deg(ref_axes[:, i], st_axes[:, i]):.1f}" for i in range(3))
             + " deg apart",
             "axis angles are between the posterior mean axes and the reference's principal "
             "axes (sorted the same way); elpd: LOO over frequency groups (same data)"]
    return table(["chart", "base", "total s", "steps/draw", "max R-hat", "min ESS",
                  "ESS/s (NUTS)", "l median (voxel)", "cones deg", "vs moments deg",
                  "vs structure tensor deg", "elpd LOO"], rows), notes


# --------------------------------------------------------------------------- #
# 8. Sampling spread of the Whittle and exact estimators
# --------------------------------------------------------------------------- #
def map_estimate(vol, likelihood, taper=None):
    """MAP of the identifiable rotated RBF model (L-BFGS on the potential, from the moment
    start): sorted length-scales (3,) longest first and their axes (3, 3), voxel units."""
    z, unravel, std, _ = _map_z(vol, likelihood, taper)
    S = np.asarray(models.symmetric_from_vech(unravel(jnp.asarray(z))["log_metric"]))
    lam, V = np.linalg.eigh(S)
    return np.exp(-0.5 * lam) * std.x_scale, V


def _map_z(vol, likelihood, taper=None):
    """The MAP in the sampler's flat unconstrained coordinates, its ``unravel``, the
    standardiser and, for Whittle, ``(spec, grid data, DFT, taper weights)``."""
    import scipy.optimize as so
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import potential_energy

    gv = gridded.as_gridded(vol, taper=taper)
    std = inference.Standardizer.from_grid(gv)
    spec = inference._spec("rotated", "rbf", "identifiable", likelihood, models.Priors(), std)
    gdata, data, g = gridded.fourier_data(gv, std.x_scale, std.y_mean, std.y_sd)
    ys = np.where(gv.mask, (gv.values - std.y_mean) / std.y_sd, 0.0)
    start = models.unconstrained_start(spec, *gridded.moment_start(
        ys, g, np.asarray(gv.spacing) / std.x_scale))
    flat, unravel = ravel_pytree(start)
    if likelihood == "whittle":
        args, kw = (None, data), {"spec": spec, "grid": gdata}
    else:
        X, y = gv.points()
        args, kw = (std.x(X), std.y(y)), {"spec": spec}
    vg = jax.jit(jax.value_and_grad(
        lambda v: potential_energy(models.gp_model, args, kw, unravel(v))))
    res = so.minimize(lambda v: tuple(np.asarray(a, float) for a in vg(jnp.asarray(v))),
                      np.asarray(flat), jac=True, method="L-BFGS-B")
    return res.x, unravel, std, (spec, gdata, data, g)


def bench_estimator_spread(n, replicates, lengthscales):
    """Across replicate complete grids: the spread of each estimator of the sorted log
    length-scales and its short-axis error. The ratio of the Whittle to the exact spread
    is the width ratio a calibrated Whittle posterior must show against the exact one."""
    cases = (("exact", None), ("whittle", None), ("whittle", "tukey"), ("whittle", "hann"))
    logl = {c: [] for c in cases}
    short = {c: [] for c in cases}
    t0 = time.perf_counter()
    for r in range(replicates):
        vol = datasets.nano_brick(shape=(n, n, n), lengthscales=lengthscales, seed=2000 + r)
        for c in cases:
            l, V = map_estimate(vol, *c)
            logl[c].append(np.log(l))
            short[c].append(axial_deg(V[:, 2], vol.truth.axes[:, 2]))
        print(f"replicate {r}: {time.perf_counter() - t0:.0f} s", flush=True)
    truth = np.log(np.asarray(lengthscales))
    sd_exact = np.std(logl[cases[0]], axis=0, ddof=1)
    rows = []
    for c in cases:
        L = np.asarray(logl[c])
        sd = np.std(L, axis=0, ddof=1)
        rows.append([c[0], c[1] or "none",
                     ", ".join(f"{v:+.3f}" for v in L.mean(axis=0) - truth),
                     ", ".join(f"{v:.3f}" for v in sd),
                     ", ".join(f"{v:.2f}" for v in sd / sd_exact),
                     f"{np.median(short[c]):.1f}", f"{np.percentile(short[c], 90):.1f}"])
    notes = [f"{replicates} replicate complete {n}^3 nano-bricks (length-scales {lengthscales} "
             "voxels, noise sd 0.1, seeds 2000+); MAP of the identifiable rotated RBF model "
             "by L-BFGS from the moment start, same priors for every likelihood",
             "sd ratio = sd of the estimator / sd of the exact MAP, per sorted log length-scale: "
             "what section 4's width ratio should be if both posteriors are calibrated"]
    return table(["likelihood", "taper", "bias of log l (l1, l2, l3)", "sd of log l",
                  "sd ratio to exact", "median short-axis err deg", "90% short-axis err deg"],
                 rows), notes


# --------------------------------------------------------------------------- #
# 9. The sandwich against the spread of the estimator
# --------------------------------------------------------------------------- #
def bench_sandwich(n, replicates, lengthscales):
    """Across replicate n^3 grids: the Whittle MAP of ``vech(log M)`` (standardised units)
    against the truth, and the covariances the raw and the adjusted posterior give it,
    ``(H + P)^-1`` and ``(H J^-1 H + P)^-1`` (the matrices of section 5's adjustment,
    here at the MAP). Calibrated: errors / predicted sd near 1, mean chi^2 near 6."""
    from aniso_gp import calibration

    err, raw, adj, wf = [], [], [], []
    t0 = time.perf_counter()
    for r in range(replicates):
        vol = datasets.nano_brick(shape=(n, n, n), lengthscales=lengthscales, seed=1000 + r)
        z, unravel, std, (spec, gdata, data, g) = _map_z(vol, "whittle")
        a, _ = calibration.whittle_adjustment(
            spec, gdata, data, g, calibration.constrained_draws(spec, np.stack([z, z])))
        block = _flat_slice(unravel, z, "log_metric")
        lam, V = np.linalg.eigh(np.asarray(vol.truth.metric) * std.x_scale**2)
        truth = np.asarray(models.vech(jnp.asarray((V * np.log(lam)) @ V.T)))
        err.append(z[block] - truth)
        raw.append(np.linalg.inv(a.H + a.P)[block, block])
        adj.append(np.linalg.inv(a.H @ np.linalg.solve(a.J, a.H) + a.P)[block, block])
        wf.append(a.width_factors().max())
        print(f"replicate {r}: error {np.round(err[-1], 2)}, largest width factor "
              f"{wf[-1]:.1f}, {time.perf_counter() - t0:.0f} s", flush=True)
    E = np.asarray(err)
    emp = np.cov(E.T)
    rows = []
    for name, C in (("raw (H + P)^-1", raw), ("adjusted (H J^-1 H + P)^-1", adj)):
        mean_C = np.mean(C, axis=0)
        lam, V = np.linalg.eigh(mean_C)  # ascending: the last direction is the loosest
        ratio = np.sqrt(np.diag(V.T @ emp @ V) / lam)
        chi2 = np.mean([e @ np.linalg.solve(c, e) for e, c in zip(E, C, strict=True)])
        rows.append([name, ", ".join(f"{v:.2f}" for v in ratio), f"{chi2:.1f}"])
    notes = [f"{replicates} replicate {n}^3 nano-bricks (length-scales {lengthscales} voxels, "
             "seeds 1000+, as section 5); Whittle MAP (no taper) of the identifiable rotated "
             "RBF model; H, J (200 simulated volumes), P as in the fit's adjustment",
             "ratio: empirical sd of the MAP's error / predicted sd along the eigenvectors of "
             "the mean predicted covariance, tightest direction first (calibrated: 1)",
             "bias of vech(log M) (xx, yy, zz, xy, xz, yz): " + ", ".join(
                 f"{m:+.2f}" for m in E.mean(axis=0)) + f"; median largest width factor "
             f"{np.median(wf):.1f}"]
    return table(["covariance", "empirical / predicted sd (tight ... loose)",
                  "mean chi^2 (6 dof)"], rows), notes


def _flat_slice(unravel, z, site):
    """Where ``site`` sits in the flat vector that ``unravel`` reads."""
    marks = unravel(jnp.arange(z.size, dtype=jnp.float64))[site]
    idx = np.asarray(marks, dtype=int).ravel()
    return slice(int(idx.min()), int(idx.max()) + 1)


def _standardised(vol):
    gv = gridded.as_gridded(vol)
    std = inference.Standardizer.from_grid(gv)
    g = fft_grid.taper_weights(gv.mask)
    ys = np.where(gv.mask, (gv.values - std.y_mean) / std.y_sd, 0.0)
    return ys, g, np.asarray(gv.spacing) / std.x_scale


# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default="1,2,3,4,5,6,7,8,9")
    p.add_argument("--quick", action="store_true", help="toy sizes (smoke test)")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--replicates", type=int, default=40)
    p.add_argument("--parameterization", default="identifiable")
    p.add_argument("--first-replicate", type=int, default=0,
                   help="section 5 starts at this replicate (seed 1000 + it): extends a run")
    p.add_argument("--calibration-mask", choices=("none", "cylinder"), default="none",
                   help="section 5 on the complete grid or on the inscribed cylinder along "
                        "axis 0 (the field of view of a tomogram)")
    p.add_argument("--calibration-lengthscales", default="4,2.5,1.2",
                   help="section 5's true length-scales in voxels (by default the longest is "
                        "0.11 of the grid's extent along its axis; 10,6,2 gives 0.27)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    q = args.quick
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    calibration_l = tuple(float(v) for v in args.calibration_lengthscales.split(","))
    info = machine_info()
    out = [f"## volume_scaling ({'quick' if q else 'full'}, {jax.default_backend().upper()}, "
           f"{info['date']})", "", *[f"- {k}: {v}" for k, v in info.items()],
           f"- command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`", ""]
    print("\n".join(out), flush=True)
    runs = [
        ("1", "### 1. Value and gradient time against N",
         lambda: bench_scaling([8, 12, 16] if q else [16, 32, 64, 128], 3 if q else 7)),
        ("2", "### 2. The peer package on the same likelihood",
         lambda: bench_peer([8] if q else [16, 32, 64], 3 if q else 5)),
        ("3", "### 3. End to end on nano-brick volumes",
         # Quick: the fit of `aniso-gp demo --quick`'s rotated kernel (12^3 nano-brick,
         # 2 x (40 + 40), seed 0), so that the test suite compiles it once (JAX's
         # persistent compilation cache, tests/conftest.py).
         lambda: bench_end_to_end([12] if q else [32, 64], 2, 40 if q else 500,
                                  40 if q else 500, args.parameterization)),
        ("4", "### 4. Against the exact posterior on complete grids",
         lambda: bench_exact(6 if q else 12, [0] if q else [0, 1], 2, 30 if q else 300,
                             30 if q else 300, (3.0, 2.0, 1.0), None)),
        ("5", "### 5. Calibration over replicate volumes",
         lambda: bench_calibration(8 if q else 24, 2 if q else args.replicates, 2,
                                   30 if q else 300, 30 if q else 300, calibration_l, None,
                                   None if args.calibration_mask == "none"
                                   else cylinder_mask(8 if q else 24),
                                   args.first_replicate)),
        ("6", "### 6. ESS per second against FITC on the same voxels",
         lambda: bench_fitc((8, 8, 8) if q else (28, 27, 27), 2, 30 if q else 150,
                            30 if q else 150, 32 if q else 256)),
        ("7", "### 7. Defaults on a real volume",
         lambda: bench_defaults(2, 30 if q else 300, 30 if q else 300)),
        ("8", "### 8. Sampling spread of the Whittle and exact estimators",
         lambda: bench_estimator_spread(6 if q else 12, 2 if q else 30, (3.0, 2.0, 1.0))),
        ("9", "### 9. The adjustment's covariance against the spread of the estimator",
         lambda: bench_sandwich(8 if q else 24, 3 if q else 20, BRICK_L)),
    ]
    t_all = time.perf_counter()
    for key, title, run in runs:
        if key not in sections:
            continue
        print(title, flush=True)
        t0 = time.perf_counter()
        tab, notes = run()
        text = [title, "", tab, "", *[f"- {n}" for n in notes],
                f"- section wall time {time.perf_counter() - t0:.0f} s", ""]
        print("\n".join(text), flush=True)
        out += text
    out.append(f"Total wall time {time.perf_counter() - t_all:.0f} s.\n")
    if not args.no_append:
        with open(REPORT, "a") as f:
            f.write("\n".join(out) + "\n")
        print(f"appended to {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
