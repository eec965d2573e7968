r"""Rotations and anisotropic metrics in 3-D.

Conventions (docs/design.md section 2):

* ``R = exp(a)`` for an axis-angle vector ``a`` (3,), Rodrigues' formula
  :math:`R = I + \frac{\sin t}{t} K + \frac{1-\cos t}{t^2} K^2`, ``t = |a|``,
  ``K = hat(a)``.
* ``M = R diag(l^-2) R^T``: column ``i`` of ``R`` is the i-th principal direction,
  with length-scale ``l_i``.
* ``(l, R)`` and ``(P l, R P^T)`` give the same ``M`` for the 24 signed
  permutations ``P`` with ``det P = +1``. The canonical labelling sorts ``l``
  descending and then picks, among the four sign patterns, the rotation with the
  smallest angle (``|a| <= pi``).

Every function is pure ``jax.numpy``: jit-, vmap- and grad-safe in float64.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

# Below this angle the Rodrigues coefficients use their Taylor series; the error
# of a 3-term series at t = 1e-3 is ~t^6/5040 ~ 2e-22, far below float64 eps.
_SMALL_ANGLE = 1e-3


def hat(a: jnp.ndarray) -> jnp.ndarray:
    """Skew-symmetric matrix ``[a]x`` of a 3-vector: ``hat(a) @ v == cross(a, v)``."""
    a = jnp.asarray(a)
    z = jnp.zeros_like(a[..., 0])
    return jnp.stack(
        [
            jnp.stack([z, -a[..., 2], a[..., 1]], -1),
            jnp.stack([a[..., 2], z, -a[..., 0]], -1),
            jnp.stack([-a[..., 1], a[..., 0], z], -1),
        ],
        -2,
    )


def vee(K: jnp.ndarray) -> jnp.ndarray:
    """Inverse of :func:`hat` on the skew part: (..., 3, 3) -> (..., 3)."""
    return jnp.stack([K[..., 2, 1], K[..., 0, 2], K[..., 1, 0]], -1)


def exp(a: jnp.ndarray) -> jnp.ndarray:
    """SO(3) exponential map, axis-angle (..., 3) -> rotation (..., 3, 3).

    Uses ``(1 - cos t)/t^2 = 2 sin^2(t/2)/t^2`` (no cancellation) and a Taylor
    branch below ``t = 1e-3`` behind a double ``where``, so the value and the
    gradient are finite and exact at ``a = 0``.
    """
    a = jnp.asarray(a)
    t2 = jnp.sum(a * a, axis=-1)
    small = t2 < _SMALL_ANGLE**2
    t2s = jnp.where(small, 1.0, t2)
    t = jnp.sqrt(t2s)
    c1 = jnp.where(small, 1.0 - t2 / 6.0 + t2**2 / 120.0, jnp.sin(t) / t)
    c2 = jnp.where(small, 0.5 - t2 / 24.0 + t2**2 / 720.0, 2.0 * jnp.sin(0.5 * t) ** 2 / t2s)
    K = hat(a)
    eye = jnp.eye(3, dtype=K.dtype)
    return eye + c1[..., None, None] * K + c2[..., None, None] * (K @ K)


def angle(R: jnp.ndarray) -> jnp.ndarray:
    """Rotation angle in [0, pi] of (..., 3, 3) rotations, via atan2 (accurate at 0 and pi)."""
    s = 0.5 * _safe_norm(vee(R - jnp.swapaxes(R, -1, -2)))
    c = 0.5 * (jnp.trace(R, axis1=-2, axis2=-1) - 1.0)
    return jnp.arctan2(s, c)


def _safe_norm(v):
    # The norm's gradient is 0/0 at v = 0; select around it so log() and angle()
    # stay differentiable at the identity.
    sq = jnp.sum(v * v, axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def log(R: jnp.ndarray) -> jnp.ndarray:
    """SO(3) logarithm, rotation (..., 3, 3) -> axis-angle (..., 3) with ``|a| <= pi``.

    Three regimes: the Taylor series of ``t / (2 sin t)`` near 0; the closed form
    in between; and near pi, where ``sin t`` vanishes, the axis from the
    symmetric part ``(R + R^T)/2 - cos t I = (1 - cos t) n n^T`` with its sign
    taken from the skew part.
    """
    R = jnp.asarray(R)
    w = vee(R - jnp.swapaxes(R, -1, -2))  # = 2 sin(t) n
    t = angle(R)
    small = t < _SMALL_ANGLE
    near_pi = t > np.pi - 1e-2
    ts = jnp.where(small | near_pi, 1.0, t)
    coef = jnp.where(small, 0.5 + t**2 / 12.0 + 7.0 * t**4 / 720.0, ts / (2.0 * jnp.sin(ts)))
    a_regular = coef[..., None] * w

    c = jnp.cos(t)
    B = 0.5 * (R + jnp.swapaxes(R, -1, -2)) - c[..., None, None] * jnp.eye(3, dtype=R.dtype)
    diag = jnp.diagonal(B, axis1=-2, axis2=-1)
    k = jnp.argmax(diag, axis=-1)
    col = jnp.einsum("...ij,...j->...i", B, jax.nn.one_hot(k, 3, dtype=B.dtype))
    norm = _safe_norm(col)[..., None]  # finite reverse-mode gradient at the identity
    n = col / jnp.where(norm > 0, norm, 1.0)
    sign = jnp.where(jnp.sum(n * w, axis=-1) < 0, -1.0, 1.0)
    a_pi = (sign * t)[..., None] * n
    return jnp.where(near_pi[..., None], a_pi, a_regular)


def from_quaternion(q: jnp.ndarray) -> jnp.ndarray:
    """Rotation (..., 3, 3) of a quaternion ``q = (w, x, y, z)`` (..., 4), normalised here.

    ``q`` and ``-q`` give the same rotation. With ``q`` drawn from an isotropic
    4-D normal, ``R`` is Haar-uniform on SO(3) (the projected-normal construction).
    """
    q = jnp.asarray(q)
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = (q[..., i] for i in range(4))
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def metric(lengthscales: jnp.ndarray, axis_angle: jnp.ndarray) -> jnp.ndarray:
    """``M = R diag(l^-2) R^T`` with ``R = exp(axis_angle)``; (..., 3), (..., 3) -> (..., 3, 3)."""
    R = exp(axis_angle)
    return (R * jnp.asarray(lengthscales)[..., None, :] ** -2) @ jnp.swapaxes(R, -1, -2)


def principal_axes(M: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Principal length-scales and directions of a metric.

    Returns ``(l, V)``: ``l`` (..., 3) sorted descending, ``V`` (..., 3, 3) with
    the matching unit directions as columns and ``det V = +1``.
    """
    lam, V = jnp.linalg.eigh(M)  # ascending eigenvalues -> descending length-scales
    det = jnp.linalg.det(V)
    V = V.at[..., :, 2].multiply(jnp.sign(det)[..., None])
    return lam**-0.5, V


def symmetry_group() -> jnp.ndarray:
    """The 24 signed permutation matrices with det +1, shape (24, 3, 3)."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            P = np.zeros((3, 3))
            P[np.arange(3), perm] = signs
            if np.linalg.det(P) > 0:
                mats.append(P)
    return jnp.asarray(np.stack(mats))


_SIGN_PATTERNS = jnp.asarray(
    [[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]
)


def _canonicalize_one(l, a):
    order = jnp.argsort(-l)
    R = exp(a)[:, order]
    # An odd permutation of columns flips det R; flip one axis back.
    R = R.at[:, 2].multiply(jnp.sign(jnp.linalg.det(R)))
    # Among the four sign flips of columns keeping det +1, the smallest
    # rotation angle is the largest trace.
    traces = _SIGN_PATTERNS @ jnp.diagonal(R)
    # Ties up to round-off go to the first pattern (identity first), so that a
    # canonical input maps to itself (idempotence at e.g. l = (2, 1, 1), a = 0).
    s = _SIGN_PATTERNS[jnp.argmax(traces >= jnp.max(traces) - 1e-9)]
    a_c = log(R * s[None, :])
    # At exactly pi, a and -a are the same rotation: fix the sign of the
    # largest-magnitude component so the labelling is unique.
    at_pi = jnp.linalg.norm(a_c) > np.pi - 1e-9
    lead = a_c[jnp.argmax(jnp.abs(a_c))]
    a_c = jnp.where(at_pi & (lead < 0), -a_c, a_c)
    return l[order], a_c


def canonicalize(lengthscales: jnp.ndarray, axis_angle: jnp.ndarray):
    """Canonical labelling ``(l, a)`` of the metric, vectorised over leading axes.

    ``l`` is sorted descending; ``a`` is the smallest-angle rotation among the
    four sign patterns of the permuted axes, with ``|a| <= pi``.
    """
    l = jnp.asarray(lengthscales)
    a = jnp.asarray(axis_angle)
    fn = jnp.vectorize(_canonicalize_one, signature="(3),(3)->(3),(3)")
    return fn(l, a)


def _sym_fn(M, fn):
    lam, V = jnp.linalg.eigh(M)
    return (V * fn(lam)[..., None, :]) @ jnp.swapaxes(V, -1, -2)


def relative_frobenius(M_true: jnp.ndarray, M: jnp.ndarray) -> jnp.ndarray:
    """``|M - M_true|_F / |M_true|_F``."""
    num = jnp.linalg.norm(M - M_true, axis=(-2, -1))
    return num / jnp.linalg.norm(M_true, axis=(-2, -1))


def affine_invariant(M1: jnp.ndarray, M2: jnp.ndarray) -> jnp.ndarray:
    """Affine-invariant distance ``|log(M1^-1/2 M2 M1^-1/2)|_F``."""
    W = _sym_fn(M1, lambda x: x**-0.5)
    S = W @ M2 @ W
    lam = jnp.linalg.eigvalsh(0.5 * (S + jnp.swapaxes(S, -1, -2)))
    return jnp.sqrt(jnp.sum(jnp.log(lam) ** 2, axis=-1))


def log_euclidean(M1: jnp.ndarray, M2: jnp.ndarray) -> jnp.ndarray:
    """Log-Euclidean distance ``|log M1 - log M2|_F``."""
    return jnp.linalg.norm(_sym_fn(M1, jnp.log) - _sym_fn(M2, jnp.log), axis=(-2, -1))


def axial_angle(v: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """Angle in degrees between axes, blind to sign: ``arccos(|v . w| / (|v| |w|))``.

    ``v``, ``w``: (..., 3) directions along the last axis (broadcast). For the
    principal directions stored as columns of ``V`` (3, 3), pass ``V.T``.
    """
    v = jnp.asarray(v)
    w = jnp.asarray(w)
    v, w = jnp.broadcast_arrays(v, w)
    # atan2(|v x w|, |v . w|) stays accurate for tiny angles, where arccos does not.
    return jnp.degrees(jnp.arctan2(_safe_norm(jnp.cross(v, w)), jnp.abs(jnp.sum(v * w, axis=-1))))
