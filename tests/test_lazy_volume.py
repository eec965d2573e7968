"""Lazy volumes: every format reads the same values as an eager NumPy read, a box at a
time, in the file's dtype; masks, thresholds and crops; clear errors."""

from __future__ import annotations

import pickle
import tracemalloc

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from aniso_gp import chunked


@pytest.fixture(scope="module")
def array():
    return np.random.default_rng(0).integers(0, 4000, size=(9, 10, 11)).astype(np.uint16)


def _write(kind, arr, root):
    if kind == "npy":
        p = root / "v.npy"
        np.save(p, arr)
        return chunked.open_volume(p)
    if kind == "raw":
        p = root / "v.raw"
        p.write_bytes(b"HEADER" + arr.tobytes())
        return chunked.open_volume(p, shape=arr.shape, dtype=arr.dtype, offset=6)
    if kind == "tiff":
        p = root / "v.tif"
        tifffile.imwrite(p, arr)
        return chunked.open_volume(p)
    if kind == "tiff-compressed":  # not memory-mappable: tifffile's Zarr store
        p = root / "vz.tif"
        tifffile.imwrite(p, arr, compression="zlib", tile=(16, 16))
        return chunked.open_volume(p)
    if kind == "slices":
        d = root / "slices"
        d.mkdir()
        for i, img in enumerate(arr):  # names sort numerically, not as text
            tifffile.imwrite(d / f"slice_{i}.tif", img)
        return chunked.open_volume(d)
    if kind == "zarr":
        p = root / "v.zarr"
        z = zarr.create_array(str(p), shape=arr.shape, chunks=(4, 4, 4), dtype=arr.dtype)
        z[:] = arr
        return chunked.open_volume(p)
    if kind == "ome-zarr":
        p = root / "ome.zarr"
        g = zarr.open_group(str(p), mode="w")
        g.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}]}]
        g.create_array("0", shape=(1, 1, *arr.shape), chunks=(1, 1, 4, 4, 4),
                       dtype=arr.dtype)[:] = arr[None, None]
        g.create_array("1", shape=(1, 1, 4, 5, 5), dtype=arr.dtype)
        return chunked.open_volume(p)
    if kind == "hdf5":
        p = root / "v.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("scan/density", data=arr, chunks=(3, 5, 5))
            f.create_dataset("meta/angles", data=np.arange(5.0))
        return chunked.open_volume(p)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["npy", "raw", "tiff", "tiff-compressed", "slices", "zarr",
                                  "ome-zarr", "hdf5"])
def test_every_format_reads_what_numpy_reads(kind, array, tmp_path):
    vol = _write(kind, array, tmp_path)
    assert vol.shape == array.shape and vol.dtype == array.dtype
    np.testing.assert_array_equal(vol.to_dask().compute(), array)
    values, observed = vol.read((2, 3, 4), (5, 5, 5))
    assert values.dtype == np.uint16  # the file's dtype, not float64
    np.testing.assert_array_equal(values, array[2:7, 3:8, 4:9])
    assert observed.all()
    # A box past the edge keeps its shape: the rest reads as unobserved zeros.
    values, observed = pickle.loads(pickle.dumps(vol)).read((6, 7, 8), (5, 5, 5))
    np.testing.assert_array_equal(values[:3, :3, :3], array[6:, 7:, 8:])
    assert observed[:3, :3, :3].all() and observed.sum() == 27 and values[3:].sum() == 0


def test_mask_threshold_and_crop(array, tmp_path):
    mask = np.zeros(array.shape, bool)
    mask[1:8, 2:9, 3:10] = True
    np.save(tmp_path / "m.npy", mask)
    np.save(tmp_path / "v.npy", array)
    vol = chunked.open_volume(tmp_path / "v.npy", spacing=(2.0, 1.0, 0.5),
                              mask=tmp_path / "m.npy", threshold=1000, box=((1, 8), (0, 10),
                                                                             (2, 11)))
    assert vol.shape == (7, 10, 9)
    assert vol.origin == (2.0, 0.0, 1.0)
    values, observed = vol.read((0, 0, 0), vol.shape)
    np.testing.assert_array_equal(values, array[1:8, :, 2:11])
    np.testing.assert_array_equal(observed, mask[1:8, :, 2:11] & (array[1:8, :, 2:11] >= 1000))


def test_a_tile_of_a_large_file_reads_only_its_box(tmp_path):
    """A 256^3 uint16 file (32 MiB): reading a 32^3 tile allocates about the tile's bytes,
    not a float64 (or any) copy of the volume."""
    p = tmp_path / "big.raw"
    n = 256
    with open(p, "wb") as f:
        f.truncate(n**3 * 2)
    vol = chunked.open_volume(p, shape=(n, n, n), dtype="<u2")
    tracemalloc.start()
    values, observed = vol.read((100, 100, 100), (32, 32, 32))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert values.dtype == np.uint16
    assert peak < 20 * 32**3, peak  # the tile (64 KiB) and its mask, not 32 MiB
    assert vol.to_dask().dtype == np.uint16


def test_bad_input_names_the_argument(array, tmp_path):
    np.save(tmp_path / "v.npy", array)
    np.save(tmp_path / "flat.npy", array[0])
    with pytest.raises(FileNotFoundError, match="no such file"):
        chunked.open_volume(tmp_path / "missing.npy")
    (tmp_path / "v.raw").write_bytes(array.tobytes())
    with pytest.raises(ValueError, match="raw binary, which needs both `shape` and `dtype`"):
        chunked.open_volume(tmp_path / "v.raw")
    with pytest.raises(ValueError, match="has 1980 bytes but `shape`"):
        chunked.open_volume(tmp_path / "v.raw", shape=(9, 10, 12), dtype="<u2")
    with pytest.raises(ValueError, match="3-D"):
        chunked.open_volume(tmp_path / "flat.npy")
    with pytest.raises(ValueError, match="`mask` has shape"):
        chunked.open_volume(tmp_path / "v.npy", mask=np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="`box`"):
        chunked.open_volume(tmp_path / "v.npy", box=((0, 20), (0, 5), (0, 5)))
    with pytest.raises(ValueError, match="`spacing`"):
        chunked.open_volume(tmp_path / "v.npy", spacing=-1)
    with pytest.raises(ValueError, match="`threshold`"):
        chunked.open_volume(tmp_path / "v.npy", threshold=float("nan"))
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = array
        f["b"] = array
    with pytest.raises(ValueError, match="name one with `dataset`"):
        chunked.open_volume(tmp_path / "two.h5")
    with pytest.raises(ValueError, match="`dataset` 'c'"):
        chunked.open_volume(tmp_path / "two.h5", dataset="c")
    assert chunked.open_volume(tmp_path / "two.h5", dataset="b").shape == array.shape
