"""Input checks shared by every public boundary: the one home of generic checks.

Each function coerces NumPy, JAX or pandas input once and raises a ``ValueError``
that names the argument and what is wrong with it. They run eagerly (outside
``jit``); traced values are passed through unchecked (:func:`is_traced`,
:func:`violated`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BASES = ("rbf", "matern12", "matern32", "matern52")
#: Kernel names (their parameters and classes: ``aniso_gp.kernels``); here so that
#: the CLI can list them without importing JAX.
KERNELS = ("rotated", "ard", "full")


def _to_numpy(x, name: str) -> np.ndarray:
    kind = type(x).__name__  # before the pandas conversion, so the message names it
    if hasattr(x, "to_numpy"):  # pandas DataFrame / Series
        x = x.to_numpy()
    if isinstance(x, str | bytes | dict | set):
        raise ValueError(f"`{name}` must be numeric array-like; got {kind}")
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError) as err:  # ragged nesting
        raise ValueError(f"`{name}` must be numeric array-like; got {kind}") from err
    if np.iscomplexobj(raw):  # NumPy would drop the imaginary part with only a warning
        raise ValueError(f"`{name}` holds complex numbers; coordinates and values must be "
                         "real")
    try:
        return raw.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be numeric array-like; got {kind}") from err


def is_traced(*xs) -> bool:
    """True when any leaf of ``xs`` is a JAX tracer (inside ``jit``/``grad``/``vmap``),
    whose values cannot be checked."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def violated(flag_fn) -> bool:
    """``bool(flag_fn())``, or False when it cannot be decided (inside a trace).

    Under ``jit`` even constants closed over become traced once an operation
    touches them, so value checks only run eagerly; shapes are always checked.
    """
    try:
        return bool(flag_fn())
    except jax.errors.ConcretizationTypeError:
        return False


def one_of(value, options, name: str):
    """``value`` if it is one of ``options`` (an array never is)."""
    try:
        ok = value in options
    except (TypeError, ValueError):  # an array compared with a string or a tuple
        ok = False
    if not ok:
        raise ValueError(f"`{name}` must be one of {tuple(options)}; got {value!r}")
    return value


def coordinates(X, name: str = "X", min_points: int = 1) -> jnp.ndarray:
    """Coerce 3-D coordinates to a float64 array of shape (N, 3).

    A DataFrame must name its columns x, y, z (taken by name, in that order): columns
    are never taken by position whatever their names.
    """
    if is_traced(X):
        return X
    if hasattr(X, "columns") and list(X.columns) != [0, 1, 2]:  # [0, 1, 2]: built unnamed
        cols = {str(c).lower(): c for c in X.columns}
        if not {"x", "y", "z"} <= set(cols):
            raise ValueError(
                f"`{name}` is a DataFrame with columns {[str(c) for c in X.columns]}; it needs "
                "columns named x, y, z (or use aniso_gp.read_table(df, x=..., y=..., z=..., "
                "value=...) to choose them)")
        X = X[[cols["x"], cols["y"], cols["z"]]]
    arr = _to_numpy(X, name)
    if arr.ndim == 1 and arr.shape[0] == 3:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must have shape (N, 3); got an array with shape {arr.shape}")
    if arr.shape[1] != 3:
        raise ValueError(
            f"`{name}` must hold 3-D coordinates, shape (N, 3); got {arr.shape[1]} columns"
        )
    if arr.shape[0] < min_points:
        raise ValueError(f"`{name}` needs at least {min_points} points; got {arr.shape[0]}")
    _finite(arr, name)
    return jnp.asarray(arr)


def values(y, n: int | None = None, name: str = "y") -> jnp.ndarray:
    """Coerce observed values to a float64 array of shape (N,)."""
    if is_traced(y):
        return y
    arr = _to_numpy(y, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must have shape (N,); got an array with shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"`{name}` has {arr.shape[0]} values but the coordinates have {n} points")
    _finite(arr, name)
    return jnp.asarray(arr)


def lengthscales(l, name: str = "lengthscales") -> jnp.ndarray:
    """Coerce three strictly positive, finite length-scales."""
    arr = vector3(l, name)
    if not is_traced(arr) and bool(jnp.any(arr <= 0)):
        raise ValueError(f"`{name}` must be strictly positive; got {np.asarray(arr).tolist()}")
    return arr


def vector3(a, name: str) -> jnp.ndarray:
    """Coerce a finite 3-vector (e.g. an axis-angle)."""
    if is_traced(a):
        return a
    arr = _to_numpy(a, name)
    if arr.shape != (3,):
        raise ValueError(f"`{name}` must have shape (3,); got {arr.shape}")
    _finite(arr, name)
    return jnp.asarray(arr)


def matrix3(M, name: str) -> jnp.ndarray:
    if is_traced(M):
        return M
    arr = _to_numpy(M, name)
    if arr.shape[-2:] != (3, 3):
        raise ValueError(f"`{name}` must have shape (..., 3, 3); got {arr.shape}")
    _finite(arr, name)
    return jnp.asarray(arr)


def positive_scalar(v, name: str, allow_zero: bool = False) -> float:
    if is_traced(v):
        return v
    try:
        if isinstance(v, bool | str | bytes):
            raise TypeError
        f = float(v)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a number; got {v!r}") from err
    if not np.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "strictly positive"
        raise ValueError(f"`{name}` must be finite and {bound}; got {v!r}")
    return f


def integer(v, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number in ``[minimum, maximum]``; NumPy integers and integral floats
    pass, booleans, strings, NaN and 2.5 do not."""
    try:
        ok = not isinstance(v, bool | str | bytes) and int(v) == v
    except (TypeError, ValueError, OverflowError):
        ok = False
    if ok and minimum <= int(v) and (maximum is None or int(v) <= maximum):
        return int(v)
    if maximum is not None:
        kind = f"an integer in [{minimum}, {maximum}]"
    else:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer >= {minimum}")
    raise ValueError(f"`{name}` must be {kind}; got {v!r}")


def positive_int(v, name: str, maximum: int | None = None) -> int:
    """A whole number >= 1 (see :func:`integer`)."""
    return integer(v, name, maximum=maximum)


#: Seeds are 32-bit: what jax.random.PRNGKey and NumPy's generators take without surprise.
MAX_SEED = 2**32 - 1


def seed(v, name: str = "seed") -> int:
    """A random seed: a whole number in [0, 2**32 - 1]."""
    return integer(v, name, minimum=0, maximum=MAX_SEED)


def flag(v, name: str) -> bool:
    """True or False (NumPy booleans too); 'yes', 1 and None are refused."""
    if isinstance(v, bool | np.bool_):
        return bool(v)
    raise ValueError(f"`{name}` must be True or False; got {v!r}")


def open_unit(v, name: str) -> float:
    """A number strictly between 0 and 1 (a probability that is neither)."""
    try:
        f = float(v)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a number in (0, 1); got {v!r}") from err
    if not 0.0 < f < 1.0:
        raise ValueError(f"`{name}` must be in (0, 1); got {v!r}")
    return f


def finite_scalar(v, name: str) -> float:
    """Any finite real number."""
    if is_traced(v):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a number; got {v!r}") from err
    if not np.isfinite(f) or isinstance(v, bool | str):
        raise ValueError(f"`{name}` must be a finite number; got {v!r}")
    return f


def tolerance(v, name: str = "tol") -> float:
    """A relative tolerance in (0, 1); a traced value passes unchecked."""
    if is_traced(v):
        return v
    f = positive_scalar(v, name)
    if f >= 1:
        raise ValueError(f"`{name}` must be in (0, 1); got {v!r}")
    return f


def fraction(v, name: str) -> float:
    """A number in (0, 1]."""
    f = positive_scalar(v, name)
    if f > 1:
        raise ValueError(f"`{name}` is a fraction, in (0, 1]; got {v!r}")
    return f


def triple(v, name: str, positive: bool) -> tuple[float, float, float]:
    """A number or 3 numbers (one per array axis) -> three finite floats (strictly
    positive if asked): voxel spacings and origins."""
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a number or 3 numbers; got {v!r}") from err
    if arr.ndim == 0:
        arr = np.full(3, float(arr))
    if arr.shape != (3,):
        raise ValueError(f"`{name}` must be a number or 3 numbers (one per array axis); "
                         f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        kind = "finite and strictly positive" if positive else "finite"
        raise ValueError(f"`{name}` must be {kind}; got {arr.tolist()}")
    return tuple(float(x) for x in arr)


def shape3(shape, name: str = "shape") -> tuple[int, int, int]:
    """Three positive integers (a volume's or a box's shape)."""
    try:
        s = tuple(int(n) for n in shape)
        exact = all(int(n) == n for n in shape)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be 3 positive integers; got {shape!r}") from err
    if len(s) != 3 or min(s) < 1 or not exact:
        raise ValueError(f"`{name}` must be 3 positive integers; got {shape!r}")
    return s


def mask(m, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """A boolean array of the volume's ``shape`` with at least one True voxel."""
    arr = np.asarray(m)
    if arr.dtype != bool:
        raise ValueError(f"`{name}` must be a boolean array; got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"`{name}` has shape {arr.shape} but the volume has {tuple(shape)}")
    if not arr.any():
        raise ValueError(f"`{name}` has no True voxel: nothing to fit")
    return arr


def base_name(base: str) -> str:
    return one_of(base, BASES, "base")


def _finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        kind = "NaN" if np.isnan(arr).any() else "infinite"
        raise ValueError(f"`{name}` contains {kind} values ({int(bad.sum())} entries)")
