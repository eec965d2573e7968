"""Shipped real data (oil sands, laminated needle), the Volume type and the nano-brick."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from aniso_gp import datasets as ds

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- #
# Shipped files
# --------------------------------------------------------------------------- #
def test_readme_sha256_matches_shipped_files():
    """data/README.md states the sha256 of every shipped file; keep it honest."""
    readme = (REPO / "data" / "README.md").read_text()
    listed = dict(
        (name, digest)
        for digest, name in re.findall(r"`([0-9a-f]{64})`\s+`aniso_gp/data/([\w.-]+)`", readme)
    )
    shipped = sorted(p.name for p in (REPO / "aniso_gp" / "data").iterdir() if p.is_file())
    assert sorted(listed) == shipped
    for name, digest in listed.items():
        data = (REPO / "aniso_gp" / "data" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
    total = sum((REPO / "aniso_gp" / "data" / n).stat().st_size for n in shipped)
    assert total < 1_000_000


def test_oilsands_shape_units_and_missing():
    df = ds.oilsands()
    assert df.shape == (5808, 8)
    assert list(df.columns) == list(ds.OILSANDS_UNITS)
    assert df.attrs["units"]["elevation_m"] == "m"
    assert df.attrs["units"]["bitumen_wt_pct"] == "wt%"
    assert "MIT" in df.attrs["licence"]
    assert df["drillhole"].nunique() == 280
    assert str(df["facies_code"].dtype) == "Int64"
    # -9 became missing, only where the source uses it.
    assert df["chlorides"].isna().sum() == 2248
    assert df["facies_code"].isna().sum() == 1132
    complete = ["drillhole", "east_m", "north_m", "elevation_m", "bitumen_wt_pct", "fines_wt_pct"]
    assert not df[complete].isna().any().any()
    assert (df[["bitumen_wt_pct", "fines_wt_pct"]] >= 0).all().all()
    assert (df[["bitumen_wt_pct", "fines_wt_pct"]] <= 100).all().all()
    # Layered geology: metres, with a vertical extent far below the horizontal ones.
    xyz = df[["east_m", "north_m", "elevation_m"]]
    span = xyz.max() - xyz.min()
    assert span["elevation_m"] < 200 < 1000 < min(span["east_m"], span["north_m"])
    # The first source row, copied verbatim.
    first = df.iloc[0]
    assert (first["drillhole"], first["east_m"], first["north_m"]) == (2, 1245.0, 10687.09)
    assert (first["elevation_m"], first["bitumen_wt_pct"]) == (257.5, 7.378)


def test_laminated_needle_shape_units_and_layering():
    vol = ds.laminated_needle()
    assert isinstance(vol, ds.Volume)
    assert vol.shape == (32, 14, 14)
    assert vol.density.dtype == np.float64
    assert vol.spacing == (6.72, 6.72, 6.72)
    assert vol.units == "nm"
    assert np.all(np.isfinite(vol.density))
    np.testing.assert_allclose(vol.extent, [215.04, 94.08, 94.08])
    # Inside the needle: no empty background (background FBP values are ~0-150).
    assert vol.density.min() > 400
    # Laminae are stacked along axis 0: slab means vary along it far more than across.
    var_along = vol.density.mean(axis=(1, 2)).var()
    var_across = max(vol.density.mean(axis=(0, 2)).var(), vol.density.mean(axis=(0, 1)).var())
    assert var_along > 20 * var_across
    pts = vol.to_points()
    assert pts.X.shape == (32 * 14 * 14, 3)
    np.testing.assert_allclose(pts.X[0], ds.NEEDLE_ORIGIN_NM)
    np.testing.assert_allclose(pts.X[-1] - pts.X[0], [31 * 6.72, 13 * 6.72, 13 * 6.72])


def test_polymer_fibres_is_the_documented_crop_with_fibres_along_axis_1():
    vol = ds.polymer_fibres()
    assert vol.shape == (48, 48, 48) and vol.units == "voxel"
    assert vol.density.min() >= 0 and vol.density.max() <= 255
    raw = REPO.parent / "shared" / "data" / "polymer3d_8bit_128x128x128.raw"
    if raw.exists():  # the development copy: the crop is the stated block
        full = np.fromfile(raw, np.uint8).reshape(128, 128, 128)
        np.testing.assert_array_equal(vol.density, full[40:88, 0:48, 40:88])
    # Fibres along axis 1: neighbouring voxels along it are the most alike (the
    # lag-1 autocorrelation is largest there).
    x = vol.density - vol.density.mean()
    rho = [np.mean(x * np.roll(x, 1, axis=a)) / np.mean(x * x) for a in range(3)]
    assert int(np.argmax(rho)) == 1, rho


def test_data_path_missing_file_is_clear():
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ds.data_path("nope.csv")


# --------------------------------------------------------------------------- #
# Volume
# --------------------------------------------------------------------------- #
def test_volume_to_points_coordinates_and_mask():
    dens = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    vol = ds.Volume(dens, spacing=(0.5, 2.0, 1.0), origin=(1.0, 0.0, -1.0), units="mm")
    pts = vol.to_points()
    assert pts.X.shape == (24, 3) and pts.y.shape == (24,)
    n = (1 * 3 + 2) * 4 + 3  # voxel (1, 2, 3) in C order
    np.testing.assert_allclose(pts.X[n], [1.0 + 0.5, 0.0 + 4.0, -1.0 + 3.0])
    assert pts.y[n] == dens[1, 2, 3]
    mask = dens > 20
    sub = vol.to_points(mask)
    np.testing.assert_array_equal(sub.y, [21.0, 22.0, 23.0])


def test_volume_errors_name_the_argument():
    with pytest.raises(ValueError, match="`density` must be a non-empty 3-D"):
        ds.Volume(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="`spacing`"):
        ds.Volume(np.zeros((2, 2, 2)), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="`f` has shape"):
        ds.Volume(np.zeros((2, 2, 2)), f=np.zeros((2, 2, 3)))
    dens = np.zeros((2, 2, 2))
    dens[0, 0, 0] = np.nan
    vol = ds.Volume(dens)
    with pytest.raises(ValueError, match="1 NaN/infinite values.*mask"):
        vol.to_points()
    assert len(vol.to_points(np.isfinite(dens))) == 7
    with pytest.raises(ValueError, match="`mask` must be a boolean"):
        vol.to_points(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="`mask` has shape"):
        vol.to_points(np.ones((2, 2), dtype=bool))


# --------------------------------------------------------------------------- #
# Nano-brick
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def brick():
    return ds.nano_brick()


def test_nano_brick_truth(brick):
    t = brick.truth
    assert brick.shape == (24, 24, 24)
    assert brick.density.shape == brick.f.shape == (24, 24, 24)
    np.testing.assert_allclose(t.lengthscales, [10.0, 6.0, 2.0])
    R = t.axes
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ np.diag(t.lengthscales**-2.0) @ R.T, t.metric, atol=1e-12)
    assert t.base == "rbf" and t.variance == 1.0 and t.noise_sd == 0.1
    # Clearly rotated: every principal axis >= 30 degrees from every grid axis.
    assert np.degrees(np.arccos(np.abs(R).max())) > 30
    # The shortest length-scale is a few voxels.
    assert 1.5 <= t.lengthscales[-1] / min(brick.spacing) <= 5
    resid = brick.density - brick.f
    assert resid.std() == pytest.approx(0.1, rel=0.05)


def test_nano_brick_reproducible_and_textures():
    a = ds.nano_brick(shape=(8, 9, 10), seed=3)
    b = ds.nano_brick(shape=(8, 9, 10), seed=3)
    c = ds.nano_brick(shape=(8, 9, 10), seed=4)
    np.testing.assert_array_equal(a.density, b.density)
    assert not np.allclose(a.density, c.density)
    fib = ds.nano_brick(shape=(8, 8, 8), texture="fibrous")
    np.testing.assert_allclose(fib.truth.lengthscales, [10.0, 3.0, 2.0])
    scaled = ds.nano_brick(shape=(8, 8, 8), spacing=0.5)
    np.testing.assert_allclose(scaled.truth.lengthscales, [5.0, 3.0, 1.0])
    assert scaled.spacing == (0.5, 0.5, 0.5)


def test_nano_brick_errors():
    with pytest.raises(ValueError, match="`texture` must be one of"):
        ds.nano_brick(texture="woven")
    with pytest.raises(ValueError, match="do not describe a laminated texture.*fibrous"):
        ds.nano_brick(texture="laminated", lengthscales=(10.0, 3.0, 2.0))
    with pytest.raises(ValueError, match="no single gap"):
        ds.nano_brick(texture="fibrous", lengthscales=(3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="`shape`"):
        ds.nano_brick(shape=(24, 24))
    with pytest.raises(ValueError, match="`noise_sd`"):
        ds.nano_brick(noise_sd=-1.0)
    with pytest.raises(ValueError, match="`lengthscales`"):
        ds.nano_brick(lengthscales=(1.0, -1.0, 1.0))


def _variogram(f: np.ndarray, d) -> float:
    """0.5 mean (f(x + d) - f(x))^2 over all grid pairs at integer lag d."""
    a = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(d, f.shape, strict=True))
    b = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(d, f.shape, strict=True))
    return 0.5 * float(np.mean((f[b] - f[a]) ** 2))


def test_nano_brick_variogram_matches_kernel_along_principal_axes():
    """Independent check of the circulant-embedding draw: the empirical variogram at
    grid lags near t * l_i * v_i (t = 1, 2) against the kernel's
    gamma(d) = s^2 (1 - exp(-d^T M d / 2)) at those exact lags, over 3 seeds."""
    l = (4.0, 2.5, 1.5)
    emp, exact = [], []
    for seed in range(3):
        v = ds.nano_brick(shape=(32, 32, 32), lengthscales=l, noise_sd=0.0, seed=seed)
        M, V, ls = v.truth.metric, v.truth.axes, v.truth.lengthscales
        row = []
        for i in range(3):
            for t in (1.0, 2.0):
                d = np.round(t * ls[i] * V[:, i]).astype(int)
                row.append(_variogram(v.f, d))
                if seed == 0:
                    exact.append(1.0 - np.exp(-0.5 * d @ M @ d))
        emp.append(row)
    emp = np.mean(emp, axis=0)
    exact = np.asarray(exact)
    assert np.max(np.abs(emp - exact)) < 0.1, (emp, exact)
    assert np.mean(np.abs(emp - exact)) < 0.04, (emp, exact)


def test_nano_brick_gradient_tensor_recovers_axes(brick):
    """E[grad f grad f^T] = s^2 M for the RBF kernel, so the eigenvectors of the
    empirical gradient covariance estimate the principal axes (finite differences
    bias the eigenvalues a little, not the laminated normal)."""
    g = np.stack(np.gradient(brick.f), -1).reshape(-1, 3)
    _, U = np.linalg.eigh(np.cov(g.T))  # ascending eigenvalues = long, mid, short axes
    ang = np.degrees(np.arccos(np.abs(np.sum(U * brick.truth.axes, axis=0))))
    assert ang[2] < 5.0, ang  # lamina normal
    assert ang.max() < 30.0, ang


def test_embedding_sizes_cover_kernel_and_block():
    M = np.diag([1 / 10.0**2, 1 / 2.0**2, 1 / 2.0**2])
    m = ds.embedding_sizes((24, 24, 24), (1.0, 1.0, 1.0), M)
    assert m[0] >= 120 and m[1] >= 48 and m[2] >= 48
