r"""Hypergradients by implicit differentiation (docs/design.md section 5).

Implicit function theorem
-------------------------
Inner problem ``w*(h) = argmin_w f(w, h)`` with ``w`` any pytree (flattened to
``R^n`` for the linear algebra), outer loss ``g(w, h)``. Stationarity
``grad_w f(w*(h), h) = 0`` gives ``dw*/dh = -H^{-1} d_h grad_w f`` with the
Hessian ``H = d_w^2 f`` (n, n), so

.. math::
    \frac{dg}{dh} = \partial_h g - (\partial_h \nabla_w f)^T u, \qquad u = H^{-1} \nabla_w g .

The product ``(d_h grad_w f)^T u`` is one vector-Jacobian product of
``h -> <grad_w f(w*, h), u>`` with ``u`` held fixed; ``u`` is one inverse
Hessian-vector product (iHVP). Hessian-vector products ``H v`` are
forward-over-reverse (``jax.linearize`` of ``grad_w f``): ``H`` is never formed
unless :class:`Exact` asks for it.

iHVP solvers (values, hashable, usable as ``jit`` static arguments)
-------------------------------------------------------------------
=====================  ==================================================  =====================
solver                 ``u ~ H^{-1} b``                                    HVPs
=====================  ==================================================  =====================
``Exact()``            dense Cholesky (jitter only via ``linalg.dense``)   ``n`` (0 given ``H``)
``CG(maxiter, tol)``   conjugate gradients                                 iterations + 1
``Neumann(steps,lr)``  ``lr sum_{t<T} (I - lr H)^t b``                      ``T`` + 1
``Nystrom(k, rho)``    ``(H_k + rho I)^{-1} b``, Hataya & Yamada (2023)    ``k`` + 1
``NystromPCG(k,..)``   CG preconditioned by a rank-``k`` Nystrom factor    ``k`` + iterations + 1
  ``sketch="kernel"``  the factor from ``k`` kernel columns (GP systems)    iterations + 1
``SpectralReuse``      NystromPCG keeping its basis across outer steps      p (+k) + iter. + 1
``"auto"``             ``Exact`` up to :data:`AUTO_DENSE_MAX`, else NystromPCG
=====================  ==================================================  =====================

The "+ 1" is the true residual ``|b - H u| / |b|``, which every solver reports
in :class:`IHVPInfo` (approximate solvers are never silently trusted).

Nystrom-Woodbury in eigen-form. With sketch ``Omega`` (n, k) (``k`` coordinate
columns ``E_idx`` as in Hataya & Yamada, or Gaussian), ``Y = H Omega`` (k HVPs)
and core ``M = Omega^T Y`` (k, k), the Nystrom approximation is
``H_k = Y M^+ Y^T``. Eigendecompose ``M = V diag(sigma) V^T``, drop
``sigma <= k eps sigma_max``, set ``F = Y V sigma^{-1/2}`` (every column of
``F`` is bounded by ``|H|^{1/2}``: no amplification) and take the thin SVD
``F = U S Z^T``; then ``H_k = U diag(S^2) U^T`` with ``U`` orthonormal and

.. math:: (H_k + \rho I)^{-1} b = U (S^2 + \rho)^{-1} U^T b + (b - U U^T b)/\rho ,

with no ``1/rho`` cancellation: the published form ``b/rho - C^T (rho M + C C^T)^{-1}
C b / rho`` (``C`` the k sketched rows) subtracts two ``O(|b|/rho)`` terms, and
where the sketch captures most of ``H`` the difference is ``O(|b|/lambda)``:
about ``log10(lambda/rho)`` digits are lost (``benchmarks/hypergrad_solvers.py``,
GP system at n = k = 1,000, rho = 1e-10: 0.2 relative error, eigen-form 4e-9).
When the caller knows a shift ``H = A + mu I`` (the GP system ``K + s^2 I``),
only ``A`` is sketched and ``H_k = A_k + mu I``, so the damping ``rho`` comes on
top of ``mu``. It is an approximation, not a solver: on a captured eigen-direction
the relative error is ``rho / (lambda_i + rho)``, on a missed one the component
is scaled by ``lambda_j / rho`` instead of 1 (so ``rho`` must sit near the
spectral tail). :class:`NystromPCG` uses the same factor as a preconditioner
(unbiased, converges to the CG tolerance).

Spectral reuse across outer steps
---------------------------------
:class:`SpectralReuse` keeps the Nystrom basis ``Q`` (n, k) between outer steps.
Each step it measures ``B = Q^T A Q`` (``A`` the operator that was sketched)
with ``p`` Rademacher probes ``z``: ``y = A Q z`` (p HVPs), ``B z = Q^T y``, the
Hutchinson diagonal ``d = mean(z * Bz)`` (corrected eigenvalues), the in-span
staleness ``|B - diag B|_F`` and the energy outside ``span(Q)``,
``|(I - Q Q^T) A Q|_F``. Together they estimate the relative eigen-residual

.. math:: s = \frac{|A Q - Q\,\mathrm{diag}(d)|_F}{|A Q|_F}
            = \frac{\sqrt{|B - \mathrm{diag} B|_F^2 + |(I - QQ^T) A Q|_F^2}}{|AQ|_F}

A fresh randomized sketch is itself not an exact eigenbasis (``s`` is far from
0 for flat spectra), so the criterion is the *drift* since the last refresh:
with ``s_ref`` the value first measured after it, the basis is re-sketched only
when ``sqrt(s^2 - s_ref^2) > tau`` (Shampoo's criterion has ``s_ref = 0``
because its eigendecomposition is exact). A refresh sketches with the old basis
as its test matrix (``Y = A Q``, one step of subspace iteration), so the basis
also improves across refreshes. ``probes=None`` computes
``B`` exactly (k HVPs, as expensive as a fresh sketch). The stale basis only
preconditions CG (which still converges to its tolerance); it never defines a
loss (docs/design.md section 4).

GP applications
---------------
:func:`optimize_hyperparameters`: validation-loss tuning of kernel
hyperparameters ``theta``; inner problem the kernel-ridge / GP weight solve
``f(w) = 1/2 w^T (K + s^2 I) w - y^T w`` (``H = K + s^2 I``, ``w* = H^{-1} y``,
validation mean ``K_vt w*``). :func:`laplace_log_marginal`: Laplace
approximation with Poisson (log link) or Student-t likelihood, the mode found by
Newton in whitened coordinates and differentiated implicitly.

Every function works in float64 (``jax_enable_x64`` is set on import).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import cho_solve

from aniso_gp import _validation as check
from aniso_gp import kernels
from aniso_gp.linalg import dense, nystrom, solvers
from aniso_gp.linalg.operators import EigenLowRankPlusShift, matmul

jax.config.update("jax_enable_x64", True)

#: ``solver="auto"`` uses a dense Cholesky up to this dimension and Nystrom-PCG
#: above. ``benchmarks/hypergrad_solvers.py`` on a 2-core CPU: at n = 5,000 one
#: dense factorisation (7 s, which serves both the inner solve and the iHVP) costs
#: about one Nystrom-PCG solve to 1e-8 (~270 HVPs of ~25 ms); on an H100 a
#: float64 Cholesky takes 5 ms at n = 5,000 and 74 ms at n = 20,000, so the
#: threshold is per platform.
AUTO_DENSE_MAX = {"cpu": 5000, "gpu": 20000}
#: Rank, iteration cap and tolerance of the Nystrom-PCG that ``"auto"`` picks.
AUTO_RANK = 200
AUTO_MAXITER = 2000
AUTO_TOL = 1e-10
#: Above this many training points :func:`optimize_hyperparameters` never forms
#: ``K`` and applies it in row blocks instead (O(block * N) memory).
MATRIX_FREE_MIN = 25_000
_BLOCK = 2048


# --------------------------------------------------------------------------- #
# Solver values
# --------------------------------------------------------------------------- #
def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}")
    return int(value)


def _positive_float(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be a number; got {value!r}") from err
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"`{name}` must be finite and strictly positive; got {value!r}")
    return v


def _tolerance(value) -> float:
    v = _positive_float(value, "tol")
    if v >= 1:
        raise ValueError(f"`tol` must be in (0, 1); got {value!r}")
    return v


_SKETCHES = ("coordinates", "gaussian", "kernel")


def _sketch_name(value) -> str:
    if value not in _SKETCHES:
        raise ValueError(f"`sketch` must be one of {_SKETCHES}; got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Exact:
    """Dense Cholesky of ``H`` (formed from ``n`` HVPs unless the matrix is given)."""

    name: ClassVar[str] = "exact"


@dataclasses.dataclass(frozen=True)
class CG:
    """Conjugate gradients: stop at ``|b - H u| <= tol |b|`` or ``maxiter`` iterations."""

    maxiter: int = 1000
    tol: float = 1e-10
    name: ClassVar[str] = "cg"

    def __post_init__(self):
        object.__setattr__(self, "maxiter", _positive_int(self.maxiter, "maxiter"))
        object.__setattr__(self, "tol", _tolerance(self.tol))


@dataclasses.dataclass(frozen=True)
class Neumann:
    r"""Truncated Neumann series ``u = lr sum_{t<steps} (I - lr H)^t b``.

    Converges for ``0 < lr < 2/lambda_max(H)``; truncated at ``T`` terms it
    acts like an extra damping of about ``1/(lr T)`` on the small eigenvalues.
    """

    steps: int
    lr: float
    name: ClassVar[str] = "neumann"

    def __post_init__(self):
        object.__setattr__(self, "steps", _positive_int(self.steps, "steps"))
        object.__setattr__(self, "lr", _positive_float(self.lr, "lr"))


@dataclasses.dataclass(frozen=True)
class Nystrom:
    r"""Hataya & Yamada's damped Nystrom-Woodbury iHVP ``(H_k + rho I)^{-1} b``.

    Args:
        rank: sketch size ``k`` (HVPs), at most the dimension.
        rho: damping ``> 0``; the result is biased by it (see module docstring).
        sketch: ``"coordinates"`` (``k`` random columns of ``H``, the paper's
            choice), ``"gaussian"`` (same cost, better on coherent spectra) or
            ``"kernel"`` (GP systems ``K + s^2 I`` only: randomly pivoted Cholesky
            on ``k`` kernel columns, no HVPs; :func:`kernel_nystrom`).
        seed: seed of the random sketch.
    """

    rank: int
    rho: float
    sketch: str = "coordinates"
    seed: int = 0
    name: ClassVar[str] = "nystrom"

    def __post_init__(self):
        object.__setattr__(self, "rank", _positive_int(self.rank, "rank"))
        object.__setattr__(self, "rho", _positive_float(self.rho, "rho"))
        object.__setattr__(self, "sketch", _sketch_name(self.sketch))


@dataclasses.dataclass(frozen=True)
class NystromPCG:
    r"""CG preconditioned by a rank-``k`` Nystrom factor of ``H`` (Frangella, Tropp & Udell).

    ``P^{-1} = (lam_k + mu) U (Lam + mu I)^{-1} U^T + (I - U U^T)``; when
    ``H = A + mu I`` with a known shift ``mu`` (``K + s^2 I``) the sketch is of
    ``A``. Unbiased: it converges to ``tol`` like CG, in far fewer iterations
    once ``rank`` exceeds the effective dimension. ``sketch`` as for
    :class:`Nystrom`; ``"kernel"`` costs ``k`` kernel columns instead of ``k``
    HVPs, which for a kernel matrix is ``k / N`` of the work.
    """

    rank: int
    maxiter: int = 1000
    tol: float = 1e-10
    sketch: str = "gaussian"
    seed: int = 0
    name: ClassVar[str] = "nystrom_pcg"

    def __post_init__(self):
        object.__setattr__(self, "rank", _positive_int(self.rank, "rank"))
        object.__setattr__(self, "maxiter", _positive_int(self.maxiter, "maxiter"))
        object.__setattr__(self, "tol", _tolerance(self.tol))
        object.__setattr__(self, "sketch", _sketch_name(self.sketch))


class IHVPInfo(NamedTuple):
    """What one iHVP cost and how good it is.

    Attributes:
        matvecs: Hessian-vector products spent (sketch, iterations, residual check).
        residual_norm: ``|b - H u| / |b|`` of the returned ``u`` (0 for ``b = 0``).
        iterations: CG iterations or Neumann terms (0 for direct methods).
    """

    matvecs: jnp.ndarray
    residual_norm: jnp.ndarray
    iterations: jnp.ndarray

    def as_dict(self) -> dict:
        """Plain Python numbers (eager use)."""
        return {
            "matvecs": int(self.matvecs),
            "residual_norm": float(self.residual_norm),
            "iterations": int(self.iterations),
        }


def _info(matvecs, residual, iterations=0) -> IHVPInfo:
    return IHVPInfo(
        jnp.asarray(matvecs, jnp.int32),
        jnp.asarray(residual, jnp.float64),
        jnp.asarray(iterations, jnp.int32),
    )


# --------------------------------------------------------------------------- #
# Spectral reuse
# --------------------------------------------------------------------------- #
class ReuseState(NamedTuple):
    """Carried between outer steps by :class:`SpectralReuse` (a pytree).

    Attributes:
        basis: (n, k) orthonormal Nystrom basis ``Q``.
        eigenvalues: (k,) current eigenvalue estimates of the sketched operator on ``Q``.
        initialized: bool, whether ``basis`` holds a sketch yet.
        steps: number of preconditioner updates so far.
        refreshes: how many of them re-sketched.
        matvecs_saved: cumulative HVPs saved against re-sketching every step.
        staleness: last drift ``sqrt(max(s^2 - s_ref^2, 0))`` (inf before the first sketch).
        reference: ``s_ref``, the raw eigen-residual ``s`` first measured after the
            last refresh (NaN until then).
    """

    basis: jnp.ndarray
    eigenvalues: jnp.ndarray
    initialized: jnp.ndarray
    steps: jnp.ndarray
    refreshes: jnp.ndarray
    matvecs_saved: jnp.ndarray
    staleness: jnp.ndarray
    reference: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class SpectralReuse:
    r"""Nystrom-PCG whose basis is reused across outer steps (see module docstring).

    Args:
        rank: basis size ``k``.
        tau: staleness threshold; re-sketch when the drift ``sqrt(s^2 - s_ref^2) > tau``.
        probes: Rademacher probes ``p >= 2`` per step, or ``None`` for the exact
            ``B = Q^T A Q`` (``k`` HVPs per step, which also serve a refresh).
        maxiter, tol: of the preconditioned CG.
        sketch: sketch of a refresh, ``"gaussian"`` or ``"coordinates"``.
        seed: seed of sketches and probes (folded with the step counter).

    Usage (a functional object: the state is explicit)::

        reuse = SpectralReuse(rank=100)
        state = reuse.init(n)
        for step in ...:
            u, info, state = reuse.solve(state, hvp, b, key=jax.random.PRNGKey(step))
    """

    rank: int
    tau: float = 0.15
    probes: int | None = 8
    maxiter: int = 1000
    tol: float = 1e-10
    sketch: str = "gaussian"
    seed: int = 0
    name: ClassVar[str] = "spectral_reuse"

    def __post_init__(self):
        object.__setattr__(self, "rank", _positive_int(self.rank, "rank"))
        object.__setattr__(self, "tau", _positive_float(self.tau, "tau"))
        if self.probes is not None:
            p = _positive_int(self.probes, "probes")
            if p < 2:
                raise ValueError(f"`probes` must be >= 2 (or None for exact); got {p}")
            object.__setattr__(self, "probes", p)
        object.__setattr__(self, "maxiter", _positive_int(self.maxiter, "maxiter"))
        object.__setattr__(self, "tol", _tolerance(self.tol))
        object.__setattr__(self, "sketch", _sketch_name(self.sketch))

    def init(self, n: int) -> ReuseState:
        """An empty state for dimension ``n`` (the first update sketches)."""
        _check_rank(self.rank, n)
        f64 = jnp.float64
        return ReuseState(
            basis=jnp.zeros((n, self.rank), f64),
            eigenvalues=jnp.zeros((self.rank,), f64),
            initialized=jnp.asarray(False),
            steps=jnp.asarray(0, jnp.int32),
            refreshes=jnp.asarray(0, jnp.int32),
            matvecs_saved=jnp.asarray(0, jnp.int32),
            staleness=jnp.asarray(jnp.inf, f64),
            reference=jnp.asarray(jnp.nan, f64),
        )

    def update(self, state: ReuseState, matvec, *, shift=0.0, key=None):
        """Correct or refresh the basis for the current operator ``H = A + shift I``.

        Returns:
            ``(state, precond, matvecs)``: the new state, ``v -> P^{-1} v`` and the
            HVPs this maintenance cost.
        """
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.steps) if key is None else key
        return _reuse_update(self, state, matvec, shift, key)

    def solve(self, state: ReuseState, matvec, b, *, shift=0.0, x0=None, key=None):
        """``u ~ H^{-1} b`` by PCG with the maintained preconditioner: ``(u, info, state)``."""
        state, precond, spent = self.update(state, matvec, shift=shift, key=key)
        u, info = _pcg(matvec, b, precond, self.tol, self.maxiter, x0)
        return u, info._replace(matvecs=info.matvecs + spent), state


Solver = Exact | CG | Neumann | Nystrom | NystromPCG | SpectralReuse
_SOLVER_TYPES = (Exact, CG, Neumann, Nystrom, NystromPCG, SpectralReuse)


def _on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def resolve_solver(solver, n: int):
    """The solver value that ``solver`` means at dimension ``n`` (resolves ``"auto"``)."""
    if isinstance(solver, str):
        if solver != "auto":
            raise ValueError(
                f"`solver` must be 'auto' or a solver value (Exact(), CG(...), Neumann(...),"
                f" Nystrom(...), NystromPCG(...), SpectralReuse(...)); got {solver!r}"
            )
        limit = AUTO_DENSE_MAX["gpu" if _on_gpu() else "cpu"]
        if n <= limit:
            return Exact()
        return NystromPCG(rank=min(AUTO_RANK, n - 1), maxiter=AUTO_MAXITER, tol=AUTO_TOL)
    if not isinstance(solver, _SOLVER_TYPES):
        raise ValueError(f"`solver` must be 'auto' or a solver value; got {type(solver).__name__}")
    return solver


def _check_rank(rank: int, n: int) -> None:
    if rank > n:
        raise ValueError(
            f"`rank`={rank} exceeds the dimension of the inner problem n={n}: a Nystrom"
            f" sketch has at most n columns (use rank <= {n})"
        )


# --------------------------------------------------------------------------- #
# Error reporting that works both eagerly and under jit
# --------------------------------------------------------------------------- #
def _concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def _all_finite(x) -> jnp.ndarray:
    leaves = jax.tree_util.tree_leaves(x)
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _require(x, ok, message: str):
    """Raise ``ValueError(message)`` eagerly, or a runtime error under ``jit``, unless ``ok``."""
    if _concrete(ok):
        if not bool(ok):
            raise ValueError(message)
        return x
    return eqx.error_if(x, ~ok, message)


def _nonfinite_hvp_message(where: str) -> str:
    return (
        f"non-finite Hessian-vector products in {where}: H v returned NaN or inf (the inner"
        " loss is not twice differentiable at w_star, or w_star/h hold NaN or inf), or the"
        " sketched operator is not positive semi-definite (w_star is not a minimum)"
    )


# --------------------------------------------------------------------------- #
# Nystrom factors
# --------------------------------------------------------------------------- #
def _norm(v):
    return jnp.sqrt(jnp.sum(v * v))


def _relative_residual(b, Hx):
    bn = _norm(b)
    return jnp.where(bn > 0, _norm(b - Hx) / jnp.where(bn > 0, bn, 1.0), 0.0)


def _apply_columns(matvec, V):
    """``H V`` for ``V`` (n, k) as k HVPs (vmapped: one batched pass)."""
    return jax.vmap(matvec, in_axes=1, out_axes=1)(V)


def _nystrom_from_sketch(Y, M):
    r"""Stable eigen-form ``H_k = U diag(lam) U^T`` from ``Y = H Omega`` (n, k), ``M = Omega^T Y``.

    ``M = V sigma V^T``; directions with ``sigma <= k eps sigma_max`` (or negative,
    from round-off) are dropped, ``F = Y V sigma^{-1/2}`` and ``F = U S Z^T``
    (thin SVD) give ``lam = S^2``. Returns ``U`` (n, k) orthonormal and ``lam``
    (k,) >= 0 sorted descending (dropped directions have ``lam = 0``).
    """
    k = M.shape[0]
    sigma, V = jnp.linalg.eigh(0.5 * (M + M.T))
    cutoff = k * jnp.finfo(M.dtype).eps * jnp.maximum(sigma[-1], 0.0)
    keep = sigma > cutoff
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, sigma, 1.0)), 0.0)
    F = matmul(Y, V * inv_sqrt)
    U, S, _ = jnp.linalg.svd(F, full_matrices=False)
    return U, S * S


def _sketch(matvec, n: int, rank: int, kind: str, key):
    """Rank-``rank`` Nystrom eigen-factor ``(U, lam)`` of the operator; ``rank`` HVPs."""
    if kind == "coordinates":
        idx = jax.random.choice(key, n, (rank,), replace=False)
        Omega = jax.nn.one_hot(idx, n, dtype=jnp.float64).T  # (n, k) coordinate columns
        Y = _apply_columns(matvec, Omega)
        M = Y[idx, :]
        U, lam = _nystrom_from_sketch(Y, M)
        return U, lam, _all_finite(Y)
    # The Gaussian sketch is the linalg core's (Frangella, Tropp & Udell); NaN
    # products propagate into its factor, which is what the finiteness flag sees.
    U, lam = nystrom.randomized_nystrom(matvec, n, rank, key)
    return U, lam, _all_finite((U, lam))


def kernel_nystrom(X, params: dict, base: str, rank: int, key):
    r"""Nystrom eigen-factor ``(U, lam)`` of the kernel matrix ``K(X, X) ~ U diag(lam) U^T``.

    Randomly pivoted Cholesky (:func:`aniso_gp.linalg.nystrom.rpcholesky`) on the
    transformed inputs gives ``F`` (N, k) from ``k`` kernel columns; the thin SVD
    ``F = U S V^T`` gives ``lam = S^2``. O(N k) kernel evaluations and O(N k^2)
    flops, against ``k`` HVPs (O(N^2 k)) for a sketch of the operator. The
    preconditioner of :class:`NystromPCG` with ``sketch="kernel"``.
    """
    A = kernels.transform_matrix(params)
    variance = params.get("variance", 1.0)

    def kernel_fn(Z1, Z2):
        return kernels.gram_transformed(Z1, Z2, variance, base)

    F, _ = nystrom.rpcholesky(X @ A, rank, key, kernel_fn)
    U, S, _ = jnp.linalg.svd(F, full_matrices=False)
    return U, S * S


def hessian_nystrom(matvec, n: int, rank: int, *, sketch: str = "coordinates", key=None):
    r"""Rank-``rank`` Nystrom approximation ``H_k = U diag(lam) U^T`` of a PSD operator.

    Args:
        matvec: ``v -> H v`` on (n,) arrays, ``H`` symmetric positive semi-definite.
        n: dimension.
        rank: sketch size ``k <= n`` (``k`` HVPs).
        sketch: ``"coordinates"`` (``k`` distinct random columns) or ``"gaussian"``.
        key: JAX PRNG key (default ``PRNGKey(0)``).

    Returns:
        ``(U, lam)``: ``U`` (n, k) orthonormal columns, ``lam`` (k,) >= 0 descending.
    """
    _check_rank(_positive_int(rank, "rank"), n)
    key = jax.random.PRNGKey(0) if key is None else key
    U, lam, ok = _sketch(matvec, n, rank, _sketch_name(sketch), key)
    U = _require(U, ok, _nonfinite_hvp_message("the Nystrom sketch"))
    return U, lam


def _preconditioner(U, lam, shift):
    """Nystrom preconditioner from ``linalg.solvers``; a small floor stands in for a zero shift."""
    mu = jnp.where(shift > 0, shift, 1e-12 * jnp.max(lam) + jnp.finfo(jnp.float64).tiny)
    return solvers.nystrom_preconditioner(U, jnp.maximum(lam, 0.0), mu)


def _pcg(matvec, b, precond, tol, maxiter, x0):
    if precond is None:
        x, si = solvers.cg(matvec, b, tol=tol, maxiter=maxiter, x0=x0)
    else:
        x, si = solvers.pcg(matvec, b, precond, tol=tol, maxiter=maxiter, x0=x0)
    spent = si.iterations + 1 + (0 if x0 is None else 1)
    return x, _info(spent, si.residual_norm, si.iterations)


def _shifted_out(matvec, shift):
    """``v -> H v - shift v``: the part ``A`` of ``H = A + shift I`` that a sketch should see."""
    return lambda v: matvec(v) - shift * v


def _reuse_update(cfg: SpectralReuse, state: ReuseState, matvec, shift, key):
    n, k = state.basis.shape
    A = _shifted_out(matvec, shift)
    probe_key, sketch_key = jax.random.split(key)
    Q, lam_old = state.basis, state.eigenvalues

    exact = cfg.probes is None

    def measure(_):
        if exact:
            Y = _apply_columns(A, Q)  # (n, k) = A Q
            B = matmul(Q.T, Y)
            d = jnp.diagonal(B)
            inside = jnp.sum(B * B) - jnp.sum(d * d)
            outside = jnp.sum((Y - matmul(Q, B)) ** 2)
            lam = jnp.maximum(d, 0.0)
        else:
            p = cfg.probes
            Z = jax.random.rademacher(probe_key, (k, p), dtype=jnp.float64)
            Y = _apply_columns(A, matmul(Q, Z))  # (n, p) = A Q Z
            BZ = matmul(Q.T, Y)  # (k, p) = B Z
            d = jnp.mean(Z * BZ, axis=1)  # Hutchinson diagonal: E[z_i (Bz)_i] = B_ii
            # Fitting d on the same probes absorbs ~1/p of the off-diagonal energy.
            inside = jnp.sum((BZ - d[:, None] * Z) ** 2) / (1.0 - 1.0 / p)
            outside = jnp.sum((Y - matmul(Q, BZ)) ** 2)
            # One noisy Rayleigh quotient may move an eigenvalue by at most 2x per
            # step; a larger change shows up in the staleness and triggers a refresh.
            lam = jnp.clip(d, 0.5 * lam_old, 2.0 * lam_old)
        total = jnp.sum(Y * Y)
        stale = jnp.sqrt((inside + outside) / jnp.where(total > 0, total, 1.0))
        stale = jnp.where(_all_finite(Y), stale, jnp.nan)
        # The exact mode's A Q is also the test-matrix product of a warm refresh.
        return lam, stale, (Y if exact else None)

    def skip(_):
        return lam_old, jnp.asarray(jnp.inf), (jnp.zeros_like(Q) if exact else None)

    lam_new, raw, AQ = jax.lax.cond(state.initialized, measure, skip, None)
    # A fresh sketch is not an exact eigenbasis (s > 0 from the start, large for
    # flat spectra): what the criterion must see is the drift since the refresh.
    reference = jnp.where(jnp.isnan(state.reference), raw, state.reference)
    drift = jnp.sqrt(jnp.maximum(raw * raw - reference * reference, 0.0))
    stale = jnp.where(jnp.isnan(raw), jnp.nan, jnp.where(state.initialized, drift, jnp.inf))
    refresh = ~(stale <= cfg.tau)  # also when NaN or before the first sketch

    def fresh(_):
        def cold(_):
            return _sketch(A, n, k, cfg.sketch, sketch_key)

        def warm(_):
            # Re-sketch with the old basis as the test matrix: one step of subspace
            # iteration, far closer to the new top eigenspace than a Gaussian sketch.
            Y = AQ if exact else _apply_columns(A, Q)
            U, lam = _nystrom_from_sketch(Y, matmul(Q.T, Y))
            return U, lam, _all_finite(Y)

        return jax.lax.cond(state.initialized, warm, cold, None)

    def keep(_):
        return Q, lam_new, jnp.asarray(True)

    Q_new, lam_new, ok = jax.lax.cond(refresh, fresh, keep, None)
    probe_cost = k if exact else cfg.probes
    refresh_cost = jnp.where(exact & state.initialized, 0, k)  # exact mode reuses its A Q
    spent = jnp.where(state.initialized, probe_cost, 0) + jnp.where(refresh, refresh_cost, 0)
    Q_new = _require(Q_new, ok & ~jnp.isnan(stale), _nonfinite_hvp_message("spectral reuse"))
    new_state = ReuseState(
        basis=Q_new,
        eigenvalues=lam_new,
        initialized=jnp.asarray(True),
        steps=state.steps + 1,
        refreshes=state.refreshes + refresh.astype(jnp.int32),
        matvecs_saved=state.matvecs_saved + (k - spent).astype(jnp.int32),
        staleness=stale,
        reference=jnp.where(refresh, jnp.nan, reference),
    )
    return new_state, _preconditioner(Q_new, lam_new, shift), spent.astype(jnp.int32)


# --------------------------------------------------------------------------- #
# The iHVP dispatcher
# --------------------------------------------------------------------------- #
def _dense_solve(Hmat, b, spent):
    Hs = 0.5 * (Hmat + Hmat.T)
    L, _ = dense.cholesky(Hs)
    x = cho_solve((L, True), b)
    ok = _all_finite(L)
    return x, _info(spent, _relative_residual(b, matmul(Hs, x))), ok


def solve_ihvp(solver, matvec, b, *, shift=0.0, matrix=None, x0=None, key=None, state=None,
               factor=None):
    r"""Inverse Hessian-vector product ``u ~ H^{-1} b`` with the chosen solver.

    Args:
        solver: a solver value or ``"auto"``.
        matvec: ``v -> H v`` on (n,) arrays, ``H`` symmetric positive definite.
        b: (n,) right-hand side.
        shift: known ``mu`` with ``H = A + mu I`` (e.g. the noise variance of
            ``K + s^2 I``); Nystrom preconditioners then sketch ``A``.
        matrix: optional dense ``H`` (n, n) for :class:`Exact` (saves n HVPs).
        x0: warm start for the CG-type solvers.
        key: PRNG key for sketches (default from the solver's ``seed``).
        state: a :class:`ReuseState` for :class:`SpectralReuse`.
        factor: a Nystrom eigen-factor ``(U, lam)`` of ``A`` (``H = A + shift I``)
            the caller already has, e.g. :func:`kernel_nystrom`; :class:`Nystrom`
            and :class:`NystromPCG` then skip their sketch. Required for
            ``sketch="kernel"``.

    Returns:
        ``(u, info)`` or, when ``state`` is given, ``(u, info, state)``.

    Raises:
        ValueError: ``rank`` larger than ``n``; non-finite HVPs or a Hessian that is
            not positive definite (a runtime error naming it under ``jit``).
    """
    b = jnp.asarray(b, dtype=jnp.float64)
    if b.ndim != 1:
        raise ValueError(f"`b` must be a 1-D array (n,); got shape {b.shape}")
    n = b.shape[0]
    solver = resolve_solver(solver, n)
    seed = getattr(solver, "seed", 0)
    key = jax.random.PRNGKey(seed) if key is None else key
    shift = jnp.asarray(shift, dtype=jnp.float64)
    name = type(solver).__name__

    if isinstance(solver, SpectralReuse):
        fresh = state is None
        state = solver.init(n) if fresh else state
        x, info, state = solver.solve(state, matvec, b, shift=shift, x0=x0, key=key)
        x = _require(x, _all_finite(x), _nonfinite_solution_message(name))
        return (x, info) if fresh else (x, info, state)
    if state is not None:
        raise ValueError("`state` is only used by SpectralReuse")

    if isinstance(solver, Exact):
        if matrix is None:
            matrix = _apply_columns(matvec, jnp.eye(n, dtype=b.dtype))
            spent = n
        else:
            spent = 0
        matrix = _require(matrix, _all_finite(matrix), _nonfinite_hvp_message("Exact()"))
        x, info, ok = _dense_solve(matrix, b, spent)
        x = _require(
            x,
            ok,
            "Exact(): the Hessian is not positive definite (Cholesky failed even with"
            f" jitter {dense.JITTER_LEVELS[-1]:g} x mean diagonal); w_star may not be a minimum",
        )
        return x, info
    if isinstance(solver, CG):
        x, info = _pcg(matvec, b, None, solver.tol, solver.maxiter, x0)
    elif isinstance(solver, Neumann):
        x, si = solvers.neumann(matvec, b, steps=solver.steps, lr=solver.lr)
        info = _info(solver.steps + 1, si.residual_norm, si.iterations)
    elif isinstance(solver, Nystrom):
        _check_rank(solver.rank, n)
        # With a known shift (H = A + mu I) only A is sketched and the identity
        # part is kept exactly: H_k = A_k + mu I; mu = 0 is Hataya & Yamada's case.
        U, lam, sketched = _factor_or_sketch(solver, factor, matvec, shift, n, key)
        damping = shift + solver.rho
        if solver.rank == n:
            # span(U) is all of R^n: the complement term (b - U U^T b)/rho is
            # round-off divided by rho, so drop it (it is zero in exact arithmetic).
            x = matmul(U, matmul(U.T, b) / (lam + damping))
        else:
            x = EigenLowRankPlusShift(U, lam, damping).solve(b)
        info = _info(sketched + 1, _relative_residual(b, matvec(x)))
    else:  # NystromPCG
        _check_rank(solver.rank, n)
        U, lam, sketched = _factor_or_sketch(solver, factor, matvec, shift, n, key)
        x, info = _pcg(matvec, b, _preconditioner(U, lam, shift), solver.tol, solver.maxiter, x0)
        info = info._replace(matvecs=info.matvecs + sketched)
    ok = _all_finite(x) & jnp.isfinite(info.residual_norm)
    x = _require(x, ok, _nonfinite_solution_message(name))
    return x, info


def _factor_or_sketch(solver, factor, matvec, shift, n: int, key):
    """``(U, lam, HVPs spent)``: the caller's factor, else a sketch of ``A = H - shift I``."""
    if factor is not None:
        U, lam = factor
        if U.shape != (n, solver.rank) or lam.shape != (solver.rank,):
            raise ValueError(
                f"`factor` must be (U (n, rank), lam (rank,)) = ({(n, solver.rank)},"
                f" {(solver.rank,)}); got {U.shape} and {lam.shape}")
        return U, lam, 0
    if solver.sketch == "kernel":
        raise ValueError("sketch='kernel' reads kernel columns: pass `factor=kernel_nystrom(...)`"
                         " or use it through optimize_hyperparameters")
    U, lam, ok = _sketch(_shifted_out(matvec, shift), n, solver.rank, solver.sketch, key)
    U = _require(U, ok, _nonfinite_hvp_message("the Nystrom sketch"))
    return U, lam, solver.rank


def _nonfinite_solution_message(name: str) -> str:
    return (
        f"{name}: the inverse Hessian-vector product is not finite: the Hessian-vector"
        " products returned NaN or inf, or the Hessian is singular or indefinite at w_star"
    )


# --------------------------------------------------------------------------- #
# Generic implicit differentiation
# --------------------------------------------------------------------------- #
def _flat_inner_grad(inner_loss, unravel):
    def grad_w(w_flat, h, *args):
        return ravel_pytree(jax.grad(inner_loss)(unravel(w_flat), h, *args))[0]

    return grad_w


def _ift_adjoint(inner_loss, w_star, h, args, w_bar, solver, key=None, state=None):
    """``u = H^{-1} w_bar`` and the cotangents ``-(d_{h,args} grad_w f)^T u``."""
    w_flat, unravel = ravel_pytree(w_star)
    b = ravel_pytree(w_bar)[0].astype(w_flat.dtype)
    b = _require(b, _all_finite(b), "the gradient of the outer loss w.r.t. w is not finite")
    grad_w = _flat_inner_grad(inner_loss, unravel)
    # linearize evaluates grad_w once; every HVP then costs one forward-mode pass.
    _, hvp = jax.linearize(lambda wf: grad_w(wf, h, *args), w_flat)
    out = solve_ihvp(solver, hvp, b, key=key, state=state)
    u, info = out[0], out[1]
    _, vjp = jax.vjp(lambda hh, aa: grad_w(w_flat, hh, *aa), h, tuple(args))
    h_bar, args_bar = vjp(-u)
    return (h_bar, args_bar, info) + tuple(out[2:])


def implicit_grad(inner_loss, outer_loss, w_star, h, solver="auto", *, key=None, state=None):
    r"""Hypergradient ``dg/dh`` at an inner minimiser, by the implicit function theorem.

    ``dg/dh = d_h g - (d_h grad_w f)^T H^{-1} grad_w g`` (module docstring).

    Args:
        inner_loss: ``f(w, h) -> scalar``; ``w_star`` minimises it at ``h``.
        outer_loss: ``g(w, h) -> scalar``.
        w_star: the inner solution, any pytree of float arrays (flattened to n).
        h: hyperparameters, any pytree of float arrays.
        solver: iHVP solver value or ``"auto"``.
        key: PRNG key for randomized sketches.
        state: :class:`ReuseState` to carry between calls with :class:`SpectralReuse`.

    Returns:
        ``(dg_dh, info)`` with ``dg_dh`` shaped like ``h`` and an :class:`IHVPInfo`;
        ``(dg_dh, info, state)`` when ``state`` is given.
    """
    g_w, g_h = jax.grad(outer_loss, argnums=(0, 1))(w_star, h)
    out = _ift_adjoint(inner_loss, w_star, h, (), g_w, solver, key=key, state=state)
    h_bar, info = out[0], out[2]
    dg = jax.tree_util.tree_map(lambda a, c: a + c, g_h, h_bar)
    return (dg, info) + tuple(out[3:])


#: Order of the entries in an info sink (see :class:`ImplicitSolution`).
INFO_SINK_FIELDS = IHVPInfo._fields


class ImplicitSolution:
    r"""``h -> w*(h)`` with an implicit-function-theorem VJP (made by :func:`implicit_solution`).

    ``sol(h, *args)`` returns ``inner_solver(h, *args)``; under ``jax.grad`` its
    cotangent ``w_bar`` becomes ``-(d_{h,args} grad_w f)^T H^{-1} w_bar`` (one
    iHVP), never differentiating through the inner solver. ``args`` are extra
    arrays (data) passed to both ``inner_solver`` and ``inner_loss``; they get
    implicit cotangents too, so nothing needs to be closed over.

    The iHVP's :class:`IHVPInfo` comes out through an *info sink*: call
    ``sol.with_sink(h, sink, *args)`` with ``sink = sol.sink()`` and
    differentiate with respect to ``sink`` too; its "gradient" holds
    ``(matvecs, residual_norm, iterations)``, read back by :meth:`info`. With one
    call per outer objective that is the record of its one solve (several calls
    add up). A :class:`SpectralReuse` solver here starts from a fresh sketch on
    every call (its state cannot leave a VJP); carry the state with
    :func:`implicit_grad` instead.
    """

    def __init__(self, inner_solver, inner_loss, solver="auto"):
        if isinstance(solver, str):
            resolve_solver(solver, 1)  # validates the name
        elif not isinstance(solver, _SOLVER_TYPES):
            raise ValueError(f"`solver` must be 'auto' or a solver value; got {solver!r}")
        self.inner_solver = inner_solver
        self.inner_loss = inner_loss
        self.solver = solver

        @jax.custom_vjp
        def core(h, sink, args):
            return inner_solver(h, *args)

        def fwd(h, sink, args):
            w = inner_solver(h, *args)
            return w, (w, h, args)

        def bwd(res, w_bar):
            w, h, args = res
            h_bar, args_bar, info = _ift_adjoint(inner_loss, w, h, args, w_bar, solver)[:3]
            sink_bar = jnp.stack([jnp.asarray(v, jnp.float64) for v in info])
            return h_bar, sink_bar, args_bar

        core.defvjp(fwd, bwd)
        self._core = core

    @staticmethod
    def sink() -> jnp.ndarray:
        """A zero info sink, shape ``(len(INFO_SINK_FIELDS),)``."""
        return jnp.zeros((len(INFO_SINK_FIELDS),))

    @staticmethod
    def info(sink_grad) -> IHVPInfo:
        """The :class:`IHVPInfo` carried by the gradient of a sink."""
        s = jnp.asarray(sink_grad)
        return _info(s[0], s[1], s[2])

    def __call__(self, h, *args):
        return self._core(h, self.sink(), tuple(args))

    def with_sink(self, h, sink, *args):
        return self._core(h, sink, tuple(args))


def implicit_solution(inner_solver, inner_loss, solver="auto") -> ImplicitSolution:
    r"""Wrap ``inner_solver(h, *args) -> w*`` so that ``jax.grad`` goes through the IFT.

    Args:
        inner_solver: ``(h, *args) -> w*`` minimising ``inner_loss`` (any pytree;
            not differentiated through, may contain while loops).
        inner_loss: ``(w, h, *args) -> scalar``.
        solver: iHVP solver value or ``"auto"``.

    Returns:
        An :class:`ImplicitSolution`, callable as ``w_star = sol(h, *args)`` inside
        any outer objective; works under ``jax.grad`` and ``jax.jit``.

    Example::

        sol = implicit_solution(ridge_solve, ridge_loss, CG(200, 1e-10))
        val_loss = lambda h: outer(sol(h, X, y), h)
        jax.jit(jax.grad(val_loss))(h)
    """
    return ImplicitSolution(inner_solver, inner_loss, solver)


# --------------------------------------------------------------------------- #
# GP hyperparameter optimisation on a validation loss
# --------------------------------------------------------------------------- #
_KERNELS = ("rotated", "ard")
_OBJECTIVES = ("nlpd", "mse")
_LOG_2PI = math.log(2.0 * math.pi)


def gp_params(theta: dict, kernel: str) -> tuple[dict, jnp.ndarray]:
    """Kernel parameter dict (see :func:`aniso_gp.kernels.gram`) and noise variance from ``theta``.

    ``theta`` is unconstrained: ``log_lengthscales`` (3,), ``axis_angle`` (3,)
    (rotated only), ``log_signal`` and ``log_noise`` (log standard deviations).
    """
    params = {
        "lengthscales": jnp.exp(theta["log_lengthscales"]),
        "variance": jnp.exp(2.0 * theta["log_signal"]),
    }
    if kernel == "rotated":
        params["axis_angle"] = theta["axis_angle"]
    return params, jnp.exp(2.0 * theta["log_noise"])


def kernel_apply(X1, X2, params, base, V, block=None):
    r"""``K(X1, X2) V`` for ``V`` (N2,) or (N2, r), optionally in row blocks of ``X1``.

    With ``block`` set, ``K`` is never formed: rows of ``X1`` are processed
    ``block`` at a time (O(block * N2) memory) under ``jax.checkpoint``, so
    reverse mode recomputes each block instead of storing it.
    """
    A = kernels.transform_matrix(params)
    Z1, Z2 = X1 @ A, X2 @ A
    variance = params.get("variance", 1.0)
    if block is None or X1.shape[0] <= block:
        return matmul(kernels.gram_transformed(Z1, Z2, variance, base), V)
    n1 = Z1.shape[0]
    nb = -(-n1 // block)
    # Padding rows only add output rows, which are cut off below.
    Zp = jnp.concatenate([Z1, jnp.zeros((nb * block - n1, 3), Z1.dtype)]).reshape(nb, block, 3)

    @jax.checkpoint
    def rows(Zb):
        return matmul(kernels.gram_transformed(Zb, Z2, variance, base), V)

    out = jax.lax.map(rows, Zp)
    return out.reshape((nb * block,) + out.shape[2:])[:n1]


def _standardise(X_train, y_train, X_val, y_val):
    Xt = check.coordinates(X_train, "X_train", min_points=2)
    yt = check.values(y_train, Xt.shape[0], "y_train")
    Xv = check.coordinates(X_val, "X_val")
    yv = check.values(y_val, Xv.shape[0], "y_val")
    centre = jnp.mean(Xt, axis=0)
    y_mean, y_sd = jnp.mean(yt), jnp.std(yt)
    if not float(y_sd) > 0:
        raise ValueError("`y_train` is constant: there is nothing to fit")
    return Xt - centre, (yt - y_mean) / y_sd, Xv - centre, (yv - y_mean) / y_sd, y_mean, y_sd


def _initial_theta(Xt, kernel, init, y_sd):
    if init is None:
        extent = np.ptp(np.asarray(Xt), axis=0)
        scale = max(float(np.mean(extent)), 1e-12) / 4.0
        # Distinct starting length-scales: with equal ones the rotation has zero gradient.
        ls = scale * np.array([1.25, 1.0, 0.8])
        theta = {
            "log_lengthscales": np.log(ls),
            "log_signal": 0.0,
            "log_noise": math.log(0.3),
        }
        if kernel == "rotated":
            theta["axis_angle"] = np.zeros(3)
        return _strong(theta)
    if not isinstance(init, dict):
        raise ValueError(
            "`init` must be a dict of lengthscales, axis_angle, variance, noise_variance"
        )
    theta = {
        "log_lengthscales": jnp.log(check.lengthscales(init["lengthscales"])),
        "log_signal": 0.5 * jnp.log(check.positive_scalar(init["variance"], "variance") / y_sd**2),
        "log_noise": 0.5
        * jnp.log(check.positive_scalar(init["noise_variance"], "noise_variance") / y_sd**2),
    }
    if kernel == "rotated":
        theta["axis_angle"] = check.vector3(init.get("axis_angle", np.zeros(3)), "axis_angle")
    return _strong(theta)


def _strong(tree):
    # Strongly typed float64 leaves: weakly typed Python scalars would make the
    # jitted step retrace once the optimiser hands back strongly typed arrays.
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype=jnp.float64), tree)


def _validation_loss(objective, mu, var, yv):
    if objective == "mse":
        return jnp.mean((mu - yv) ** 2)
    return 0.5 * jnp.mean(_LOG_2PI + jnp.log(var) + (yv - mu) ** 2 / var)


class _Plan(NamedTuple):
    """How one outer step solves with ``H``: ``solve(b, x0) -> (x, info)`` plus its set-up cost."""

    solve: Callable
    setup_matvecs: jnp.ndarray
    state: Any


def _make_plan(solver, matvec, n, s2, dense_H, key, state, kernel_factor=None):
    """Factorise / precondition ``H`` once per step for the solves that share it."""
    if isinstance(solver, Exact):
        Hs = dense_H()
        L, _ = dense.cholesky(Hs)
        L = _require(L, _all_finite(L), "Exact(): K + s^2 I is not positive definite")

        def solve(b, x0=None):
            x = cho_solve((L, True), b)
            return x, _info(0, _relative_residual(b, matmul(Hs, x)))

        return _Plan(solve, jnp.asarray(0, jnp.int32), state)
    if isinstance(solver, CG):
        return _Plan(
            lambda b, x0=None: _pcg(matvec, b, None, solver.tol, solver.maxiter, x0),
            jnp.asarray(0, jnp.int32),
            state,
        )
    if isinstance(solver, NystromPCG):
        _check_rank(solver.rank, n)
        factor = kernel_factor(solver.rank, key) if solver.sketch == "kernel" else None
        U, lam, sketched = _factor_or_sketch(solver, factor, matvec, s2, n, key)
        P = _preconditioner(U, lam, s2)
        return _Plan(
            lambda b, x0=None: _pcg(matvec, b, P, solver.tol, solver.maxiter, x0),
            jnp.asarray(sketched, jnp.int32),
            state,
        )
    if isinstance(solver, SpectralReuse):
        state, P, spent = solver.update(state, matvec, shift=s2, key=key)
        return _Plan(
            lambda b, x0=None: _pcg(matvec, b, P, solver.tol, solver.maxiter, x0), spent, state
        )
    raise TypeError(f"{type(solver).__name__} cannot solve the inner problem")


def _solve_columns(plan, B, X0):
    """``H^{-1} B`` column by column (B (n, m)); info summed over columns."""
    if X0 is None:
        X, info = jax.vmap(lambda b: plan.solve(b), in_axes=1, out_axes=(1, 0))(B)
    else:
        X, info = jax.vmap(plan.solve, in_axes=(1, 1), out_axes=(1, 0))(B, X0)
    return X, _info(jnp.sum(info.matvecs), jnp.max(info.residual_norm), jnp.max(info.iterations))


@functools.partial(
    jax.jit, static_argnames=("kernel", "base", "objective", "solver", "inner", "block")
)
def _gp_hypergrad_step(
    theta, carry, key, Xt, yt, Xv, yv, *, kernel, base, objective, solver, inner, block
):
    """One outer step: inner solve, iHVP and hypergradient (pure, compiled once per config).

    ``carry`` = (reuse state or None, w0, V0 or None, u0): warm starts for the
    CG-type solves (zeros for a cold start; PCG then starts from 0 and the check
    costs one HVP). Returns ``(val_loss, grad, carry, metrics)``.
    """
    state, w_prev, V_prev, u_prev = carry
    n = Xt.shape[0]
    params, s2 = gp_params(theta, kernel)
    if block is None:
        K = kernels.gram(Xt, Xt, params, base)

        def matvec(v):
            return matmul(K, v) + s2 * v

        def dense_H():
            return K + s2 * jnp.eye(n, dtype=K.dtype)

    else:

        def matvec(v):
            return kernel_apply(Xt, Xt, params, base, v, block) + s2 * v

        def dense_H():
            raise ValueError("Exact() needs the dense kernel matrix; use a matrix-free solver")

    k_inner, k_ihvp = jax.random.split(key)
    def kernel_factor(rank, key):
        return kernel_nystrom(Xt, params, base, rank, key)

    plan = _make_plan(inner, matvec, n, s2, dense_H, k_inner, state, kernel_factor)
    shared = inner is solver
    w, info_w = plan.solve(yt, w_prev)
    if objective == "nlpd":
        Ktv = kernels.gram(Xt, Xv, params, base)  # (n, m): needed whole, as V is
        V, info_v = _solve_columns(plan, Ktv, V_prev)
    else:
        V, info_v = None, _info(0, 0.0)

    def val_loss(w_, theta_):
        """The outer loss at fixed inner variables (``V`` enters variationally)."""
        p_, s2_ = gp_params(theta_, kernel)
        mu = kernel_apply(Xv, Xt, p_, base, w_, block)
        if objective == "mse":
            return _validation_loss("mse", mu, None, yv)
        # sigma_j^2 = k_jj + s^2 - 2 k_j^T v_j + v_j^T H v_j is stationary in v_j at
        # v_j = H^{-1} k_j: its partial theta-derivative is the total one, so V needs
        # no adjoint solve.
        KtvV = kernel_apply(Xv, Xt, p_, base, V, block)  # (m, m): row j = k_j^T V
        HV = kernel_apply(Xt, Xt, p_, base, V, block) + s2_ * V
        var = p_["variance"] + s2_ - 2.0 * jnp.diagonal(KtvV) + jnp.sum(V * HV, axis=0)
        return _validation_loss("nlpd", mu, var, yv)

    loss, g_w = jax.value_and_grad(val_loss)(w, theta)
    if shared:  # the inner solve's factor / preconditioner serves the iHVP too
        u, info_u = plan.solve(g_w, u_prev)
    else:
        factor = (kernel_factor(solver.rank, k_ihvp)
                  if getattr(solver, "sketch", None) == "kernel" else None)
        u, info_u = solve_ihvp(solver, matvec, g_w, shift=s2, key=k_ihvp, factor=factor)
    new_state = plan.state

    def surrogate(theta_):
        """``g(w, theta) - u^T (K(theta) + s^2(theta) I) w``, w and u fixed: gradient dg/dtheta."""
        p_, s2_ = gp_params(theta_, kernel)
        Kw = kernel_apply(Xt, Xt, p_, base, w, block)
        return val_loss(w, theta_) - jnp.dot(u, Kw) - s2_ * jnp.dot(u, w)

    grad = jax.grad(surrogate)(theta)
    metrics = {
        "inner_matvecs": info_w.matvecs + info_v.matvecs,
        "ihvp_matvecs": info_u.matvecs,
        "precond_matvecs": plan.setup_matvecs,
        "residual": info_u.residual_norm,
        "inner_residual": jnp.maximum(info_w.residual_norm, info_v.residual_norm),
        "ihvp_iterations": info_u.iterations,
        "inner_iterations": info_w.iterations,
    }
    if isinstance(new_state, ReuseState):
        metrics["refreshed"] = new_state.refreshes - (0 if state is None else state.refreshes)
        metrics["staleness"] = new_state.staleness
    return loss, grad, (new_state, w, V, u), metrics


def _inner_solver_for(solver, n: int, matrix_free: bool):
    """The solver of the inner (weight) problem: shared with the iHVP when it can be."""
    if isinstance(solver, (Exact, CG, NystromPCG, SpectralReuse)):
        return solver
    if matrix_free or n > AUTO_DENSE_MAX["gpu" if _on_gpu() else "cpu"]:
        return NystromPCG(rank=min(AUTO_RANK, n - 1), maxiter=AUTO_MAXITER, tol=AUTO_TOL)
    return Exact()


def validation_hypergradient(
    theta: dict,
    X_train,
    y_train,
    X_val,
    y_val,
    kernel: str = "rotated",
    base: str = "rbf",
    solver="auto",
    objective: str = "mse",
    *,
    seed: int = 0,
    matrix_free: bool = False,
):
    r"""Validation loss and its hypergradient at unconstrained ``theta`` (one outer step).

    The same computation as one step of :func:`optimize_hyperparameters`, on the
    data as given (no centring or standardisation). ``theta`` holds
    ``log_lengthscales``, ``axis_angle`` (rotated), ``log_signal``, ``log_noise``
    (see :func:`gp_params`).

    Returns:
        ``(loss, grad, metrics)``: the validation loss, ``dloss/dtheta`` (a dict like
        ``theta``) and a dict of Python numbers (HVPs of the inner solve, iHVP and
        preconditioner, residuals, iterations).
    """
    if kernel not in _KERNELS:
        raise ValueError(f"`kernel` must be one of {_KERNELS}; got {kernel!r}")
    if objective not in _OBJECTIVES:
        raise ValueError(f"`objective` must be one of {_OBJECTIVES}; got {objective!r}")
    base = check.base_name(base)
    Xt = check.coordinates(X_train, "X_train", min_points=2)
    yt = check.values(y_train, Xt.shape[0], "y_train")
    Xv = check.coordinates(X_val, "X_val")
    yv = check.values(y_val, Xv.shape[0], "y_val")
    n = Xt.shape[0]
    solver = resolve_solver(solver, n)
    if matrix_free and isinstance(solver, Exact):
        raise ValueError("Exact() needs the dense kernel matrix; it cannot run matrix-free")
    if isinstance(solver, (Nystrom, NystromPCG, SpectralReuse)):
        _check_rank(solver.rank, n)
    inner = _inner_solver_for(solver, n, matrix_free)
    carry = _cold_carry(inner, n, Xv.shape[0], objective)
    loss, grad, _, metrics = _gp_hypergrad_step(
        _strong(theta), carry, jax.random.PRNGKey(seed), Xt, yt, Xv, yv,
        kernel=kernel, base=base, objective=objective, solver=solver, inner=inner,
        block=_BLOCK if matrix_free else None,
    )
    return loss, grad, _metrics_row(metrics)


def _cold_carry(inner, n: int, m: int, objective: str, state=None):
    """Zero warm starts (and a fresh reuse state unless one is passed on)."""
    if state is None and isinstance(inner, SpectralReuse):
        state = inner.init(n)
    V0 = jnp.zeros((n, m)) if objective == "nlpd" else None
    return (state, jnp.zeros(n), V0, jnp.zeros(n))


def _metrics_row(metrics: dict) -> dict:
    row = {}
    for key, value in metrics.items():
        is_float = key in ("residual", "inner_residual", "staleness")
        row[key] = float(value) if is_float else int(value)
    row["total_matvecs"] = row["inner_matvecs"] + row["ihvp_matvecs"] + row["precond_matvecs"]
    return row


def optimize_hyperparameters(
    X_train,
    y_train,
    X_val,
    y_val,
    kernel: str = "rotated",
    base: str = "rbf",
    solver="auto",
    objective: str = "nlpd",
    steps: int = 100,
    learning_rate: float = 0.05,
    seed: int = 0,
    *,
    init: dict | None = None,
    warm_start: bool = True,
    matrix_free: bool | None = None,
) -> tuple[dict, pd.DataFrame]:
    r"""Tune kernel hyperparameters on a validation loss by implicit hypergradients.

    Inner problem: ``w* = argmin 1/2 w^T (K + s^2 I) w - y^T w = (K + s^2 I)^{-1} y``
    on the training data (``H = K + s^2 I``). Outer loss on the validation data,
    with predictive mean ``mu = K_vt w*`` and variance
    ``sigma_j^2 = s_f^2 + s^2 - k_j^T H^{-1} k_j``:

    * ``"mse"``: ``mean (y_v - mu)^2`` (one solve and one iHVP per step);
    * ``"nlpd"``: ``mean [log(2 pi sigma^2) + (y_v - mu)^2/sigma^2] / 2``; the
      variances need ``m`` more solves (one per validation point), so prefer
      ``"mse"`` or a small validation set for large problems.

    Optimised with ``optax.adam`` on unconstrained ``theta`` = (log
    length-scales, axis-angle [rotated], log signal sd, log noise sd).
    Coordinates are centred and values standardised internally; results are in
    the user's units.

    Args:
        X_train, y_train: (N, 3) and (N,) training data.
        X_val, y_val: (M, 3) and (M,) validation data.
        kernel: ``"rotated"`` or ``"ard"``.
        base: ``"rbf"``, ``"matern12"``, ``"matern32"`` or ``"matern52"``.
        solver: iHVP solver value or ``"auto"``. Exact, CG, NystromPCG and
            SpectralReuse also solve the inner problem (sharing factor or
            preconditioner); with Neumann or Nystrom the inner problem is solved
            by the ``"auto"`` choice.
        objective: ``"nlpd"`` or ``"mse"``.
        steps: optimiser steps.
        learning_rate: Adam step size.
        seed: seed of randomized sketches and probes.
        init: optional starting values in user units (``lengthscales``,
            ``axis_angle``, ``variance``, ``noise_variance``).
        warm_start: start each step's CG-type solves from the previous step's solutions.
        matrix_free: apply ``K`` in row blocks instead of forming it (default: when
            ``N > MATRIX_FREE_MIN``).

    Returns:
        ``(params, history)``: ``params`` with ``lengthscales``, ``axis_angle``
        (rotated), ``variance``, ``noise_variance``, ``mean``, ``val_loss`` (at the
        returned parameters) in user units; ``history`` a DataFrame with one row per
        step (validation loss before the step, HVPs of the inner solve, iHVP and
        preconditioner, iHVP residual, reuse refreshes/staleness, wall time).
    """
    if kernel not in _KERNELS:
        raise ValueError(f"`kernel` must be one of {_KERNELS}; got {kernel!r}")
    if objective not in _OBJECTIVES:
        raise ValueError(f"`objective` must be one of {_OBJECTIVES}; got {objective!r}")
    base = check.base_name(base)
    steps = _positive_int(steps, "steps")
    learning_rate = _positive_float(learning_rate, "learning_rate")
    Xt, yt, Xv, yv, y_mean, y_sd = _standardise(X_train, y_train, X_val, y_val)
    n = Xt.shape[0]
    matrix_free = n > MATRIX_FREE_MIN if matrix_free is None else bool(matrix_free)
    block = _BLOCK if matrix_free else None
    solver = resolve_solver(solver, n)
    if matrix_free and isinstance(solver, Exact):
        raise ValueError("Exact() needs the dense kernel matrix; it cannot run matrix-free")
    if isinstance(solver, (Nystrom, NystromPCG, SpectralReuse)):
        _check_rank(solver.rank, n)
    inner = _inner_solver_for(solver, n, matrix_free)
    theta = _initial_theta(Xt, kernel, init, y_sd)

    def step_fn(th, carry, key):
        # Data positional, as in validation_hypergradient: one compiled step serves both.
        return _gp_hypergrad_step(
            th, carry, key, Xt, yt, Xv, yv, kernel=kernel, base=base, objective=objective,
            solver=solver, inner=inner, block=block,
        )

    opt = optax.adam(learning_rate)
    opt_state = opt.init(theta)
    m = Xv.shape[0]
    carry = _cold_carry(inner, n, m, objective)
    base_key = jax.random.PRNGKey(seed)
    # Loss offsets from standardised to user units.
    to_user = (lambda v: v * float(y_sd) ** 2) if objective == "mse" else (
        lambda v: v + math.log(float(y_sd))
    )
    rows = []
    for step in range(steps):
        t0 = time.perf_counter()
        if not warm_start:
            carry = _cold_carry(inner, n, m, objective, state=carry[0])
        loss, grad, carry, metrics = step_fn(theta, carry, jax.random.fold_in(base_key, step))
        grad = _require(grad, _all_finite(grad), f"non-finite hypergradient at step {step}")
        updates, opt_state = opt.update(grad, opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        jax.block_until_ready(theta)
        row = {"step": step, "val_loss": to_user(float(loss)), **_metrics_row(metrics)}
        row["grad_norm"] = float(ravel_pytree(grad)[0] @ ravel_pytree(grad)[0]) ** 0.5
        row["time_s"] = time.perf_counter() - t0
        rows.append(row)
    final_loss, *_ = step_fn(theta, carry, jax.random.fold_in(base_key, steps))
    params, s2 = gp_params(theta, kernel)
    out = {
        "lengthscales": np.asarray(params["lengthscales"]),
        "variance": float(params["variance"]) * float(y_sd) ** 2,
        "noise_variance": float(s2) * float(y_sd) ** 2,
        "mean": float(y_mean),
        "val_loss": to_user(float(final_loss)),
    }
    if kernel == "rotated":
        out["axis_angle"] = np.asarray(params["axis_angle"])
    history = pd.DataFrame(rows)
    history.attrs["solver"] = repr(solver)
    history.attrs["inner_solver"] = repr(inner)
    history.attrs["objective"] = objective
    return out, history


# --------------------------------------------------------------------------- #
# Laplace-approximation GP
# --------------------------------------------------------------------------- #
LIKELIHOODS = ("poisson", "student_t")


def log_likelihood(likelihood: str, y, f, lik_params: dict) -> jnp.ndarray:
    r"""``sum_i log p(y_i | f_i)``.

    * ``"poisson"`` (log link): ``y f - exp(f) - log y!``.
    * ``"student_t"``: location ``f``, scale ``sigma``, ``df`` ``nu``:
      ``log Gamma((nu+1)/2) - log Gamma(nu/2) - log(nu pi sigma^2)/2
      - (nu+1)/2 log(1 + (y - f)^2/(nu sigma^2))``.
    """
    if likelihood == "poisson":
        return jnp.sum(y * f - jnp.exp(f) - jax.scipy.special.gammaln(y + 1.0))
    if likelihood == "student_t":
        nu, sigma = lik_params["df"], lik_params["scale"]
        r2 = (y - f) ** 2 / (nu * sigma**2)
        const = (
            jax.scipy.special.gammaln(0.5 * (nu + 1.0))
            - jax.scipy.special.gammaln(0.5 * nu)
            - 0.5 * jnp.log(nu * jnp.pi * sigma**2)
        )
        return jnp.sum(const - 0.5 * (nu + 1.0) * jnp.log1p(r2))
    raise ValueError(f"`likelihood` must be one of {LIKELIHOODS}; got {likelihood!r}")


def _neg_curvature(likelihood, y, f, lik_params):
    """``W = -d^2 log p / df^2`` (diagonal, (N,)); the likelihood factorises over points."""

    def grad_f(ff):
        return jax.grad(lambda g: log_likelihood(likelihood, y, g, lik_params))(ff)

    return -jax.jvp(grad_f, (f,), (jnp.ones_like(f),))[1]


def _whitened_loss(likelihood):
    """``Psi(z; h) = -log p(y | m + L z) + |z|^2 / 2``, ``h = {"L", "mean", "lik"}``."""

    def loss(z, h, y):
        f = h["mean"] + matmul(h["L"], z)
        return -log_likelihood(likelihood, y, f, h["lik"]) + 0.5 * jnp.dot(z, z)

    return loss


class LaplaceMode(NamedTuple):
    """Posterior mode of a Laplace GP.

    Attributes:
        f: (N,) latent mode ``m + L z``.
        z: (N,) whitened mode.
        W: (N,) negative log-likelihood curvature at ``f``.
        iterations: Newton iterations.
        grad_norm: max-norm of the gradient of the whitened objective at the mode.
        converged: ``grad_norm <= tol``.
    """

    f: jnp.ndarray
    z: jnp.ndarray
    W: jnp.ndarray
    iterations: jnp.ndarray
    grad_norm: jnp.ndarray
    converged: jnp.ndarray


def _newton_whitened(likelihood, h, y, max_iter: int, tol: float):
    r"""Newton on ``Psi(z)`` with Armijo backtracking; where the Student-t likelihood
    makes the Hessian indefinite, ``W`` is clipped at 0 for that step."""
    loss = _whitened_loss(likelihood)
    L = h["L"]
    n = L.shape[0]
    eye = jnp.eye(n, dtype=L.dtype)

    def psi(z):
        return loss(z, h, y)

    def cond(state):
        it, _, _, _, go_on = state
        return (it < max_iter) & go_on

    def body(state):
        it, z, val, gnorm_prev, _ = state
        g = jax.grad(psi)(z)
        W = _neg_curvature(likelihood, y, h["mean"] + matmul(L, z), h["lik"])
        # The true Hessian where it is positive definite (always near a mode:
        # quadratic convergence); else W clipped at 0, whose I + L^T W+ L has every
        # eigenvalue >= 1 (a descent direction, no jitter needed).
        C = jnp.linalg.cholesky(eye + matmul(L.T * W, L))
        C = jax.lax.cond(
            _all_finite(C),
            lambda: C,
            lambda: jnp.linalg.cholesky(eye + matmul(L.T * jnp.maximum(W, 0.0), L)),
        )
        d = cho_solve((C, True), g)
        slope = jnp.dot(g, d)
        # Round-off slack: at the mode Psi cannot resolve decreases below eps |Psi|.
        slack = 1e-14 * jnp.abs(val)

        def ls_cond(s):
            a, v = s
            return (v > val - 1e-4 * a * slope + slack) & (a > 1e-10)

        def ls_body(s):
            a, _ = s
            return 0.5 * a, psi(z - 0.5 * a * d)

        a, v = jax.lax.while_loop(ls_cond, ls_body, (1.0, psi(z - d)))
        z_new = jnp.where(v <= val + slack, z - a * d, z)
        g_new = jax.grad(psi)(z_new)
        gnorm = jnp.max(jnp.abs(g_new))
        # One Newton step past the tolerance: quadratic convergence takes the mode
        # to round-off, so that the log-determinant (first order in the mode) and
        # finite differences of it are not limited by `tol`.
        return it + 1, z_new, jnp.minimum(v, val), gnorm, gnorm_prev > tol

    z0 = jnp.zeros(n, dtype=L.dtype)
    g0 = jnp.max(jnp.abs(jax.grad(psi)(z0)))
    init = (jnp.asarray(0, jnp.int32), z0, psi(z0), g0, jnp.asarray(True))
    it, z, _, gnorm, _ = jax.lax.while_loop(cond, body, init)
    return z, it, gnorm


def _laplace_check(theta, X, y, likelihood, base, max_iter):
    """Eager input checks; returns coerced ``X`` (N, 3) and ``y`` (N,)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"`likelihood` must be one of {LIKELIHOODS}; got {likelihood!r}")
    X = check.coordinates(X, "X", min_points=2)
    y = check.values(y, X.shape[0], "y")
    check.base_name(base)
    _positive_int(max_iter, "max_iter")
    if not isinstance(theta, dict) or "kernel" not in theta:
        raise ValueError('`theta` must be a dict {"kernel": {...}, "mean": m, "likelihood": {...}}')
    lik = theta.get("likelihood", {})
    if likelihood == "student_t":
        for name in ("df", "scale"):
            if name not in lik:
                raise ValueError(f'student_t needs theta["likelihood"]["{name}"]')
            if _concrete(lik[name]) and not float(lik[name]) > 0:
                raise ValueError(f'theta["likelihood"]["{name}"] must be > 0; got {lik[name]}')
    elif _concrete(y):
        yn = np.asarray(y)
        if np.any(yn < 0) or np.any(yn != np.round(yn)):
            raise ValueError("poisson likelihood needs non-negative integer counts `y`")
    return X, y


def _laplace_prior(theta, X, base):
    """``h = {"L": chol K, "mean", "lik"}``: everything the whitened inner problem depends on."""
    K = kernels.gram(X, X, theta["kernel"], base)
    # dense.cholesky's jitter, with a tangent rule that reverse mode can use.
    L = nystrom.jittered_cholesky(K)
    L = _require(L, _all_finite(L), "the prior kernel matrix is not positive definite")
    lik = dict(theta.get("likelihood", {}))
    return {"L": L, "mean": jnp.asarray(theta.get("mean", 0.0), jnp.float64), "lik": lik}


_LAPLACE_STATIC = ("likelihood", "base", "max_iter", "tol")


@functools.partial(jax.jit, static_argnames=_LAPLACE_STATIC)
def _laplace_mode_jit(theta, X, y, likelihood, base, max_iter, tol):
    h = _laplace_prior(theta, X, base)
    z, it, gnorm = _newton_whitened(likelihood, h, y, max_iter, tol)
    f = h["mean"] + matmul(h["L"], z)
    W = _neg_curvature(likelihood, y, f, h["lik"])
    return LaplaceMode(f, z, W, it, gnorm, gnorm <= tol)


def laplace_mode(
    theta: dict,
    X,
    y,
    likelihood: str = "poisson",
    base: str = "rbf",
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> LaplaceMode:
    r"""Posterior mode of a GP with a non-Gaussian likelihood, by Newton iterations.

    Prior ``f ~ N(m, K)`` with ``K = L L^T`` (``linalg.dense.cholesky``); the mode is
    found in whitened coordinates ``f = m + L z``, where the Hessian of
    ``Psi(z) = -log p(y|f) + |z|^2/2`` is ``I + L^T W L`` (eigenvalues >= 1 where
    ``W >= 0``), far better conditioned than ``W + K^{-1}``.

    Args:
        theta: ``{"kernel": kernel params (see kernels.gram), "mean": m,
            "likelihood": {} (poisson) or {"df": nu, "scale": sigma} (student_t)}``.
        X: (N, 3) inputs. y: (N,) counts (poisson) or values (student_t).
        likelihood: ``"poisson"`` or ``"student_t"``.
        base: kernel base.
        max_iter, tol: Newton cap and max-norm gradient tolerance.
    """
    X, y = _laplace_check(theta, X, y, likelihood, base, max_iter)
    return _laplace_mode_jit(
        theta, X, y, likelihood=likelihood, base=base, max_iter=max_iter, tol=float(tol)
    )


def _laplace_objective(theta, X, y, sink, likelihood, base, solver, max_iter, tol):
    h = _laplace_prior(theta, X, base)
    loss = _whitened_loss(likelihood)
    sol = implicit_solution(
        lambda hh, yy: _newton_whitened(likelihood, hh, yy, max_iter, tol)[0], loss, solver
    )
    z = sol.with_sink(h, sink, y)
    f = h["mean"] + matmul(h["L"], z)
    W = _neg_curvature(likelihood, y, f, h["lik"])
    n = z.shape[0]
    B = jnp.eye(n) + matmul(h["L"].T * W, h["L"])
    # At a mode B is positive definite (second-order condition): a failed
    # factorisation means no Laplace approximation exists there, reported as NaN.
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(0.5 * (B + B.T)))))
    return log_likelihood(likelihood, y, f, h["lik"]) - 0.5 * jnp.dot(z, z) - 0.5 * logdet


@functools.partial(jax.jit, static_argnames=_LAPLACE_STATIC + ("solver",))
def _laplace_objective_jit(theta, X, y, likelihood, base, solver, max_iter, tol):
    sink = ImplicitSolution.sink()
    return _laplace_objective(theta, X, y, sink, likelihood, base, solver, max_iter, tol)


@functools.partial(jax.jit, static_argnames=_LAPLACE_STATIC + ("solver",))
def _laplace_value_and_grad_jit(theta, X, y, likelihood, base, solver, max_iter, tol):
    def objective(th, sink):
        return _laplace_objective(th, X, y, sink, likelihood, base, solver, max_iter, tol)

    return jax.value_and_grad(objective, argnums=(0, 1))(theta, ImplicitSolution.sink())


def laplace_log_marginal(
    theta: dict,
    X,
    y,
    likelihood: str = "poisson",
    base: str = "rbf",
    solver="auto",
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> jnp.ndarray:
    r"""Laplace approximation of ``log p(y | theta)``, differentiable in ``theta``.

    .. math::
        \log q(y) = \log p(y | \hat f) - \tfrac12 \hat z^T \hat z
                    - \tfrac12 \log |I + L^T \hat W L|

    (``hat f = m + L hat z`` the mode, ``|I + L^T W L| = |I + W^{1/2} K W^{1/2}|``).
    ``jax.grad`` of it differentiates the mode implicitly (:func:`implicit_solution`,
    iHVPs with ``solver``), the Cholesky of ``K`` and the log-determinant by
    ordinary autodiff. ``theta`` as in :func:`laplace_mode`. Compiled once per
    (likelihood, base, solver, max_iter, tol) and input shapes.
    """
    X, y = _laplace_check(theta, X, y, likelihood, base, max_iter)
    _ = solver if isinstance(solver, _SOLVER_TYPES) else resolve_solver(solver, 1)
    return _laplace_objective_jit(
        theta, X, y, likelihood=likelihood, base=base, solver=solver, max_iter=max_iter,
        tol=float(tol),
    )


def laplace_value_and_grad(
    theta: dict,
    X,
    y,
    likelihood: str = "poisson",
    base: str = "rbf",
    solver="auto",
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
):
    """``(log q, d log q / d theta, info)``: :func:`laplace_log_marginal`, its gradient
    (a dict like ``theta``) and the :class:`IHVPInfo` of the implicit solve."""
    X, y = _laplace_check(theta, X, y, likelihood, base, max_iter)
    _ = solver if isinstance(solver, _SOLVER_TYPES) else resolve_solver(solver, 1)
    value, (g, sink_grad) = _laplace_value_and_grad_jit(
        theta, X, y, likelihood=likelihood, base=base, solver=solver, max_iter=max_iter,
        tol=float(tol),
    )
    return value, g, ImplicitSolution.info(sink_grad)


__all__ = [
    "AUTO_DENSE_MAX",
    "CG",
    "Exact",
    "IHVPInfo",
    "INFO_SINK_FIELDS",
    "ImplicitSolution",
    "LIKELIHOODS",
    "LaplaceMode",
    "Neumann",
    "Nystrom",
    "NystromPCG",
    "ReuseState",
    "SpectralReuse",
    "gp_params",
    "implicit_grad",
    "implicit_solution",
    "kernel_apply",
    "laplace_log_marginal",
    "laplace_mode",
    "laplace_value_and_grad",
    "log_likelihood",
    "hessian_nystrom",
    "optimize_hyperparameters",
    "resolve_solver",
    "solve_ihvp",
    "validation_hypergradient",
]
