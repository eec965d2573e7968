r"""Orientation maps: a volume cut into tiles, each fitted on a Dask cluster.

:func:`orientation_map` lays a regular lattice of tiles (``tile`` voxels a side,
``stride`` apart; every tile of one shape, the ones at the far edges padded with
masked voxels), fits each one with the grid likelihood (:mod:`aniso_gp.tile_fit`)
as a task on ``dask.distributed`` and returns an :class:`xarray.Dataset` on the
lattice of tile centres (physical units):

=========================  ===================================================
``lengthscale`` (+``_lo``, ``_hi``)  (t0, t1, t2, rank): medians, 90% intervals
``axis``                   (t0, t1, t2, rank, component): mean axial direction
``cone``                   (t0, t1, t2, rank): 95% credible cone, degrees
``trend``, ``plunge``      (t0, t1, t2, rank): degrees
``weakly_identified``, ``not_distinguishable``, ``longer_than_tile``
                           (t0, t1, t2, rank): the identifiability notes as flags
``metric``                 (t0, t1, t2, component, component_): log-Euclidean mean
``st_axis``, ``st_angle``, ``st_within_cone``
                           the structure tensor's short axis, its axial angle to
                           the GP short axis, and whether it lies in the GP cone
``status``, ``error``      1 fitted, 2 failed (with the reason), 0 not yet
``observed_fraction``, ``fit_time_s``, ``map_grad_norm``, ``map_iterations``,
``embedding_ratio``, ``width_factor``, ``r_hat_max``, ``divergences``
=========================  ===================================================

Rank 0 is the longest axis, 2 the shortest; component ``d`` is array axis ``d``.

With ``store=`` the map is a Zarr store written as tiles finish: an interrupted
map run again with the same settings fits only the missing tiles (each tile's
seed is fixed by its position, so the result is the same as an uninterrupted
run). A failed tile (all masked, constant, a numerical failure) is recorded
with its reason and does not stop the map.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
from distributed import WorkerPlugin

from aniso_gp import _validation as check
from aniso_gp import chunked, tile_fit
from aniso_gp.models import Priors

STATUS = {"pending": 0, "ok": 1, "failed": 2}
RANKS = ("longest", "intermediate", "shortest")
ERROR_CHARS = 400
# glibc malloc thresholds for the workers (bytes); see local_client.
MALLOC_THRESHOLD = 2**27
_WORKER_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MALLOC_THRESHOLD),
                       "MALLOC_TRIM_THRESHOLD_": str(MALLOC_THRESHOLD)}
_FLOAT = ("observed_fraction", "fit_time_s", "map_grad_norm", "embedding_ratio",
          "width_factor", "r_hat_max", "signal", "noise", "st_angle")
_INT = ("map_iterations", "divergences")
_PER_RANK = ("lengthscale", "lengthscale_lo", "lengthscale_hi", "cone", "trend", "plunge")
_FLAGS = ("weakly_identified", "not_distinguishable", "longer_than_tile")


@dataclasses.dataclass(frozen=True)
class Lattice:
    """Tile starts along each axis (voxels) and the tile shape."""

    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    tile: tuple[int, int, int]

    @classmethod
    def of(cls, shape, tile, stride) -> Lattice:
        starts = []
        for n, t, s in zip(shape, tile, stride, strict=True):
            count = 1 if n <= t else math.ceil((n - t) / s) + 1
            starts.append(tuple(k * s for k in range(count)))
        return cls(tuple(starts), tuple(tile))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(s) for s in self.starts)

    def indices(self):
        return list(np.ndindex(*self.shape))

    def start(self, idx) -> tuple[int, int, int]:
        return tuple(self.starts[d][i] for d, i in enumerate(idx))

    def centres(self, origin, spacing) -> list[np.ndarray]:
        return [o + (np.asarray(s, dtype=np.float64) + (t - 1) / 2.0) * d
                for o, s, t, d in zip(origin, self.starts, self.tile, spacing, strict=True)]


def _as_volume(volume, spacing, mask) -> chunked.LazyVolume:
    from aniso_gp.datasets import Volume

    if isinstance(volume, chunked.LazyVolume):
        if spacing is not None or mask is not None:
            raise ValueError("`volume` is a LazyVolume with its own spacing and mask; set them "
                             "in open_volume, not here")
        return volume
    if isinstance(volume, Volume):
        if spacing is not None:
            raise ValueError("`volume` is a Volume with its own spacing; do not pass `spacing`")
        return chunked.open_volume(volume.density, volume.spacing, origin=volume.origin,
                                   mask=mask, units=volume.units)
    return chunked.open_volume(volume, spacing, mask=mask)


def _tile_shape(tile, name) -> tuple[int, int, int]:
    t = check.shape3((tile,) * 3 if np.ndim(tile) == 0 else tile, name)
    if min(t) < 8:
        raise ValueError(f"`{name}` must be at least 8 voxels per axis (the grid likelihood "
                         f"needs several correlation lengths per tile); got {t}")
    return t


def _run_tile(volume, start, geometry, method, seed, min_observed, st_sigma):
    try:
        values, observed = volume.read(start, geometry.shape)
    except Exception as err:  # an unreadable box is a failed tile, not a failed map
        return {"status": "failed", "error": f"reading the tile: {type(err).__name__}: {err}"}
    return tile_fit.fit_tile(values, observed, geometry, method, seed=seed,
                             st_sigma=st_sigma, min_observed=min_observed)


# --------------------------------------------------------------------------- #
# The Dataset                                                                 #
# --------------------------------------------------------------------------- #
def _empty(lattice: Lattice, volume: chunked.LazyVolume, settings: dict):
    import xarray as xr

    L = lattice.shape
    t = ("t0", "t1", "t2")
    data = {
        "status": (t, np.zeros(L, np.int8)),
        "error": (t, np.full(L, "", dtype=f"<U{ERROR_CHARS}")),
        **{k: (t, np.full(L, np.nan)) for k in _FLOAT},
        **{k: (t, np.full(L, -1, np.int64)) for k in _INT},
        **{k: ((*t, "rank"), np.full((*L, 3), np.nan)) for k in _PER_RANK},
        **{k: ((*t, "rank"), np.zeros((*L, 3), bool)) for k in _FLAGS},
        "axis": ((*t, "rank", "component"), np.full((*L, 3, 3), np.nan)),
        "metric": ((*t, "component", "component_"), np.full((*L, 3, 3), np.nan)),
        "st_axis": ((*t, "component"), np.full((*L, 3), np.nan)),
        "st_within_cone": (t, np.zeros(L, bool)),
    }
    c = lattice.centres(volume.origin, volume.spacing)
    coords = {"c0": ("t0", c[0]), "c1": ("t1", c[1]), "c2": ("t2", c[2]),
              "start0": ("t0", np.asarray(lattice.starts[0])),
              "start1": ("t1", np.asarray(lattice.starts[1])),
              "start2": ("t2", np.asarray(lattice.starts[2])),
              "rank": list(RANKS), "component": [0, 1, 2], "component_": [0, 1, 2]}
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(aniso_gp_map=json.dumps(settings, sort_keys=True),
                    units=volume.units, status_codes=json.dumps(STATUS))
    for k in ("c0", "c1", "c2"):
        ds[k].attrs["units"] = volume.units
    return ds


def _row(record: dict) -> dict:
    """A tile's record as the values of the Dataset's variables at one lattice point."""
    row = {"status": STATUS[record["status"]],
           "error": record.get("error", "")[:ERROR_CHARS]}
    for k in (*_FLOAT, *_INT, *_PER_RANK, *_FLAGS, "axis", "metric", "st_axis",
              "st_within_cone"):
        if k in record:
            row[k] = np.asarray(record[k])
    return row


class _Sink:
    """Where finished tiles go: the Dataset in memory and, if given, the Zarr store."""

    def __init__(self, ds, store: Path | None):
        self.ds, self.store, self.group = ds, store, None
        if store is not None:
            import zarr

            self.group = zarr.open_group(str(store), mode="r+", zarr_format=2)

    def put(self, idx, record):
        for k, v in _row(record).items():
            self.ds[k].values[idx] = v
            if self.group is not None:
                self.group[k][idx] = v


def _open_store(store: Path, template, overwrite: bool):
    """The store's Dataset if it holds this map (resume), else a fresh one."""
    import xarray as xr

    if store.exists():
        try:
            old = xr.open_zarr(store, zarr_format=2, consolidated=True).load()
        except Exception as err:
            raise ValueError(f"`store` {str(store)!r} exists and is not an orientation map "
                             f"({type(err).__name__}: {err}); choose another path or pass "
                             "overwrite=True") from err
        same = old.attrs.get("aniso_gp_map") == template.attrs["aniso_gp_map"]
        if same:
            return old
        if not overwrite:
            raise ValueError(f"`store` {str(store)!r} holds a map made with other settings; "
                             "choose another path, or pass overwrite=True to replace it")
    template.to_zarr(store, mode="w", zarr_format=2, consolidated=True)
    return template.copy(deep=True)


# --------------------------------------------------------------------------- #
# The map                                                                     #
# --------------------------------------------------------------------------- #
def core_sets(n_workers: int, cores=None) -> list[tuple[int, ...]]:
    """Split ``cores`` (default: the CPUs this process may run on) into ``n_workers``
    disjoint sets of near-equal size; with more workers than cores, one core each in
    turn.

    A JAX process on the CPU is not one thread: XLA runs its own pool, sized by the
    CPUs the process may use, and one tile fit keeps about 1.4 cores busy. Workers
    that each may use every core therefore compete for them (measured on 2 cores:
    two such processes fit 2 tiles in 1.78 s, one alone fits one in 0.90 s, a
    throughput gain of 1.01x); workers confined to their own cores do not (two
    one-core processes: 1.44 s a tile each, 1.9x one one-core process).
    """
    cores = sorted(os.sched_getaffinity(0) if cores is None else {int(c) for c in cores})
    if n_workers >= len(cores):
        return [(cores[k % len(cores)],) for k in range(n_workers)]
    return [tuple(int(c) for c in part) for part in np.array_split(np.asarray(cores), n_workers)]


class _PinCores(WorkerPlugin):
    """A Dask worker plugin: confine every thread of worker ``name`` to its cores
    before its first task (so JAX sizes its thread pool to them)."""

    def __init__(self, sets: dict):
        self.sets = sets

    def setup(self, worker):
        cpus = self.sets.get(worker.name)
        if cpus is None or not hasattr(os, "sched_setaffinity"):
            return
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that has just ended
                os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def local_client(n_workers: int | None = None, cores=None):
    """A ``distributed.Client`` on a LocalCluster set up for tile fits (closed on exit).

    ``n_workers`` process workers (default: one per core, at most 8) with one Dask
    thread each, each confined to its own share of ``cores`` (default: every CPU
    this process may use; see :func:`core_sets`). Pass the client as
    ``orientation_map(..., scheduler=client)`` to reuse one cluster for several maps.
    """
    import dask
    from distributed import Client, LocalCluster

    if not hasattr(os, "sched_getaffinity"):  # no CPU affinity here: workers unconfined
        cores = None
    elif cores is None:
        cores = os.sched_getaffinity(0)
    n = check.positive_int(n_workers, "n_workers") if n_workers is not None \
        else min(len(cores) if cores else (os.cpu_count() or 1), 8)
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 (memory back to the OS
    # early). Setting any glibc malloc threshold also switches off glibc's dynamic mmap
    # threshold, so every buffer above 128 kB, and a tile fit allocates and frees
    # thousands of a few MB, was a fresh mmap with its pages faulted in: 2.09 s per
    # 32^3 tile on one core in a worker, against 1.23 s with both thresholds fixed at
    # 128 MB. The workers' stack sampler (every 10 ms, holding the GIL) is off too.
    environ = {f"distributed.nanny.pre-spawn-environ.{k}": v
               for k, v in _WORKER_ENVIRONMENT.items()}
    with dask.config.set({**environ,
                          "distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cluster, Client(cluster) as client:
        if cores:
            sets = core_sets(n, cores)
            client.register_plugin(_PinCores({name: set(sets[k]) for k, name in
                                              enumerate(sorted(cluster.workers))}),
                                   name="aniso-gp-pin-cores")
        yield client


@contextlib.contextmanager
def _client(scheduler, n_workers):
    """A ``distributed.Client``: the one given, one at an address, or a
    :func:`local_client` (closed on exit)."""
    from distributed import Client

    if scheduler is not None and not isinstance(scheduler, str):
        if not isinstance(scheduler, Client):
            raise ValueError(f"`scheduler` must be None, an address or a distributed.Client; "
                             f"got {type(scheduler).__name__}")
        yield scheduler
        return
    if isinstance(scheduler, str):
        with Client(scheduler) as client:
            yield client
        return
    with local_client(n_workers) as client:
        yield client


def orientation_map(volume, tile=32, stride=None, *, spacing=None, mask=None,
                    method="laplace", base: str = "rbf", taper: str | None = None,
                    priors=None, min_observed: float = 0.5, st_sigma: float = 1.0,
                    store=None, overwrite: bool = False, scheduler=None,
                    n_workers: int | None = None, seed: int = 0, progress: bool = True,
                    on_tile=None):
    """Fit every tile of a volume and return the map (see the module docstring).

    Args:
        volume: a :class:`~aniso_gp.chunked.LazyVolume` (:func:`~aniso_gp.chunked.
            open_volume`: files of any size, read a tile at a time by the workers), a
            :class:`~aniso_gp.datasets.Volume`, a path, or a 3-D array.
        tile: tile side in voxels (one number or three).
        stride: distance between tile starts (default ``tile``: no overlap).
        spacing, mask: for an array or a path (a LazyVolume carries its own).
        method: ``"laplace"`` (default), ``"nuts"``, or a
            :class:`~aniso_gp.tile_fit.Laplace` / :class:`~aniso_gp.tile_fit.ShortNUTS`.
        base, taper, priors: the model of every tile (priors in the volume's units).
        min_observed: tiles with a smaller observed fraction are recorded as failed.
        st_sigma: derivative scale (voxels) of the structure-tensor peer.
        store: optional path of a Zarr store written as tiles finish; an existing
            map with the same settings is resumed, one with other settings is an
            error unless ``overwrite=True``.
        scheduler: None (a LocalCluster of ``n_workers`` process workers, one thread
            each), the address of a running ``dask.distributed`` scheduler, or a
            ``distributed.Client``.
        seed: tile ``i`` (C order on the lattice) uses ``seed + i``.
        progress: a progress bar (tqdm) and the dashboard address on stderr.
        on_tile: optional ``f(index, record)`` called as each tile is stored.

    Returns:
        the map as an :class:`xarray.Dataset`; ``attrs["tiles_fitted"]`` counts the
        tiles fitted by this call (0 when everything was already in ``store``).
    """
    vol = _as_volume(volume, spacing, mask)
    tile = _tile_shape(tile, "tile")
    stride = tile if stride is None else _tile_shape(stride, "stride")
    method = tile_fit.as_method(method)
    min_observed = check.fraction(min_observed, "min_observed")
    st_sigma = check.positive_scalar(st_sigma, "st_sigma")
    seed = check.seed(seed)
    if any(n < t for n, t in zip(vol.shape, tile, strict=True)):
        raise ValueError(f"`tile` {tile} is larger than the volume {vol.shape}: choose a "
                         "smaller tile, or fit a volume this small whole (aniso_gp.fit)")
    user_priors = Priors.from_user(priors)
    geometry = tile_fit.TileGeometry(shape=tile, spacing=vol.spacing,
                                     base=check.base_name(base), taper=taper,
                                     priors=user_priors)
    lattice = Lattice.of(vol.shape, tile, stride)
    settings = {"volume_shape": list(vol.shape), "spacing": list(vol.spacing),
                "origin": list(vol.origin), "tile": list(tile), "stride": list(stride),
                "method": repr(method), "base": base, "taper": taper,
                "priors": dataclasses.asdict(user_priors), "min_observed": min_observed,
                "st_sigma": st_sigma, "seed": seed}
    template = _empty(lattice, vol, settings)
    if store is not None:
        store = Path(store)
        ds = _open_store(store, template, overwrite)
    else:
        ds = template
    sink = _Sink(ds, store)
    todo = [(i, idx) for i, idx in enumerate(lattice.indices()) if ds["status"].values[idx] == 0]
    if todo:
        _fit_tiles(vol, lattice, geometry, method, seed, min_observed, st_sigma, todo, sink,
                   scheduler, n_workers, progress, on_tile)
    out = sink.ds
    out.attrs["tiles_fitted"] = len(todo)
    return out


def _fit_tiles(vol, lattice, geometry, method, seed, min_observed, st_sigma, todo, sink,
               scheduler, n_workers, progress, on_tile):
    import sys

    from distributed import as_completed
    from tqdm.auto import tqdm

    with _client(scheduler, n_workers) as client:
        if progress:
            print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        # The volume goes to the workers once; for a file it is only a path and a box.
        remote = client.scatter(vol, broadcast=True, hash=False)
        futures = {client.submit(_run_tile, remote, lattice.start(idx), geometry, method,
                                 seed + i, min_observed, st_sigma, pure=False): idx
                   for i, idx in todo}
        bar = tqdm(total=len(todo), desc="tiles", unit="tile", disable=not progress)
        try:
            for fut, record in as_completed(futures, with_results=True):
                idx = futures[fut]
                sink.put(idx, record)
                bar.update(1)
                if on_tile is not None:
                    on_tile(idx, record)
        finally:
            bar.close()
            client.cancel(list(futures))


def tile_table(ds):
    """One row per tile: position, status, length-scales, short axis, cones, the
    structure-tensor angle (a :class:`pandas.DataFrame`, e.g. for a CSV)."""
    import pandas as pd

    rows = []
    codes = {v: k for k, v in STATUS.items()}
    for idx in np.ndindex(*ds["status"].shape):
        row = {"t0": idx[0], "t1": idx[1], "t2": idx[2],
               "c0": float(ds["c0"].values[idx[0]]), "c1": float(ds["c1"].values[idx[1]]),
               "c2": float(ds["c2"].values[idx[2]]),
               "status": codes[int(ds["status"].values[idx])],
               "observed_fraction": float(ds["observed_fraction"].values[idx])}
        for r in range(3):
            row[f"l{r + 1}"] = float(ds["lengthscale"].values[idx][r])
            row[f"l{r + 1}_lo"] = float(ds["lengthscale_lo"].values[idx][r])
            row[f"l{r + 1}_hi"] = float(ds["lengthscale_hi"].values[idx][r])
            row[f"cone{r + 1}_deg"] = float(ds["cone"].values[idx][r])
        short = ds["axis"].values[idx][2]
        row.update(short_0=short[0], short_1=short[1], short_2=short[2],
                   trend3_deg=float(ds["trend"].values[idx][2]),
                   plunge3_deg=float(ds["plunge"].values[idx][2]),
                   st_angle_deg=float(ds["st_angle"].values[idx]),
                   error=str(ds["error"].values[idx]))
        rows.append(row)
    return pd.DataFrame(rows)


def smooth(ds, sigma: float = 1.0):
    r"""Log-Euclidean smoothing of the metric field over the tile lattice.

    ``M_smooth = expm( sum_t w_t logm M_t / sum_t w_t )`` with Gaussian weights of
    ``sigma`` lattice steps over the fitted tiles (failed ones get no weight and
    are filled where fitted neighbours reach): the log-Euclidean mean
    (:func:`aniso_gp.orientation.log_euclidean_mean`) made local, so the result is
    SPD and blind to axis labelling. Returns a copy of ``ds`` whose ``metric``,
    ``lengthscale`` and ``axis`` are the smoothed ones (intervals, cones and the
    other per-tile variables are those of the unsmoothed fits) and
    ``attrs["smoothed_sigma"] = sigma``.
    """
    from scipy import ndimage

    sigma = check.positive_scalar(sigma, "sigma")
    out = ds.copy(deep=True)
    ok = np.asarray(ds["status"].values) == 1
    if not ok.any():
        raise ValueError("the map has no fitted tile to smooth")
    M = np.asarray(ds["metric"].values)
    lam, V = np.linalg.eigh(np.where(ok[..., None, None], M, np.eye(3)))
    logM = (V * np.log(lam)[..., None, :]) @ np.swapaxes(V, -1, -2)
    w = ndimage.gaussian_filter(ok.astype(float), sigma, mode="nearest")
    acc = np.stack([ndimage.gaussian_filter(np.where(ok, logM[..., i, j], 0.0), sigma,
                                            mode="nearest")
                    for i in range(3) for j in range(3)], axis=-1).reshape(*ok.shape, 3, 3)
    reached = w > 1e-3
    logS = acc / np.where(reached, w, 1.0)[..., None, None]
    lam, V = np.linalg.eigh(0.5 * (logS + np.swapaxes(logS, -1, -2)))
    S = (V * np.exp(lam)[..., None, :]) @ np.swapaxes(V, -1, -2)
    # eigh sorts ascending: the smallest metric eigenvalue is the longest axis.
    l = np.exp(-0.5 * lam)
    axes = np.swapaxes(V, -1, -2)  # rows: directions, longest first
    out["metric"].values[...] = np.where(reached[..., None, None], S, np.nan)
    out["lengthscale"].values[...] = np.where(reached[..., None], l, np.nan)
    out["axis"].values[...] = np.where(reached[..., None, None], axes, np.nan)
    out.attrs["smoothed_sigma"] = sigma
    return out
