"""Volume and table loaders, voxel -> point conversion and subsampling."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from aniso_gp import io
from aniso_gp.datasets import Volume


@pytest.fixture
def cube():
    return np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)


# --------------------------------------------------------------------------- #
# read_volume
# --------------------------------------------------------------------------- #
def test_read_npy(tmp_path, cube):
    p = tmp_path / "v.npy"
    np.save(p, cube)
    vol = io.read_volume(p, spacing=(0.5, 1.0, 2.0))
    assert isinstance(vol, Volume)
    assert vol.density.dtype == np.float64
    np.testing.assert_array_equal(vol.density, cube)
    assert vol.spacing == (0.5, 1.0, 2.0)
    assert io.read_volume(str(p)).units == "voxel"
    assert io.read_volume(p, shape=(4, 5, 6)).shape == (4, 5, 6)
    with pytest.raises(ValueError, match=r"shape \(4, 5, 6\), not `shape`"):
        io.read_volume(p, shape=(6, 5, 4))


def test_read_tiff_stack(tmp_path, cube):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, cube, photometric="minisblack")  # one grey page per slice
    vol = io.read_volume(p, spacing=3.0)
    np.testing.assert_array_equal(vol.density, cube)  # (page, row, column) order kept
    assert vol.spacing == (3.0, 3.0, 3.0)


def test_read_raw(tmp_path, cube):
    p = tmp_path / "v.raw"
    cube.astype("<u2").tofile(p)
    vol = io.read_volume(p, shape=(4, 5, 6), dtype="<u2")
    np.testing.assert_array_equal(vol.density, cube)
    with pytest.raises(ValueError, match="240 bytes but shape .* needs 480 bytes"):
        io.read_volume(p, shape=(4, 5, 12), dtype="<u2")
    with pytest.raises(ValueError, match="unknown volume format '.raw'.*`shape` and `dtype`"):
        io.read_volume(p)
    with pytest.raises(ValueError, match="`dtype`"):
        io.read_volume(p, shape=(4, 5, 6), dtype="not-a-dtype")


def test_read_volume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        io.read_volume(tmp_path / "missing.npy")
    bad = tmp_path / "bad.npy"
    bad.write_text("not an array")
    with pytest.raises(ValueError, match="cannot read .* as a .npy array"):
        io.read_volume(bad)
    badtif = tmp_path / "bad.tif"
    badtif.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="cannot read .* as a TIFF stack"):
        io.read_volume(badtif)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="2-D array .* must be 3-D"):
        io.read_volume(flat)
    nan = tmp_path / "nan.npy"
    a = np.zeros((2, 2, 2))
    a[1, 1, 1] = np.nan
    np.save(nan, a)
    with pytest.raises(ValueError, match="NaN values"):
        io.read_volume(nan)


# --------------------------------------------------------------------------- #
# volume_to_points
# --------------------------------------------------------------------------- #
def test_volume_to_points_physical_coordinates(cube):
    X, y = io.volume_to_points(cube, spacing=(1.0, 2.0, 3.0), origin=(10.0, 0.0, 0.0))
    assert X.shape == (cube.size, 3) and y.shape == (cube.size,)
    i, j, k = 3, 1, 4
    n = np.ravel_multi_index((i, j, k), cube.shape)
    np.testing.assert_allclose(X[n], [10.0 + i, 2.0 * j, 3.0 * k])
    assert y[n] == cube[i, j, k]
    Xm, ym = io.volume_to_points(cube, mask=cube < 5)
    assert len(ym) == 5 and np.all(ym < 5)
    vol = Volume(cube, spacing=2.0)
    Xv, _ = io.volume_to_points(vol)
    np.testing.assert_allclose(Xv, 2.0 * io.volume_to_points(cube)[0])
    with pytest.raises(ValueError, match="own spacing"):
        io.volume_to_points(vol, spacing=3.0)
    with pytest.raises(ValueError, match="`mask` has shape"):
        io.volume_to_points(cube, mask=np.ones((2, 2, 2), dtype=bool))


# --------------------------------------------------------------------------- #
# read_table
# --------------------------------------------------------------------------- #
@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "east": rng.uniform(size=10),
            "north": rng.uniform(size=10),
            "elev": rng.uniform(size=10),
            "grade": rng.normal(size=10),
            "note": ["a"] * 10,
        }
    )


def test_read_table_csv_and_dataframe(tmp_path, table):
    p = tmp_path / "t.csv"
    table.to_csv(p, index=False)
    X, y = io.read_table(p, x="east", y="north", z="elev", value="grade")
    np.testing.assert_allclose(X, table[["east", "north", "elev"]].to_numpy())
    np.testing.assert_allclose(y, table["grade"].to_numpy())
    X2, y2 = io.read_table(table, x="east", y="north", z="elev", value="grade")
    np.testing.assert_array_equal(X, X2)
    assert X.dtype == y.dtype == np.float64


def test_read_table_errors(tmp_path, table):
    with pytest.raises(ValueError, match=r"no column\(s\) x='x', value='value'.*available.*east"):
        io.read_table(table, y="north", z="elev")
    with pytest.raises(ValueError, match=r"\['note'\] are not numeric"):
        io.read_table(table, x="east", y="north", z="elev", value="note")
    with pytest.raises(FileNotFoundError, match="none.csv"):
        io.read_table(tmp_path / "none.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="cannot read .* as a CSV table"):
        io.read_table(empty)
    t = table.copy()
    t.loc[2, "grade"] = np.nan
    t.loc[5, "east"] = np.nan
    cols = dict(x="east", y="north", z="elev", value="grade")
    with pytest.raises(ValueError, match="2 rows with NaN.*dropna=True"):
        io.read_table(t, **cols)
    with pytest.warns(UserWarning, match="dropped 2 of 10 rows"):
        X, y = io.read_table(t, dropna=True, **cols)
    assert X.shape == (8, 3)


def test_read_table_shipped_oilsands():
    from aniso_gp import datasets as ds

    cols = dict(x="east_m", y="north_m", z="elevation_m", value="bitumen_wt_pct")
    X, y = io.read_table(ds.oilsands(), **cols)
    assert X.shape == (5808, 3)
    with pytest.raises(ValueError, match="2248 rows"):
        io.read_table(ds.oilsands(), **{**cols, "value": "chlorides"})


# --------------------------------------------------------------------------- #
# subsample
# --------------------------------------------------------------------------- #
def test_subsample_random_warns_and_is_reproducible():
    rng = np.random.default_rng(1)
    X, y = rng.uniform(size=(100, 3)), np.arange(100.0)
    with pytest.warns(UserWarning, match="kept 10 of 100 points"):
        Xs, ys, idx = io.subsample(X, y, 10, seed=3, return_index=True)
    assert Xs.shape == (10, 3) and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(ys, y[idx])
    np.testing.assert_array_equal(Xs, X[idx])
    with pytest.warns(UserWarning):
        again = io.subsample(X, y, 10, seed=3)[1]
        other = io.subsample(X, y, 10, seed=4)[1]
    np.testing.assert_array_equal(again, ys)
    assert not np.array_equal(other, ys)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped: no warning
        Xa, ya = io.subsample(X, y, 500)
    assert len(ya) == 100


def test_subsample_stratified_covers_sparse_regions():
    """90% of the points crowd one corner; stratified keeps a point in every
    occupied coarse cell, so the sparse region keeps its share."""
    rng = np.random.default_rng(0)
    dense = rng.uniform(0.0, 0.1, size=(9000, 3))
    sparse = rng.uniform(0.0, 1.0, size=(1000, 3))
    X = np.vstack([dense, sparse])
    y = np.r_[np.zeros(9000), np.ones(1000)]
    n = 216  # k = 6 cells per axis
    with pytest.warns(UserWarning, match="kept 216 of 10000"):
        Xs, ys, idx = io.subsample(X, y, n, method="stratified", seed=0, return_index=True)
    assert len(np.unique(idx)) == n
    k, lo, width = 6, X.min(0), X.max(0) - X.min(0)
    cells = lambda P: set(map(tuple, np.clip(((P - lo) / width * k).astype(int), 0, k - 1)))
    assert cells(X) == cells(Xs)  # every occupied cell is represented
    assert ys.mean() > 0.5  # random sampling would keep ~10% sparse points
    with pytest.warns(UserWarning):
        _, yr = io.subsample(X, y, n, method="random", seed=0)
    assert yr.mean() < 0.2


def test_subsample_errors():
    X, y = np.zeros((5, 3)), np.zeros(5)
    with pytest.raises(ValueError, match="`n` must be a positive integer"):
        io.subsample(X, y, 0)
    with pytest.raises(ValueError, match="`n` must be a positive integer"):
        io.subsample(X, y, 2.5)
    with pytest.raises(ValueError, match="`method` must be one of"):
        io.subsample(X, y, 2, method="kmeans")
    with pytest.raises(ValueError, match=r"`X` must have shape \(N, 3\)"):
        io.subsample(np.zeros((5, 2)), y, 2)
    with pytest.raises(ValueError, match=r"`y` must have shape \(5,\)"):
        io.subsample(X, np.zeros(4), 2)
    with pytest.raises(ValueError, match="`y` contains NaN"):
        io.subsample(X, np.r_[np.zeros(4), np.nan], 2)
