"""Orientation maps: accuracy against a known varying orientation, the structure-tensor
peer in the same run, coverage, and wall time on 1 and 2 Dask workers.

    python benchmarks/orientation_map.py                 # 128^3 twisted plywood, tile 32
    python benchmarks/orientation_map.py --n 256         # the issue's 256^3 size
    python benchmarks/orientation_map.py --quick         # toy sizes (smoke test)

Sections:

1. A twisted-plywood volume (a Bouligand stack): an RBF field whose long and short
   axes turn about array axis 0, half a turn over the depth. Each tile's truth is
   the axes at its centre. Reported: median and 90th-percentile short-axis error
   per tile for aniso_gp and for the structure tensor (``structure-tensor``
   package), the fraction of tiles whose 95% cone holds the true short axis, and
   the same for the long axis.
2. Wall time of the same map on ``local_client`` (the LocalCluster the map starts
   itself: process workers, one Dask thread each, each confined to its own cores)
   with 1 worker on one core, 1 worker free to use every core, and 2 workers:
   total, tiles per second, mean time per tile after each worker's first
   (compilation), speed-ups, peak resident memory per worker.
3. The polymer-fibre micro-CT (``--fibres``): map, agreement with the structure
   tensor, time.
4. Memory of a full pass over a 512^3 uint16 file (``--memory``): raw and TIFF,
   read as a Dask array (mean of every voxel) and tile by tile (every 32^3 box),
   each in a fresh process: peak resident memory above the process's baseline
   after imports, against the file size (target: within 1.5x).

Appends a dated block to reports/benchmark-log.md unless --no-append.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volume_scaling import machine_info, table  # noqa: E402

from aniso_gp import datasets, orientation  # noqa: E402
from aniso_gp.orientation_map import local_client, orientation_map  # noqa: E402

REPORT = Path(__file__).resolve().parent.parent / "reports" / "benchmark-log.md"


def plywood(n, lengthscales=(8.0, 3.0, 1.5), angles=16, noise_sd=0.1, seed=0):
    """An (n, n, n) twisted plywood: the field's metric turns about axis 0 by
    ``theta(i) = pi i / n``; the long axis is (0, cos t, sin t), the intermediate one
    axis 0, the short one (0, -sin t, cos t).

    White noise convolved with the anisotropic Gaussian of covariance ``M^-1 / 2`` is
    an RBF field of metric ``M``; one convolution per angle on a grid of ``angles``
    angles, and each depth takes the linear blend of its two neighbouring angles'
    fields (one noise for all, so neighbours are smooth continuations).
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, n, n))
    W = np.fft.rfftn(w)
    k = [np.fft.fftfreq(n) * 2 * np.pi] * 2 + [np.fft.rfftfreq(n) * 2 * np.pi]
    K = np.meshgrid(*k, indexing="ij")
    thetas = np.linspace(0.0, np.pi, angles + 1)
    fields = []
    l = np.asarray(lengthscales)
    for t in thetas:
        R = _axes(t)
        M = (R / l**2) @ R.T
        cov = np.linalg.inv(M) / 2.0  # the smoothing Gaussian's covariance
        quad = sum(cov[a, b] * K[a] * K[b] for a in range(3) for b in range(3))
        f = np.fft.irfftn(W * np.exp(-0.5 * quad), s=(n, n, n), axes=(0, 1, 2))
        fields.append(f / f.std())
    pos = np.arange(n) / n * angles  # depth i sits at angle index pos[i]
    lo = np.floor(pos).astype(int)
    frac = (pos - lo)[:, None, None]
    stack = np.stack(fields)
    f = np.stack([(1 - frac[i]) * stack[lo[i], i] + frac[i] * stack[lo[i] + 1, i]
                  for i in range(n)])
    return f / f.std() + noise_sd * rng.standard_normal(f.shape)


def _axes(theta):
    """Columns: long, intermediate, short."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[0.0, 1.0, 0.0], [c, 0.0, -s], [s, 0.0, c]])


def tile_errors(ds, truth_of):
    """Per fitted tile: short/long-axis errors (GP), short-axis error (structure tensor),
    and whether the true short axis is inside the 95% cone."""
    rows = []
    for idx in np.ndindex(*ds["status"].shape):
        if int(ds["status"].values[idx]) != 1:
            continue
        R = truth_of(idx)
        ax = ds["axis"].values[idx]
        e_short = orientation.axial_angles(ax[2][None], R[:, 2])[0]
        e_long = orientation.axial_angles(ax[0][None], R[:, 0])[0]
        e_st = orientation.axial_angles(ds["st_axis"].values[idx][None], R[:, 2])[0]
        rows.append((e_short, e_long, e_st, e_short <= ds["cone"].values[idx][2],
                     e_long <= ds["cone"].values[idx][0]))
    return np.array(rows, dtype=float)


def _peak_rss_kb():
    # VmHWM, not getrusage: ru_maxrss survives fork and exec, so a worker would report
    # the parent's peak (the volume generation's).
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def timed_map(vol, tile, workers, cores=None, **kw):
    """The map on ``local_client(workers, cores)`` (the cluster ``orientation_map``
    starts itself), timed from the first submission."""
    with local_client(workers, cores) as client:
        t0 = time.perf_counter()
        ds = orientation_map(vol, tile=tile, scheduler=client, progress=False, **kw)
        wall = time.perf_counter() - t0
        rss = client.run(_peak_rss_kb)
    fit = np.sort(ds["fit_time_s"].values.ravel())
    # The slowest `workers` tiles are each worker's first (they compile).
    steady = fit[:-workers] if fit.size > workers else fit
    return ds, wall, float(steady.mean()), max(rss.values()) / 1024.0, float(fit[-1])


_PASS = r"""
import sys, time
import numpy as np
from aniso_gp import chunked

def status(key):  # kB, from the kernel's accounting of this process
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key))

kind, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
vol = chunked.open_volume(path, shape=(n, n, n), dtype="<u2") if path.endswith(".raw") \
    else chunked.open_volume(path)
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
base = status("VmRSS:")
t0 = time.perf_counter()
if kind == "dask":
    total = float(vol.to_dask(chunks=(32, n, n)).sum(dtype="f8").compute(scheduler="threads",
                                                                           num_workers=2))
else:
    total = 0.0
    for start in np.ndindex(n // 32, n // 32, n // 32):
        values, observed = vol.read([32 * s for s in start], (32, 32, 32))
        total += float(values.sum(dtype="f8"))
peak = status("VmHWM:")
print(base, peak, time.perf_counter() - t0, total)
"""


def bench_memory(n, root):
    import subprocess

    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    raw = root / f"vol{n}.raw"
    tif = root / f"vol{n}.tif"
    rng = np.random.default_rng(0)
    with open(raw, "wb") as f:  # written slab by slab: the writer holds no whole copy
        for _ in range(n):
            f.write(rng.integers(0, 65535, size=(n, n), dtype=np.uint16).tobytes())
    mm = np.memmap(raw, dtype="<u2", mode="r", shape=(n, n, n))
    tifffile.imwrite(tif, mm, tile=None)
    size_mb = raw.stat().st_size / 2**20
    rows = []
    for path in (raw, tif):
        for kind in ("dask", "tiles"):
            out = subprocess.run([sys.executable, "-c", _PASS, kind, str(path), str(n)],
                                 capture_output=True, text=True, check=True).stdout.split()
            base, peak, wall = float(out[0]) / 1024, float(out[1]) / 1024, float(out[2])
            rows.append([path.suffix, kind, f"{size_mb:.0f}", f"{peak - base:.0f}",
                         f"{(peak - base) / size_mb:.2f}", f"{(peak - base) * 2**20 / n**3:.2f}",
                         f"{wall:.1f}"])
            print(rows[-1], flush=True)
    for p in (raw, tif):
        p.unlink()
    return table(["file", "pass", "file MB", "peak above baseline MB", "x file size",
                  "bytes/voxel", "wall s"], rows)


def bench_plywood(args):
    lines = []
    t0 = time.perf_counter()
    values = plywood(args.n)
    lines.append(f"- volume generated in {time.perf_counter() - t0:.1f} s")
    n_tiles = (args.n // args.tile) ** 3

    def truth_of(idx):
        centre = idx[0] * args.tile + (args.tile - 1) / 2.0
        return _axes(np.pi * centre / args.n)

    rows_t, ds1, walls = [], None, {}
    all_cores = sorted(os.sched_getaffinity(0))
    runs = [(w, all_cores[:w]) for w in (int(v) for v in args.workers.split(","))]
    if runs[0][0] == 1 and len(all_cores) > 1:
        runs.insert(1, (1, all_cores))  # one worker free to use every core
    for w, cores in runs:
        ds, wall, steady, rss, first = timed_map(values, args.tile, w, cores)
        ds1 = ds1 if ds1 is not None else ds
        walls[w, len(cores)] = wall
        rows_t.append([w, len(cores), n_tiles, f"{wall:.1f}", f"{n_tiles / wall:.2f}",
                       f"{steady:.2f}", f"{first:.1f}", f"{rss:.0f}"])
        print(rows_t[-1], flush=True)
    w_max = runs[-1][0]
    if w_max > 1 and (1, 1) in walls:
        lines.append(f"- speed-up of {w_max} workers over 1 (one core each): "
                     f"{walls[1, 1] / walls[w_max, w_max]:.2f}x (target 1.7x on 2 cores)")
    free = (1, len(all_cores))
    if w_max > 1 and free in walls:
        lines.append(f"- speed-up of {w_max} workers over 1 worker free to use all "
                     f"{len(all_cores)} cores: {walls[free] / walls[w_max, w_max]:.2f}x")
    err = tile_errors(ds1, truth_of)
    acc = [["aniso_gp short axis", len(err), f"{np.median(err[:, 0]):.1f}",
            f"{np.percentile(err[:, 0], 90):.1f}", f"{100 * err[:, 3].mean():.0f}%"],
           ["aniso_gp long axis", len(err), f"{np.median(err[:, 1]):.1f}",
            f"{np.percentile(err[:, 1], 90):.1f}", f"{100 * err[:, 4].mean():.0f}%"],
           ["structure tensor short axis", len(err), f"{np.median(err[:, 2]):.1f}",
            f"{np.percentile(err[:, 2], 90):.1f}", "-"]]
    return lines + [
        "", "Accuracy per tile (degrees; truth = the axes at the tile centre; the "
        f"orientation turns by 180/n deg per voxel, so {180 * args.tile / args.n:.0f} deg "
        "across a tile):", "",
        table(["estimator", "tiles", "median error", "90% error", "truth in 95% cone"], acc),
        "", "Wall time (local_client: process workers, one Dask thread each, each confined "
        "to its share of the cores; steady = mean fit time per tile without each worker's "
        "first, compiling, tile):", "",
        table(["workers", "cores", "tiles", "wall s", "tiles/s", "steady s/tile",
               "first tile s", "peak RSS/worker MB"], rows_t)]


def bench_fibres(args):
    vol = datasets.polymer_fibres()
    tile = min(args.tile, 16)  # the crop is 48^3
    ds, wall, steady, rss, first = timed_map(vol, tile, int(args.workers.split(",")[-1]))
    ok = ds["status"].values == 1
    return ["", f"Polymer fibres {vol.shape}, tile {tile}: {int(ok.sum())} tiles in "
            f"{wall:.1f} s; angle GP short axis vs structure tensor: median "
            f"{np.nanmedian(ds['st_angle'].values):.1f} deg, 90% "
            f"{np.nanpercentile(ds['st_angle'].values, 90):.1f} deg; median 95% cone of the "
            f"short axis {np.nanmedian(ds['cone'].values[..., 2]):.1f} deg"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--fibres", action="store_true", help="also map the polymer-fibre CT")
    p.add_argument("--memory", type=int, default=0, metavar="N",
                   help="also measure a full pass over an N^3 uint16 file (the issue: 512)")
    p.add_argument("--memory-dir", default="/tmp/aniso_gp_memory_bench",
                   help="where the --memory file is written (and removed)")
    p.add_argument("--skip-map", action="store_true", help="only the other sections")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.tile, args.workers = 32, 16, "1"
    info = machine_info()
    lines = [f"## orientation_map: {args.n}^3 twisted plywood, tile {args.tile}",
             "", f"`python benchmarks/orientation_map.py {' '.join(argv or sys.argv[1:])}`", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    if not args.skip_map:
        lines += bench_plywood(args)
    if args.fibres:
        lines += bench_fibres(args)
    if args.memory:
        lines += ["", f"Full pass over a {args.memory}^3 uint16 file (fresh process each; "
                  "peak RSS above the process's own after imports):", "",
                  bench_memory(args.memory, Path(args.memory_dir))]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append and not args.quick:
        with open(REPORT, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
