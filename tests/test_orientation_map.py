"""Orientation maps: per-tile accuracy on a patchwork of known orientations, the
structure-tensor peer, failures recorded, interrupted maps resumed exactly."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client, LocalCluster

from aniso_gp import datasets, orientation, tile_fit
from aniso_gp.orientation_map import orientation_map

TILE = 16


@pytest.fixture(scope="module")
def client():
    # In-process workers share this process's compiled functions, so the module pays
    # for one compilation of the tile fit.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def patchwork():
    return datasets.patchwork(blocks=(2, 1, 1), block=32, lengthscales=(4.0, 2.5, 1.0),
                              seed=1)


@pytest.fixture(scope="module")
def mapped(patchwork, client):
    vol, _ = patchwork
    return orientation_map(vol, tile=TILE, scheduler=client, progress=False)


def _errors(ds, axes, per_block):
    out = []
    for idx in np.ndindex(*ds["status"].shape):
        block = tuple(i // per_block for i in idx)
        out.append(orientation.axial_angles(ds["axis"].values[idx][2][None],
                                            axes[block][:, 2])[0])
    return np.array(out)


def test_every_tile_recovers_its_blocks_short_axis(mapped, patchwork):
    _, axes = patchwork
    assert (mapped["status"].values == 1).all(), mapped["error"].values
    err = _errors(mapped, axes, 32 // TILE)
    assert err.max() < 5.0, np.round(err, 1)
    # The peer finds about the same direction (a short length-scale of one voxel is
    # near the derivative filter's scale, so it is less precise); recorded per tile.
    assert np.median(mapped["st_angle"].values) < 20.0
    # Intervals bracket the medians; cones are finite and the short axis is the sharpest.
    ls = mapped["lengthscale"].values
    assert np.all(mapped["lengthscale_lo"].values <= ls)
    assert np.all(ls <= mapped["lengthscale_hi"].values)
    assert np.all(np.diff(ls, axis=-1) < 0)
    assert np.all(mapped["cone"].values[..., 2] < 10.0)
    # Tile centres in physical units on the lattice.
    np.testing.assert_allclose(mapped["c0"].values, [7.5, 23.5, 39.5, 55.5])
    np.testing.assert_allclose(mapped["c1"].values, [7.5, 23.5])


def test_the_laplace_covariance_is_the_inverse_curvature_when_uncalibrated(patchwork):
    """calibrate=False: the draws' covariance is (H + P)^-1 of the potential at the MAP,
    H by central differences of the score (an independent finite-difference check of
    the curvature the calibrated map uses)."""
    import jax.numpy as jnp

    from aniso_gp import calibration

    vol, _ = patchwork
    geom = tile_fit.TileGeometry(shape=(TILE,) * 3, spacing=vol.spacing)
    block = vol.density[:TILE, :TILE, :TILE]
    problem = tile_fit.tile_problem(block, np.ones(block.shape, bool), geom)
    z0 = tile_fit._start(problem, geom, block, np.ones(block.shape, bool), None)
    method = tile_fit.Laplace(num_draws=20_000, calibrate=False)
    draws, info = method.posterior(problem, z0, seed=0)
    z_map = draws.mean(axis=0)
    grad = np.asarray(tile_fit.potential_grad(jnp.asarray(z_map), problem.grid, problem.data,
                                              spec=problem.spec))
    assert np.linalg.norm(grad) < 1e-2 * np.sqrt(problem.grid.weights.sum())
    h = 1e-4
    full = np.stack([(np.asarray(tile_fit.potential_grad(jnp.asarray(z_map + h * e),
                                                         problem.grid, problem.data,
                                                         spec=problem.spec))
                      - np.asarray(tile_fit.potential_grad(jnp.asarray(z_map - h * e),
                                                           problem.grid, problem.data,
                                                           spec=problem.spec))) / (2 * h)
                     for e in np.eye(z_map.size)])
    cov = np.cov(draws.T)
    W = np.linalg.cholesky(0.5 * (full + full.T))
    dev = np.linalg.eigvalsh(W.T @ cov @ W)  # identity if cov = full^-1
    assert np.all(np.abs(dev - 1.0) < 0.1), dev
    assert calibration.flat_layout(problem.spec)(jnp.asarray(z_map))["log_metric"].shape == (6,)


def test_failed_tiles_are_recorded_with_their_reason(client):
    vol = datasets.nano_brick(shape=(48, 16, 16), lengthscales=(4.0, 2.5, 1.0), seed=3)
    density = vol.density.copy()
    density[:TILE] = np.nan  # tile 0: nothing observed
    density[TILE:2 * TILE] = 7.0  # tile 1: constant
    ds = orientation_map(density, tile=TILE, scheduler=client, progress=False)
    assert ds["status"].values.ravel().tolist() == [2, 2, 1]
    assert "observed" in str(ds["error"].values[0, 0, 0])
    assert "constant" in str(ds["error"].values[1, 0, 0])
    assert np.isnan(ds["lengthscale"].values[:2]).all()
    assert np.isfinite(ds["lengthscale"].values[2]).all()


def test_an_interrupted_map_resumes_to_the_same_dataset(mapped, patchwork, client, tmp_path):
    vol, _ = patchwork
    store = tmp_path / "map.zarr"
    seen = []

    def stop_after_five(idx, record):
        seen.append(idx)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        orientation_map(vol, tile=TILE, scheduler=client, progress=False, store=store,
                        on_tile=stop_after_five)
    resumed = orientation_map(vol, tile=TILE, scheduler=client, progress=False, store=store)
    assert resumed.attrs["tiles_fitted"] == 16 - 5
    again = orientation_map(vol, tile=TILE, scheduler=client, progress=False, store=store)
    assert again.attrs["tiles_fitted"] == 0
    for name in mapped.data_vars:
        if name != "fit_time_s":
            np.testing.assert_array_equal(again[name].values, mapped[name].values, err_msg=name)
    with pytest.raises(ValueError, match="other settings"):
        orientation_map(vol, tile=TILE, stride=8, scheduler=client, progress=False,
                        store=store)


def test_map_report_has_its_pictures_and_renders_in_chromium(mapped, patchwork, tmp_path):
    import shutil
    import subprocess

    from PIL import Image

    from aniso_gp import chunked
    from aniso_gp.map_report import write_map_report

    vol, _ = patchwork
    ds = mapped.copy(deep=True)
    ds["status"].values[0, 0, 0] = 2
    ds["error"].values[0, 0, 0] = "ValueError: a recorded failure"
    html = write_map_report(ds, tmp_path / "report", volume=chunked.open_volume(vol.density))
    text = html.read_text()
    for name in ("map_slice_axis0", "map_slice_axis1", "map_slice_axis2",
                 "map_stereonet_short", "map_stereonet_long", "map_cones"):
        png = tmp_path / "report" / "figures" / f"{name}.png"
        assert png.stat().st_size > 5000, name
        assert f'id="fig-{name}"' in text
    assert "a recorded failure" in text and "15 fitted, 1 failed" in text
    assert "Structure tensor (kernel-free peer)" in (tmp_path / "report" / "report.md").read_text()
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,3000",
                    "--hide-scrollbars", f"--screenshot={shot}", html.resolve().as_uri()],
                   capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    # The glyph maps and stereonets are drawn: many coloured (non-grey) pixels.
    colourful = (img.max(axis=-1) - img.min(axis=-1)) > 60
    assert colourful.mean() > 0.01, colourful.mean()


def test_log_euclidean_smoothing_against_the_pairwise_mean(mapped):
    from aniso_gp.orientation_map import smooth

    ds = mapped.isel(t0=slice(0, 2), t1=slice(0, 1), t2=slice(0, 1)).copy(deep=True)
    M = ds["metric"].values.reshape(2, 3, 3)
    # Both tiles weigh the same up to g(0) ~ 4e-4 (the edge mode): the log-Euclidean mean.
    wide = smooth(ds, sigma=1e3)
    expected = orientation.log_euclidean_mean(M)
    for t in range(2):
        np.testing.assert_allclose(wide["metric"].values[t, 0, 0], expected, rtol=1e-4)
    l, V = orientation.axes_from_metrics(expected[None])
    np.testing.assert_allclose(wide["lengthscale"].values[0, 0, 0], l[0], rtol=1e-4)
    assert orientation.axial_angles(wide["axis"].values[0, 0, 0][2][None], V[0][:, 2])[0] < 0.1
    narrow = smooth(ds, sigma=0.05)  # no neighbour reaches: unchanged
    np.testing.assert_allclose(narrow["metric"].values, ds["metric"].values, rtol=1e-8)
    ds["status"].values[1, 0, 0] = 2  # a failed tile is filled from its neighbour
    filled = smooth(ds, sigma=1.0)
    np.testing.assert_allclose(filled["metric"].values[1, 0, 0], M[0], rtol=1e-8)


def test_short_nuts_tiles_agree_with_laplace(patchwork):
    vol, axes = patchwork
    geom = tile_fit.TileGeometry(shape=(TILE,) * 3, spacing=vol.spacing)
    block = vol.density[TILE:2 * TILE, :TILE, :TILE]
    obs = np.ones(block.shape, bool)
    nuts = tile_fit.fit_tile(block, obs, geom, tile_fit.ShortNUTS(num_warmup=80,
                                                                  num_samples=80))
    lap = tile_fit.fit_tile(block, obs, geom, "laplace")
    assert nuts["status"] == "ok", nuts.get("traceback")
    assert nuts["r_hat_max"] < 1.1 and nuts["divergences"] < 5
    err = orientation.axial_angles(nuts["axis"][2][None], axes[0, 0, 0][:, 2])[0]
    assert err < 5.0
    # The two methods' 90% intervals of each length-scale overlap.
    assert np.all(nuts["lengthscale_lo"] < lap["lengthscale_hi"])
    assert np.all(lap["lengthscale_lo"] < nuts["lengthscale_hi"])


def test_bad_arguments_are_named(patchwork, client):
    vol, _ = patchwork
    with pytest.raises(ValueError, match="`tile`"):
        orientation_map(vol, tile=4, scheduler=client)
    with pytest.raises(ValueError, match="`method`"):
        orientation_map(vol, tile=TILE, method="mcmc", scheduler=client)
    with pytest.raises(ValueError, match="`min_observed`"):
        orientation_map(vol, tile=TILE, min_observed=1.5, scheduler=client)
    with pytest.raises(ValueError, match="`scheduler`"):
        orientation_map(vol, tile=TILE, scheduler=3)
    with pytest.raises(ValueError, match="`spacing`"):
        orientation_map(vol, tile=TILE, spacing=2.0, scheduler=client)


def _affinity_and_malloc():
    import os

    return sorted(os.sched_getaffinity(0)), os.environ.get("MALLOC_MMAP_THRESHOLD_")


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux only")
def test_local_workers_get_their_own_cores_and_malloc_settings():
    import os

    from aniso_gp.orientation_map import MALLOC_THRESHOLD, core_sets, local_client

    assert core_sets(2, [0, 1, 2, 3, 4]) == [(0, 1, 2), (3, 4)]
    assert core_sets(1, [3, 1]) == [(1, 3)]
    assert core_sets(3, [5, 6]) == [(5,), (6,), (5,)]
    one = sorted(os.sched_getaffinity(0))[:1]
    with local_client(2, cores=one) as client:
        seen = client.run(_affinity_and_malloc)
        in_task = client.submit(_affinity_and_malloc, pure=False).result()
    assert len(seen) == 2
    assert all(v == (one, str(MALLOC_THRESHOLD)) for v in [*seen.values(), in_task])
    with pytest.raises(ValueError, match="`n_workers`"):
        with local_client(0):
            pass


def test_cli_maps_a_file_on_a_local_cluster_and_resumes(mapped, tmp_path):
    """`aniso-gp map` end to end in a child process: lazy .npy, a LocalCluster of process
    workers, the Zarr store, CSV and report; run again, nothing is refitted.

    Same tile shape as the tests above and the same XLA flags (no cheap-compile ones):
    the worker finds the tile fit in the session's persistent compilation cache
    (conftest), so it does not compile it again (`mapped` runs first)."""
    import os
    import subprocess
    import sys

    import pandas as pd
    import xarray as xr

    vol = datasets.nano_brick(shape=(2 * TILE, TILE, TILE), lengthscales=(3.0, 2.0, 1.0),
                              seed=5)
    np.save(tmp_path / "scan.npy", (1000 + 100 * vol.density).astype(np.uint16))
    out = tmp_path / "scan.zarr"
    cmd = [sys.executable, "-m", "aniso_gp", "map", str(tmp_path / "scan.npy"), "--spacing",
           "0.5", "--tile", str(TILE), "--workers", "1", "--out", str(out), "--quiet"]
    env = dict(os.environ)
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 of 2 tiles fitted (2 in this run)" in run.stdout
    ds = xr.open_zarr(out, zarr_format=2).load()
    np.testing.assert_allclose(ds["c0"].values, [3.75, 11.75])  # physical centres
    table = pd.read_csv(out.with_suffix(".csv"))
    assert len(table) == 2 and (table["status"] == "ok").all()
    truth_short = vol.truth.axes[:, 2]
    for _, row in table.iterrows():
        short = row[["short_0", "short_1", "short_2"]].to_numpy(float)
        assert orientation.axial_angles(short[None], truth_short)[0] < 10.0
    assert (tmp_path / "scan_report" / "report.html").stat().st_size > 50_000
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "(0 in this run)" in again.stdout, again.stderr[-2000:]
    bad = subprocess.run([*cmd[:-1], "--tile", "4"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 1 and "--tile must be at least 8" in bad.stderr
