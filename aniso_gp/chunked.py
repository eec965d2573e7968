r"""Volumes read lazily, a box at a time, in the file's own dtype.

:func:`open_volume` returns a :class:`LazyVolume`: a picklable reader (a path and
how to read it, no open file and no data), the physical spacing and origin, an
optional crop box and an optional mask (a mask volume and/or a threshold). It
holds no voxel values: :meth:`LazyVolume.read` reads one box (what a tile of
:func:`aniso_gp.orientation_map.orientation_map` needs, in the worker that fits
it) and :meth:`LazyVolume.to_dask` gives the whole volume as a Dask array for
full passes. Nothing here converts a whole volume to float64.

Formats (by suffix, or a folder):

=====================  ======================================================
``.npy``               memory-mapped (``np.load(mmap_mode="r")``)
raw binary             memory-mapped; needs ``shape`` and ``dtype``
``.tif``/``.tiff``     memory-mapped when uncompressed and contiguous, else
                       tifffile's Zarr store (pages decoded on demand)
``.zarr`` / OME-Zarr   an array, a group with one 3-D array, or the first
                       (full-resolution) level of OME-Zarr ``multiscales``
``.h5``/``.hdf5``      h5py hyperslab reads; ``dataset`` names the array
a folder               one 2-D slice per file (``.tif``/``.tiff``/``.npy``),
                       sorted by the numbers in their names: axis 0
=====================  ======================================================

Frame: array axis ``d`` is coordinate ``d`` (voxel ``(i, j, k)`` at ``origin +
(i, j, k) * spacing``), as everywhere in aniso_gp.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np

from aniso_gp import _validation as check

SLICE_SUFFIXES = (".tif", ".tiff", ".npy")
H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


class _Reader:
    """A volume on disk: ``shape``, ``dtype`` and ``reader[i0:i1, j0:j1, k0:k1]``.

    Pickles as its path and parameters; each process opens the file on first use
    (a Dask worker never receives an open file or any voxel values).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle = None

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}

    def _open(self):
        raise NotImplementedError

    @property
    def handle(self):
        if self._handle is None:
            self._handle = self._open()
        return self._handle

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.handle.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.handle.dtype)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.handle[key])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class _Npy(_Reader):
    def _open(self):
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"cannot read {str(self.path)!r} as a .npy array: {err}") from err


class _Raw(_Reader):
    def __init__(self, path, shape, dtype, offset: int = 0):
        super().__init__(path)
        self._shape, self._dtype, self.offset = shape, dtype, int(offset)

    def _open(self):
        return np.memmap(self.path, dtype=self._dtype, mode="r", shape=self._shape,
                         offset=self.offset)


class _Tiff(_Reader):
    def _open(self):
        import tifffile
        import zarr

        try:  # uncompressed, contiguous: memory-mapped, a box reads only its bytes
            return tifffile.memmap(self.path, mode="r")
        except (ValueError, OSError):
            pass
        try:  # otherwise tifffile's Zarr store: pages (or TIFF tiles) decoded on demand
            store = tifffile.imread(self.path, aszarr=True, series=0, level=0)
            return zarr.open(store, mode="r")
        except Exception as err:  # tifffile raises several unrelated types on bad input
            raise ValueError(f"cannot read {str(self.path)!r} as a TIFF stack: {err}") from err


class _Zarr(_Reader):
    def __init__(self, path, dataset=None):
        super().__init__(path)
        self.dataset = dataset

    def _open(self):
        import zarr

        try:
            node = zarr.open(str(self.path), mode="r")
        except Exception as err:
            raise ValueError(f"cannot open {str(self.path)!r} as Zarr: {err}") from err
        if isinstance(node, zarr.Array):
            return _squeezed(node, self.path)
        if self.dataset is not None:
            if self.dataset not in node:
                raise ValueError(f"`dataset` {self.dataset!r} is not in {str(self.path)!r}; "
                                 f"it holds {sorted(node.keys())}")
            return _squeezed(node[self.dataset], self.path)
        ome = node.attrs.get("ome", {}).get("multiscales") or node.attrs.get("multiscales")
        if ome:  # OME-Zarr: the first dataset is the full resolution
            return _squeezed(node[ome[0]["datasets"][0]["path"]], self.path)
        arrays = [k for k, v in node.arrays() if v.ndim == 3]
        if len(arrays) != 1:
            raise ValueError(f"{str(self.path)!r} is a Zarr group with {len(arrays)} 3-D "
                             f"arrays {arrays}; name one with `dataset`")
        return node[arrays[0]]


class _Hdf5(_Reader):
    def __init__(self, path, dataset=None):
        super().__init__(path)
        self.dataset = dataset

    def _open(self):
        import h5py

        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise ValueError(f"cannot open {str(self.path)!r} as HDF5: {err}") from err
        if self.dataset is not None:
            if self.dataset not in f or not isinstance(f[self.dataset], h5py.Dataset):
                raise ValueError(f"`dataset` {self.dataset!r} is not a dataset in "
                                 f"{str(self.path)!r}")
            return _squeezed(f[self.dataset], self.path)
        found = []
        f.visititems(lambda name, obj: found.append(name)
                     if isinstance(obj, h5py.Dataset) and obj.ndim == 3 else None)
        if len(found) != 1:
            raise ValueError(f"{str(self.path)!r} holds {len(found)} 3-D datasets {found}; "
                             "name one with `dataset`")
        return f[found[0]]


class _Slices(_Reader):
    """A folder of 2-D images, one per index of axis 0."""

    def _open(self):
        files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in SLICE_SUFFIXES),
                       key=_natural_key)
        if not files:
            raise ValueError(f"the folder {str(self.path)!r} holds no slice images "
                             f"({', '.join(SLICE_SUFFIXES)})")
        first = _read_slice(files[0])
        if first.ndim != 2:
            raise ValueError(f"{str(files[0])!r} is a {first.ndim}-D image; a slice folder "
                             "needs 2-D images")
        return files, first.shape, first.dtype

    @property
    def shape(self):
        files, shape, _ = self.handle
        return (len(files), *shape)

    @property
    def dtype(self):
        return np.dtype(self.handle[2])

    def __getitem__(self, key):
        files, shape, dtype = self.handle
        k0, rest = key[0], key[1:]
        out = []
        for p in files[k0]:
            img = _read_slice(p)
            if img.shape != shape or img.dtype != dtype:
                raise ValueError(f"slice {str(p)!r} is {img.shape} {img.dtype}, unlike the "
                                 f"first slice ({shape} {dtype})")
            out.append(img[rest])
        return np.stack(out) if out else np.empty((0, *np.empty(shape)[rest].shape), dtype)


def _read_slice(p: Path) -> np.ndarray:
    if p.suffix.lower() == ".npy":
        return np.load(p, mmap_mode="r", allow_pickle=False)
    import tifffile

    return tifffile.imread(p)


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _squeezed(arr, path):
    """An array with leading singleton axes (OME-Zarr's t, c) dropped, if it is then 3-D."""
    lead = arr.ndim - 3
    if lead < 0 or any(n != 1 for n in arr.shape[:lead]):
        raise ValueError(f"{str(path)!r} holds an array of shape {arr.shape}; a volume must "
                         "be 3-D (leading axes of length 1 are dropped)")
    return arr if lead == 0 else _Leading(arr, lead)


class _Leading:
    """View of an array with ``lead`` leading length-1 axes dropped."""

    def __init__(self, arr, lead):
        self.arr, self.lead = arr, lead
        self.shape, self.dtype = arr.shape[lead:], arr.dtype

    def __getitem__(self, key):
        return self.arr[(0,) * self.lead + tuple(key)]


def _reader(path, shape, dtype, dataset, offset) -> _Reader:
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"`path` must be a file or folder path; got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {str(p)!r}")
    suffix = p.suffix.lower()
    if p.is_dir() and (suffix == ".zarr" or (p / "zarr.json").exists()
                       or (p / ".zarray").exists() or (p / ".zgroup").exists()):
        return _Zarr(p, dataset)
    if p.is_dir():
        return _Slices(p)
    if suffix == ".npy":
        return _Npy(p)
    if suffix in (".tif", ".tiff"):
        return _Tiff(p)
    if suffix in H5_SUFFIXES:
        return _Hdf5(p, dataset)
    if shape is None or dtype is None:
        raise ValueError(
            f"{str(p)!r}: unknown volume format {suffix!r}. .npy, .tif/.tiff, .zarr, HDF5 "
            "and folders of slices are read directly; any other file is read as raw binary, "
            f"which needs both `shape` and `dtype` (got shape={shape!r}, dtype={dtype!r})")
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"`dtype` {dtype!r} is not a NumPy dtype") from err
    s = check.shape3(shape)
    expected = int(offset) + int(np.prod(s)) * dt.itemsize
    if p.stat().st_size != expected:
        raise ValueError(f"{str(p)!r} has {p.stat().st_size} bytes but `shape` {s} of {dt} "
                         f"after `offset` {offset} needs {expected}")
    return _Raw(p, s, dt, offset)


def _checked(reader: _Reader, what: str) -> _Reader:
    shape, dtype = reader.shape, reader.dtype
    if len(shape) != 3:
        raise ValueError(f"{what} holds a {len(shape)}-D array of shape {shape}; a volume must "
                         "be 3-D")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
            or np.issubdtype(dtype, np.bool_)):
        raise ValueError(f"{what} holds {dtype} values; a volume must be real numbers")
    return reader


@dataclasses.dataclass(frozen=True)
class LazyVolume:
    """A volume on disk (or in memory), read a box at a time.

    Attributes:
        reader: what reads the values (``shape``, ``dtype``, ``[slices]``): a file
            reader, a NumPy array, or anything sliceable such as a Dask or Zarr array.
        spacing, origin: voxel size and the centre of voxel (0, 0, 0) of the
            *cropped* volume.
        start, shape: the crop within ``reader`` (voxels).
        mask_reader: optional boolean volume of ``reader``'s shape, True where
            observed.
        threshold: optional; voxels with a value below it (air, pores) are masked.
        units: the length unit of ``spacing``.
    """

    reader: object
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    start: tuple[int, int, int]
    shape: tuple[int, int, int]
    mask_reader: object = None
    threshold: float | None = None
    units: str = ""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.reader.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(self, start, size) -> tuple[np.ndarray, np.ndarray]:
        """Values (file dtype) and observed voxels (bool) of the box ``start + [0, size)``.

        Voxels of the box outside the volume read as 0 and unobserved, so every box
        of one ``size`` has that shape (the tiles of a map share one compilation).
        """
        size = tuple(int(n) for n in size)
        lo = [max(int(s), 0) for s in start]
        hi = [min(int(s) + n, m) for s, n, m in zip(start, size, self.shape, strict=True)]
        values = np.zeros(size, dtype=self.dtype)
        observed = np.zeros(size, dtype=bool)
        if any(h <= l for l, h in zip(lo, hi, strict=True)):
            return values, observed
        src = tuple(slice(o + l, o + h) for o, l, h in zip(self.start, lo, hi, strict=True))
        dst = tuple(slice(l - int(s), h - int(s)) for l, h, s in zip(lo, hi, start, strict=True))
        block = np.asarray(self.reader[src])
        values[dst] = block
        obs = np.ones(block.shape, dtype=bool)
        if np.issubdtype(block.dtype, np.floating):
            obs &= np.isfinite(block)
        if self.threshold is not None:
            obs &= block >= self.threshold
        if self.mask_reader is not None:
            obs &= np.asarray(self.mask_reader[src], dtype=bool)
        observed[dst] = obs
        return values, observed

    def crop(self, box) -> LazyVolume:
        """The sub-volume ``box = ((i0, i1), (j0, j1), (k0, k1))`` (voxels, half-open)."""
        b = _box(box, self.shape)
        start = tuple(s + lo for s, (lo, _) in zip(self.start, b, strict=True))
        origin = tuple(o + lo * d for o, (lo, _), d in zip(self.origin, b, self.spacing,
                                                           strict=True))
        return dataclasses.replace(self, start=start, origin=origin,
                                   shape=tuple(hi - lo for lo, hi in b))

    def to_dask(self, chunks="auto"):
        """The cropped volume as a Dask array in its own dtype (reads happen on compute)."""
        import dask.array as da

        arr = da.from_array(self.reader, chunks=chunks, lock=False, asarray=True,
                            meta=np.empty((0, 0, 0), dtype=self.dtype),
                            name=f"aniso-gp-volume-{id(self.reader):x}")
        return arr[tuple(slice(s, s + n) for s, n in zip(self.start, self.shape, strict=True))]

    def axis_coordinates(self) -> list[np.ndarray]:
        return [o + d * np.arange(n) for o, d, n in zip(self.origin, self.spacing, self.shape,
                                                        strict=True)]


def _box(box, shape) -> tuple[tuple[int, int], ...]:
    try:
        b = tuple((int(lo), int(hi)) for lo, hi in box)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`box` must be three (start, stop) voxel pairs; got {box!r}") from err
    if len(b) != 3 or any(not 0 <= lo < hi <= n for (lo, hi), n in zip(b, shape, strict=False)):
        raise ValueError(f"`box` must be three (start, stop) pairs with 0 <= start < stop <= "
                         f"the volume's shape {tuple(shape)}; got {box!r}")
    return b


def open_volume(path, spacing=None, *, origin=None, shape=None, dtype=None, offset: int = 0,
                dataset: str | None = None, mask=None, threshold: float | None = None,
                box=None, units: str = "") -> LazyVolume:
    """Open a volume without reading it (see the module docstring for the formats).

    Args:
        path: a file, a folder of slices, or a Zarr store; or an array already in
            memory (NumPy, Dask, Zarr), used as it is.
        spacing: voxel size, one number or one per array axis (default 1: voxels).
        origin: centre of voxel (0, 0, 0) before cropping (default 0).
        shape, dtype, offset: for raw binary files (``offset`` bytes of header).
        dataset: the array's name inside an HDF5 file or a Zarr group.
        mask: optional boolean volume of the same shape (a path opened the same way,
            or an array), True where observed.
        threshold: optional; voxels below it are masked (air, pores).
        box: optional crop ``((i0, i1), (j0, j1), (k0, k1))`` in voxels.
        units: the length unit of ``spacing``.
    """
    if hasattr(path, "shape") and hasattr(path, "dtype") and hasattr(path, "__getitem__"):
        reader, what = path, f"the {type(path).__name__} given as `path`"
    else:
        reader, what = _reader(path, shape, dtype, dataset, offset), repr(str(path))
    _checked(reader, what)
    vshape = tuple(int(n) for n in reader.shape)
    mask_reader = None
    if mask is not None:
        if hasattr(mask, "shape") and hasattr(mask, "__getitem__"):
            mask_reader = mask
        else:
            mask_reader = _reader(mask, vshape, bool, None, 0)
        if tuple(mask_reader.shape) != vshape:
            raise ValueError(f"`mask` has shape {tuple(mask_reader.shape)} but the volume has "
                             f"{vshape}")
    if threshold is not None:
        threshold = check.finite_scalar(threshold, "threshold")
    vol = LazyVolume(
        reader=reader,
        spacing=check.triple(1.0 if spacing is None else spacing, "spacing", positive=True),
        origin=check.triple((0.0, 0.0, 0.0) if origin is None else origin, "origin",
                            positive=False),
        start=(0, 0, 0), shape=vshape, mask_reader=mask_reader, threshold=threshold,
        units=units if spacing is not None else (units or "voxel"),
    )
    return vol if box is None else vol.crop(box)
