"""Reading volumes and tables from files into arrays of physical points.

This module's one job is getting data in: voxel volumes (``.npy``, TIFF stacks,
raw binary) become a :class:`~aniso_gp.datasets.Volume` with physical spacing;
volumes and tables become points ``X`` (N, 3) float64 and values ``y`` (N,)
float64; :func:`subsample` thins them so exact GP inference stays tractable.

Frame convention: array axis ``d`` of a volume is coordinate column ``d``
(voxel ``(i, j, k)`` at ``origin + (i, j, k) * spacing``). A TIFF stack read by
tifffile is ordered (page, row, column), so its coordinates are (z, y, x) in
that order; orientations estimated from it are in the same frame.

Every failure raises early with a message that names the file or argument:
``FileNotFoundError`` for a missing file, ``ValueError`` for an unreadable
format, a size that does not match ``shape``/``dtype``, missing columns (the
available ones are listed) and NaN/infinite values.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from aniso_gp import _validation as check
from aniso_gp.datasets import Volume

SUBSAMPLE_METHODS = ("random", "stratified")


# --------------------------------------------------------------------------- #
# Volumes
# --------------------------------------------------------------------------- #
def _existing_file(path, name: str = "path") -> Path:
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
    else:
        raise ValueError(f"`{name}` must be a file path; got {type(path).__name__}")
    if not p.exists():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{str(p)!r} is not a regular file")
    return p


def _read_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"cannot read {str(p)!r} as a .npy array: {err}") from err


def _read_tiff(p: Path) -> np.ndarray:
    import tifffile  # a dependency; imported here so .npy/raw users never pay for it

    try:
        arr = tifffile.imread(p)
    except Exception as err:  # tifffile raises several unrelated types on bad input
        raise ValueError(f"cannot read {str(p)!r} as a TIFF stack: {err}") from err
    if arr.size == 0:  # a corrupt header can give an empty array, not an error
        raise ValueError(f"cannot read {str(p)!r} as a TIFF stack: no image data found")
    return arr


def _read_raw(p: Path, shape, dtype) -> np.ndarray:
    if shape is None or dtype is None:
        raise ValueError(
            f"{str(p)!r}: unknown volume format {p.suffix!r}. .npy and .tif/.tiff are read "
            "directly; any other file is read as raw binary, which needs both `shape` and "
            f"`dtype` (got shape={shape!r}, dtype={dtype!r})"
        )
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"`dtype` {dtype!r} is not a NumPy dtype") from err
    s = check.shape3(shape)
    expected = int(np.prod(s)) * dt.itemsize
    size = p.stat().st_size
    if size != expected:
        raise ValueError(
            f"{str(p)!r} has {size} bytes but shape {s} of {dt} needs {expected} bytes "
            f"({size / dt.itemsize:.6g} values of {dt.itemsize} bytes vs {int(np.prod(s))})"
        )
    return np.fromfile(p, dtype=dt).reshape(s)


def read_volume(path, spacing=None, shape=None, dtype=None) -> Volume:
    """Read a 3-D voxel volume from ``.npy``, a TIFF stack or raw binary.

    Args:
        path:
            ``*.npy`` (NumPy, no pickles), ``*.tif``/``*.tiff`` (multi-page stack,
            array ordered (page, row, column)), or any other file read as raw
            C-ordered binary, which needs ``shape`` and ``dtype`` (e.g. ``"<u2"``
            for little-endian 16-bit).
        spacing:
            voxel size, a number or one per array axis, in your length unit; None
            means 1 (voxel units; ``units`` is then ``"voxel"``). File metadata is
            not consulted.
        shape, dtype:
            required for raw files; for ``.npy``/TIFF an optional ``shape`` is
            checked against what the file holds.

    Returns a :class:`Volume` of float64 values with origin 0.
    """
    p = _existing_file(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _read_npy(p)
    elif suffix in (".tif", ".tiff"):
        arr = _read_tiff(p)
    else:
        arr = _read_raw(p, shape, dtype)
    if shape is not None and tuple(arr.shape) != check.shape3(shape):
        raise ValueError(f"{str(p)!r} holds an array of shape {arr.shape}, not `shape`={shape!r}")
    if arr.ndim != 3:
        raise ValueError(
            f"{str(p)!r} holds a {arr.ndim}-D array of shape {arr.shape}; a volume must be 3-D"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{str(p)!r} holds {arr.dtype} values; a volume must be real numbers")
    vol = np.asarray(arr, dtype=np.float64)
    _require_finite(vol, f"the volume in {str(p)!r}")
    units = "voxel" if spacing is None else ""
    return Volume(density=vol, spacing=1.0 if spacing is None else spacing, units=units)


def volume_to_points(volume, spacing=1.0, origin=(0.0, 0.0, 0.0), mask=None):
    """Voxels as points: ``X`` (N, 3) physical voxel centres and ``y`` (N,) values.

    ``volume`` is an (n0, n1, n2) array or a :class:`Volume` (whose own spacing
    and origin are then used; the ``spacing``/``origin`` arguments must be left
    at their defaults). Voxel ``(i, j, k)`` is at ``origin + (i, j, k) * spacing``
    and rows follow C order. ``mask`` (n0, n1, n2) boolean keeps the True voxels;
    kept values must be finite.
    """
    if isinstance(volume, Volume):
        if not (np.all(np.asarray(spacing) == 1.0) and np.all(np.asarray(origin) == 0.0)):
            raise ValueError(
                "`volume` is a Volume with its own spacing and origin; "
                "do not pass `spacing`/`origin` as well"
            )
        vol = volume
    else:
        try:
            vol = Volume(density=volume, spacing=spacing, origin=origin)
        except ValueError as err:  # Volume names its field `density`; here it is `volume`
            raise ValueError(str(err).replace("`density`", "`volume`")) from None
    field = vol.to_points(mask)
    return field.X, field.y


# --------------------------------------------------------------------------- #
# Tables
# --------------------------------------------------------------------------- #
def read_table(path_or_dataframe, x="x", y="y", z="z", value="value", dropna: bool = False):
    """Coordinates and values from a CSV file or a pandas DataFrame.

    ``x``, ``y``, ``z`` name the coordinate columns and ``value`` the observed
    one. Returns ``X`` (N, 3) float64 (columns in the order x, y, z) and ``y``
    (N,) float64. Rows with a missing value in any of the four columns raise a
    ``ValueError`` that counts them, unless ``dropna=True``, which drops them
    with a ``UserWarning`` saying how many.
    """
    if isinstance(path_or_dataframe, pd.DataFrame):
        df, where = path_or_dataframe, "the DataFrame"
    else:
        p = _existing_file(path_or_dataframe, "path_or_dataframe")
        where = repr(str(p))
        sep = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
        try:
            df = pd.read_csv(p, sep=sep)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read {where} as a CSV table: {err}") from err
    dropna = check.flag(dropna, "dropna")
    names = {"x": x, "y": y, "z": z, "value": value}
    for k, v in names.items():
        same = [j for j, w in names.items() if j != k and w == v]
        if same:
            raise ValueError(f"`{k}`={v!r} is also given as `{same[0]}`: the four columns "
                             "must differ")
    missing = [f"{k}={v!r}" for k, v in names.items() if v not in df.columns]
    if missing:
        raise ValueError(
            f"{where} has no column(s) {', '.join(missing)}; "
            f"available columns: {[str(c) for c in df.columns]}"
        )
    cols = [x, y, z, value]
    sub = df[cols]
    non_numeric = [str(c) for c in cols if not pd.api.types.is_numeric_dtype(sub[c])
                   or pd.api.types.is_complex_dtype(sub[c])]
    if non_numeric:
        raise ValueError(f"{where}: column(s) {non_numeric} are not numeric")
    arr = sub.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        per_col = {str(c): int(n) for c, n in zip(cols, (~np.isfinite(arr)).sum(0), strict=True)}
        if not dropna:
            raise ValueError(
                f"{where} has {int(bad.sum())} rows with NaN/infinite values in the selected "
                f"columns (per column: {per_col}); clean them or pass dropna=True"
            )
        warnings.warn(
            f"read_table: dropped {int(bad.sum())} of {len(arr)} rows with missing values "
            f"(per column: {per_col}); kept {int((~bad).sum())}",
            UserWarning,
            stacklevel=2,
        )
        arr = arr[~bad]
        if len(arr) == 0:
            raise ValueError(f"{where}: no rows left after dropping missing values")
    return arr[:, :3].copy(), arr[:, 3].copy()


# --------------------------------------------------------------------------- #
# Subsampling
# --------------------------------------------------------------------------- #
def _points(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X, dtype=np.float64)
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 3:
        raise ValueError(f"`X` must have shape (N, 3); got {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"`y` must have shape ({X.shape[0]},) to match `X`; got {y.shape}")
    _require_finite(X, "`X`")
    _require_finite(y, "`y`")
    return X, y


def _stratified_index(X: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """One random point per occupied cell of a k^3 grid over the bounding box
    (k = floor(n^(1/3)), so there are at most n cells), then random fill to n."""
    k = max(1, int(np.floor(n ** (1.0 / 3.0) + 1e-9)))
    lo, hi = X.min(0), X.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    cell = np.clip(np.floor((X - lo) / width * k).astype(np.int64), 0, k - 1)
    cell_id = (cell[:, 0] * k + cell[:, 1]) * k + cell[:, 2]
    # A random permutation, then the first occurrence of each cell: a uniformly
    # random representative per occupied cell.
    perm = rng.permutation(len(X))
    _, first = np.unique(cell_id[perm], return_index=True)
    chosen = perm[first]
    if len(chosen) > n:  # cannot happen with k^3 <= n, kept as a guard
        chosen = rng.choice(chosen, size=n, replace=False)
    rest = np.setdiff1d(np.arange(len(X)), chosen)
    fill = rng.choice(rest, size=n - len(chosen), replace=False)
    return np.concatenate([chosen, fill])


def subsample(X, y, n: int, method: str = "random", seed: int = 0, return_index: bool = False):
    """Keep ``n`` of the N points, reproducibly, so exact GP inference stays tractable.

    ``"random"``: a uniform random subset. ``"stratified"``: cover space first,
    one random point in each occupied cell of a ``k x k x k`` grid over the
    bounding box (``k = floor(n^(1/3))``, each axis divided by its own extent),
    then the rest at random; this keeps sparse regions represented when the
    sampling density varies (drill holes, masked volumes).

    Returns ``(X_sub, y_sub)`` (and the kept indices when ``return_index``), in
    the original order. When points are dropped a ``UserWarning`` says how many
    were kept out of how many; ``n >= N`` returns everything without warning.
    """
    X, y = _points(X, y)
    check.one_of(method, SUBSAMPLE_METHODS, "method")
    n, N = check.positive_int(n, "n"), X.shape[0]
    seed = check.seed(seed)
    if n >= N:
        idx = np.arange(N)
    else:
        rng = np.random.default_rng(seed)
        if method == "random":
            idx = rng.choice(N, size=n, replace=False)
        else:
            idx = _stratified_index(X, n, rng)
        idx = np.sort(idx)
        warnings.warn(
            f"subsample: kept {n} of {N} points ({method}, seed={seed})",
            UserWarning,
            stacklevel=2,
        )
    out = (X[idx], y[idx])
    return (*out, idx) if return_index else out


def _require_finite(a: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        kind = "NaN" if np.isnan(a).any() else "infinite"
        raise ValueError(f"{what} contains {kind} values ({int(bad.sum())} entries)")
