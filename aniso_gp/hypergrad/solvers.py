r"""iHVP solver values (``u ~ H^{-1} b``), spectral reuse, Nystrom factors and
:func:`solve_ihvp` (the package docstring has the maths).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from aniso_gp import _validation as check
from aniso_gp import kernels
from aniso_gp.linalg import dense, nystrom, solvers
from aniso_gp.linalg.operators import EigenLowRankPlusShift, matmul

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
# The operator, a prepared state and the result record
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True, eq=False)
class Operator:
    r"""The SPD operator ``H = A + shift I`` of an iHVP, given by its products.

    Attributes:
        matvec: ``v -> H v`` on (n,) arrays.
        n: dimension.
        shift: known ``mu >= 0`` with ``H = A + mu I`` (the noise variance of
            ``K + s^2 I``); Nystrom preconditioners then sketch ``A``.
        matrix: ``() -> H`` (n, n) where the dense matrix is at hand (:class:`Exact`
            then spends no HVPs); ``None``: formed from ``n`` HVPs when needed.
        factor: ``(rank, key) -> (U, lam)``, a Nystrom eigen-factor of ``A`` that
            the caller makes more cheaply than a sketch (:func:`kernel_nystrom`);
            what a ``sketch="kernel"`` solver reads.
        matrix_free: ``H`` must never be formed (memory): :class:`Exact` refuses
            and :class:`Auto` picks a matrix-free solver.
    """

    matvec: Callable
    n: int
    shift: Any = 0.0
    matrix: Callable | None = None
    factor: Callable | None = None
    matrix_free: bool = False


class SolverState(NamedTuple):
    """What ``solver.init(operator)`` prepared (a factor, a preconditioner).

    Attributes:
        solve: ``(b, x0) -> (x, info)`` for one right-hand side.
        setup_matvecs: HVPs the preparation spent (sketch, dense matrix).
        carry: what the next operator's ``init`` receives (a :class:`ReuseState`
            for :class:`SpectralReuse`, else ``None``).
        stats: solver-specific numbers for a history row (reuse refreshes, staleness).
    """

    solve: Callable
    setup_matvecs: Any
    carry: Any = None
    stats: dict = {}


class IHVPSolution(NamedTuple):
    """The result of :func:`solve_ihvp`, one record for every solver.

    Attributes:
        value: (n,) ``u ~ H^{-1} b``.
        info: :class:`IHVPInfo` (set-up HVPs included).
        state: the :class:`ReuseState` to pass on (:class:`SpectralReuse`), else ``None``.
    """

    value: jnp.ndarray
    info: IHVPInfo
    state: Any = None


class _Solver:
    """Behaviour shared by the solver values (lineax's ``init`` / ``compute``).

    ``init(operator, key=, carry=)`` prepares a :class:`SolverState` for one
    operator; ``compute(state, b, x0=)`` solves one right-hand side with it, so
    several solves with the same ``H`` share the factor or preconditioner.
    """

    #: Unbiased (converges to ``H^{-1} b``): can also solve the inner problem.
    shares_inner: ClassVar[bool] = True
    #: Its answer has relative residual < 1 whenever it works (a convergent iteration);
    #: False for a regularised surrogate such as ``(H_k + rho I)^{-1}``, whose residual
    #: can exceed 1 by design (:func:`check_solution` then warns instead of raising).
    residual_below_one: ClassVar[bool] = True

    def __post_init__(self):
        # Every field is checked by its name (the values are frozen dataclasses).
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _FIELD_CHECKS and value is not None:
                object.__setattr__(self, field.name, _FIELD_CHECKS[field.name](value, field.name))

    def pick(self, n: int, matrix_free: bool = False) -> _Solver:
        """The concrete solver this value stands for at dimension ``n``."""
        return self

    def empty_carry(self, n: int):
        """The carry before the first operator (``None`` unless the solver keeps one)."""
        return None

    def init(self, operator: Operator, *, key=None, carry=None) -> SolverState:
        raise NotImplementedError

    def compute(self, state: SolverState, b, *, x0=None):
        """``(x, info)`` for one right-hand side ``b`` (n,)."""
        return state.solve(b, x0)

    def _key(self, key):
        return jax.random.PRNGKey(getattr(self, "seed", 0)) if key is None else key


# --------------------------------------------------------------------------- #
# Solver values
# --------------------------------------------------------------------------- #
_SKETCHES = ("coordinates", "gaussian", "kernel")


def _sketch_name(value) -> str:
    return check.one_of(value, _SKETCHES, "sketch")


#: The check of each solver field, by name.
_FIELD_CHECKS = {
    "rank": check.positive_int,
    "maxiter": check.positive_int,
    "steps": check.positive_int,
    "probes": check.positive_int,
    "seed": lambda v, name: check.integer(v, name, minimum=0),
    "tol": check.tolerance,
    "rho": check.positive_scalar,
    "lr": check.positive_scalar,
    "tau": check.positive_scalar,
    "sketch": lambda v, name: _sketch_name(v),
}


@dataclasses.dataclass(frozen=True)
class Exact(_Solver):
    """Dense Cholesky of ``H`` (formed from ``n`` HVPs unless the matrix is given)."""

    name: ClassVar[str] = "exact"

    def init(self, operator, *, key=None, carry=None):
        if operator.matrix_free:
            raise ValueError("Exact() needs the dense matrix, which this problem never forms"
                             " (matrix-free); use CG, NystromPCG, SpectralReuse or 'auto'")
        n = operator.n
        if operator.matrix is None:
            H, spent = _apply_columns(operator.matvec, jnp.eye(n, dtype=jnp.float64)), n
        else:
            H, spent = operator.matrix(), 0
        H = _require(H, _all_finite(H), _nonfinite_hvp_message("Exact()"))
        Hs = 0.5 * (H + H.T)
        L, _ = dense.cholesky(Hs)
        L = _require(
            L,
            _all_finite(L),
            "Exact(): the Hessian is not positive definite (Cholesky failed even with"
            f" jitter {dense.JITTER_LEVELS[-1]:g} x mean diagonal); w_star may not be a minimum",
        )

        def solve(b, x0=None):
            x = cho_solve((L, True), b)
            return x, _info(0, _relative_residual(b, matmul(Hs, x)))

        return SolverState(solve, jnp.asarray(spent, jnp.int32), carry)


@dataclasses.dataclass(frozen=True)
class CG(_Solver):
    """Conjugate gradients: stop at ``|b - H u| <= tol |b|`` or ``maxiter`` iterations."""

    maxiter: int = 1000
    tol: float = 1e-10
    name: ClassVar[str] = "cg"

    def init(self, operator, *, key=None, carry=None):
        def solve(b, x0=None):
            return _pcg(operator.matvec, b, None, self.tol, self.maxiter, x0)

        return SolverState(solve, jnp.asarray(0, jnp.int32), carry)


@dataclasses.dataclass(frozen=True)
class Neumann(_Solver):
    r"""Truncated Neumann series ``u = lr sum_{t<steps} (I - lr H)^t b``.

    Converges for ``0 < lr < 2/lambda_max(H)``; truncated at ``T`` terms it
    acts like an extra damping of about ``1/(lr T)`` on the small eigenvalues.
    """

    steps: int
    lr: float
    name: ClassVar[str] = "neumann"
    shares_inner: ClassVar[bool] = False

    def init(self, operator, *, key=None, carry=None):
        def solve(b, x0=None):
            x, si = solvers.neumann(operator.matvec, b, steps=self.steps, lr=self.lr)
            return x, _info(self.steps + 1, si.residual_norm, si.iterations)

        return SolverState(solve, jnp.asarray(0, jnp.int32), carry)


@dataclasses.dataclass(frozen=True)
class Nystrom(_Solver):
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
    shares_inner: ClassVar[bool] = False
    residual_below_one: ClassVar[bool] = False

    def init(self, operator, *, key=None, carry=None):
        # With a known shift (H = A + mu I) only A is sketched and the identity
        # part is kept exactly: H_k = A_k + mu I; mu = 0 is Hataya & Yamada's case.
        U, lam, sketched = _factor_or_sketch(self, operator, self._key(key))
        damping = operator.shift + self.rho
        full = self.rank == operator.n

        def solve(b, x0=None):
            if full:
                # span(U) is all of R^n: the complement term (b - U U^T b)/rho is
                # round-off divided by rho, so drop it (zero in exact arithmetic).
                x = matmul(U, matmul(U.T, b) / (lam + damping))
            else:
                x = EigenLowRankPlusShift(U, lam, damping).solve(b)
            return x, _info(1, _relative_residual(b, operator.matvec(x)))

        return SolverState(solve, sketched, carry)


@dataclasses.dataclass(frozen=True)
class NystromPCG(_Solver):
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

    def init(self, operator, *, key=None, carry=None):
        U, lam, sketched = _factor_or_sketch(self, operator, self._key(key))
        P = _preconditioner(U, lam, operator.shift)

        def solve(b, x0=None):
            return _pcg(operator.matvec, b, P, self.tol, self.maxiter, x0)

        return SolverState(solve, sketched, carry)


#: Power iterations behind NystromRichardson's default step size.
_POWER_ITERATIONS = 20


@dataclasses.dataclass(frozen=True)
class NystromRichardson(_Solver):
    r"""ASTRA-style iHVP: Neumann / Richardson iterations preconditioned by a Nystrom factor.

    ``u <- u + lr P^{-1} (b - H u)`` from ``u = 0`` (the partial sums of the
    preconditioned Neumann series), stopped at ``|b - H u| <= tol |b|``, with
    the preconditioner of :class:`NystromPCG`. It is the GP counterpart of
    ASTRA's EKFAC-preconditioned Neumann iterations (Wang et al., *Better
    Training Data Attribution via Better Inverse Hessian-Vector Products*,
    NeurIPS 2025): the factor maps the top of the spectrum of ``H = A + mu I``
    to about ``lam_k + mu``, so the iteration count goes from
    ``~ (lam_1 + mu)/mu`` (plain Neumann) to ``~ (lam_k + mu)/mu``. Each step is
    one HVP and needs no inner products, which suits stochastic or distributed
    HVPs; CG with the same factor (:class:`NystromPCG`) takes fewer steps.

    Args:
        rank: sketch size ``k``.
        maxiter, tol: iteration cap and relative tolerance.
        lr: step size; default ``1 / (1.1 lambda_max(P^{-1} H))``, from 20 power
            iterations (20 HVPs, counted in the set-up).
        sketch, seed: as for :class:`NystromPCG`.
    """

    rank: int
    maxiter: int = 10000
    tol: float = 1e-10
    lr: float | None = None
    sketch: str = "gaussian"
    seed: int = 0
    name: ClassVar[str] = "nystrom_richardson"

    def init(self, operator, *, key=None, carry=None):
        key = self._key(key)
        U, lam, sketched = _factor_or_sketch(self, operator, key)
        P = _preconditioner(U, lam, operator.shift)
        if self.lr is None:
            lam_max = solvers.largest_eigenvalue(operator.matvec, operator.n,
                                                 jax.random.fold_in(key, 1), precond=P,
                                                 iterations=_POWER_ITERATIONS)
            lr, spent = 1.0 / (1.1 * lam_max), sketched + _POWER_ITERATIONS + 1
        else:
            lr, spent = self.lr, sketched

        def solve(b, x0=None):
            x, si = solvers.richardson(operator.matvec, b, P, lr=lr, tol=self.tol,
                                       maxiter=self.maxiter, x0=x0)
            return x, _info(si.iterations + 1 + (0 if x0 is None else 1), si.residual_norm,
                            si.iterations)

        return SolverState(solve, jnp.asarray(spent, jnp.int32), carry)


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
class SpectralReuse(_Solver):
    r"""Nystrom-PCG whose basis is reused across outer steps (see module docstring).

    Args:
        rank: basis size ``k``.
        tau: staleness threshold; re-sketch when the drift ``sqrt(s^2 - s_ref^2) > tau``.
        probes: Rademacher probes ``p >= 2`` per step, or ``None`` for the exact
            ``B = Q^T A Q`` (``k`` HVPs per step, which also serve a refresh).
        maxiter, tol: of the preconditioned CG.
        sketch: sketch of a refresh, ``"gaussian"`` or ``"coordinates"``.
        seed: seed of sketches and probes (folded with the step counter).

    The carry is a :class:`ReuseState`, passed from one operator to the next::

        reuse = SpectralReuse(rank=100)
        state = reuse.empty_carry(n)      # or reuse.init(n)
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
        super().__post_init__()
        if self.probes is not None and self.probes < 2:
            raise ValueError(f"`probes` must be >= 2 (or None for exact); got {self.probes}")

    def empty_carry(self, n: int) -> ReuseState:
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

    def seeded(self, basis, eigenvalues) -> ReuseState:
        """A state holding a basis made elsewhere, e.g. a streamed Nystrom factor of ``A``
        (:mod:`aniso_gp.linalg.streaming`) after new observations: the next update
        measures it (``probes`` HVPs) instead of sketching (``rank`` HVPs)."""
        basis = jnp.asarray(basis, jnp.float64)
        eigenvalues = jnp.asarray(eigenvalues, jnp.float64)
        if basis.ndim != 2 or basis.shape[1] != self.rank:
            raise ValueError(f"`basis` must be an (n, {self.rank}) array for rank={self.rank};"
                             f" got shape {basis.shape}")
        if eigenvalues.shape != (self.rank,) or not bool(jnp.all(eigenvalues >= 0)):
            raise ValueError(f"`eigenvalues` must be {self.rank} non-negative numbers;"
                             f" got shape {eigenvalues.shape}")
        return self.empty_carry(basis.shape[0])._replace(
            basis=basis, eigenvalues=eigenvalues, initialized=jnp.asarray(True))

    def init(self, operator, *, key=None, carry=None):
        """Correct or refresh the basis ``carry`` for ``operator`` (an int ``n``: an
        empty :class:`ReuseState`, the former use of this method)."""
        if isinstance(operator, int):
            return self.empty_carry(operator)
        carry = self.empty_carry(operator.n) if carry is None else carry
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), carry.steps) if key is None else key
        new, P, spent = _reuse_update(self, carry, operator.matvec, operator.shift, key)

        def solve(b, x0=None):
            return _pcg(operator.matvec, b, P, self.tol, self.maxiter, x0)

        stats = {"refreshed": new.refreshes - carry.refreshes, "staleness": new.staleness}
        return SolverState(solve, spent, new, stats)

    def update(self, state: ReuseState, matvec, *, shift=0.0, key=None):
        """Correct or refresh the basis for ``H = A + shift I``: ``(state, precond, matvecs)``."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.steps) if key is None else key
        return _reuse_update(self, state, matvec, shift, key)

    def solve(self, state: ReuseState, matvec, b, *, shift=0.0, x0=None, key=None):
        """``u ~ H^{-1} b`` by PCG with the maintained preconditioner: ``(u, info, state)``."""
        prepared = self.init(Operator(matvec, state.basis.shape[0], shift), key=key, carry=state)
        u, info = prepared.solve(b, x0)
        return u, info._replace(matvecs=info.matvecs + prepared.setup_matvecs), prepared.carry


@dataclasses.dataclass(frozen=True)
class AmortizedEigenbasis(_Solver):
    r"""Nystrom-PCG whose basis is a variable trained alongside the outer problem.

    After *Amortized Eigendecomposition for Neural Networks* (NeurIPS 2024): the
    basis ``Q`` (n, k) is carried between outer steps and moved, each step, by
    ``steps`` gradient steps on the Brockett eigen loss
    ``f(Q) = tr(Q^T A Q D)``, ``D = diag(k, k-1, ..., 1) / k`` (maximised by the
    leading eigenvectors in order), each followed by a QR retraction:

    .. math:: Y = A Q, \quad Q \leftarrow \mathrm{qr}\big(Q + \eta\, Y D / \theta_1\big)

    (``theta_1`` the largest Ritz value, making ``eta`` scale-free; as ``eta`` grows
    the step tends to one step of subspace iteration, ``span(A Q)``). The products
    ``Y`` also give the Rayleigh-Ritz pairs of ``span(Q)`` for the current operator
    (``Q^T Y = V diag(theta) V^T``): the preconditioner is ``(Q V, theta)``. There
    is no staleness test and no refresh: the first operator is sketched
    (``k`` HVPs), every later one costs ``steps * k`` HVPs. Against
    :class:`SpectralReuse` (``p`` probes per step, ``k`` per refresh) it pays more
    per step for a basis that never goes stale.

    Args:
        rank: basis size ``k``.
        steps: eigen-loss steps per outer step (``k`` HVPs each).
        lr: step size ``eta > 0``. At 1 the basis followed a slowly rotating
            operator only to 3-5 deg after 12 steps, at 10 to 0.2-0.4 deg
            (tests/test_hypergrad.py, k = 12 of n = 80).
        maxiter, tol: of the preconditioned CG.
        seed: seed of the first sketch.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from aniso_gp.hypergrad import AmortizedEigenbasis, solve_ihvp
        >>> G = jax.random.normal(jax.random.PRNGKey(0), (300, 300)) / 20
        >>> H = G @ G.T + 0.01 * jnp.eye(300)
        >>> solver, state = AmortizedEigenbasis(rank=40, tol=1e-10), None
        >>> for step in range(3):  # an outer loop; H changes slowly in practice
        ...     u, info, state = solve_ihvp(solver, lambda v: H @ v, jnp.ones(300),
        ...                                 shift=0.01, state=state)
        >>> bool(jnp.allclose(H @ u, 1.0, atol=1e-7))
        True
    """

    rank: int
    steps: int = 1
    lr: float = 10.0
    maxiter: int = 1000
    tol: float = 1e-10
    seed: int = 0
    name: ClassVar[str] = "amortized_eigenbasis"

    def empty_carry(self, n: int) -> ReuseState:
        """An empty state for dimension ``n`` (the first operator is sketched)."""
        return SpectralReuse(self.rank).empty_carry(n)

    def init(self, operator, *, key=None, carry=None):
        carry = self.empty_carry(operator.n) if carry is None else carry
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), carry.steps) if key is None else key
        new, P, spent = _amortized_update(self, carry, operator.matvec, operator.shift, key)

        def solve(b, x0=None):
            return _pcg(operator.matvec, b, P, self.tol, self.maxiter, x0)

        return SolverState(solve, spent, new, {"staleness": new.staleness})


def _amortized_update(cfg: AmortizedEigenbasis, state: ReuseState, matvec, shift, key):
    n, k = state.basis.shape
    A = _shifted_out(matvec, shift)
    weights = jnp.arange(k, 0, -1, dtype=jnp.float64) / k  # D: orders the columns

    def train(_):
        Q, U, theta = state.basis, state.basis, state.eigenvalues
        resid = jnp.zeros((), jnp.float64)  # strongly typed: the carry must keep its type
        ok = jnp.asarray(True)
        for _ in range(cfg.steps):
            Y = _apply_columns(A, Q)
            B = matmul(Q.T, Y)
            theta, V = jnp.linalg.eigh(0.5 * (B + B.T))
            theta, V = theta[::-1], V[:, ::-1]
            U = matmul(Q, V)  # Ritz vectors of span(Q) for this operator
            total = jnp.sum(Y * Y)
            resid = jnp.sqrt(jnp.sum((Y - matmul(Q, B)) ** 2) / jnp.where(total > 0, total, 1.0))
            ok = ok & _all_finite(Y)
            top = jnp.where(theta[0] > 0, theta[0], 1.0)
            Q = jnp.linalg.qr(Q + cfg.lr * Y * (weights / top))[0]
        return Q, U, jnp.maximum(theta, 0.0), resid, ok

    def cold(_):
        U, lam, ok = _sketch(A, n, k, "gaussian", key)
        return U, U, lam, jnp.full((), jnp.inf, jnp.float64), ok

    Q, U, lam, resid, ok = jax.lax.cond(state.initialized, train, cold, None)
    U = _require(U, ok, _nonfinite_hvp_message("the amortized eigenbasis"))
    spent = jnp.where(state.initialized, cfg.steps * k, k).astype(jnp.int32)
    new_state = state._replace(
        basis=Q, eigenvalues=lam, initialized=jnp.asarray(True), steps=state.steps + 1,
        refreshes=state.refreshes + (~state.initialized).astype(jnp.int32), staleness=resid,
    )
    return new_state, _preconditioner(U, lam, shift), spent


def _on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


@dataclasses.dataclass(frozen=True)
class Auto(_Solver):
    r"""Picks a solver from the operator's size and structure, and warns when it falls short.

    :class:`Exact` up to ``AUTO_DENSE_MAX`` (per platform) where ``H`` may be
    formed; above, or matrix-free, :class:`NystromPCG` of rank ``AUTO_RANK``. A
    solve that ends with a relative residual above ``tol`` raises a
    ``RuntimeWarning`` (eagerly and under ``jit``): the picked solver fell short
    (ill-conditioned ``H``, or PCG stopped at ``maxiter``). ``solver="auto"``
    means ``Auto()``.
    """

    tol: float = AUTO_TOL
    name: ClassVar[str] = "auto"

    def pick(self, n: int, matrix_free: bool = False) -> _Solver:
        if not matrix_free and n <= AUTO_DENSE_MAX["gpu" if _on_gpu() else "cpu"]:
            return Exact()
        return NystromPCG(rank=max(1, min(AUTO_RANK, n - 1)), maxiter=AUTO_MAXITER, tol=self.tol)

    def init(self, operator, *, key=None, carry=None):
        chosen = self.pick(operator.n, operator.matrix_free)
        state = chosen.init(operator, key=key, carry=carry)

        def solve(b, x0=None):
            x, info = state.solve(b, x0)
            jax.debug.callback(_warn_above, info.residual_norm, self.tol, repr(chosen))
            return x, info

        return state._replace(solve=solve)


def _warn_above(residual, tol: float, chosen: str) -> None:
    worst = float(np.max(np.asarray(residual)))
    if not worst <= tol:
        warnings.warn(
            f"solver='auto' picked {chosen}, whose solve ended with relative residual"
            f" {worst:.2e} above the tolerance {tol:g}: H is ill-conditioned or the"
            " iterations ran out; pass a solver value (e.g. NystromPCG(rank=..., maxiter=...))"
            " or raise the noise variance",
            RuntimeWarning,
            stacklevel=2,
        )


Solver = (Exact | CG | Neumann | Nystrom | NystromPCG | NystromRichardson | SpectralReuse
          | AmortizedEigenbasis | Auto)


def as_solver(solver) -> _Solver:
    """The solver value ``solver`` means (``"auto"`` is :class:`Auto`); the one check."""
    if isinstance(solver, _Solver):
        return solver
    if isinstance(solver, str) and solver == "auto":
        return Auto()
    raise ValueError(
        "`solver` must be 'auto' or a solver value (Auto(), Exact(), CG(...), Neumann(...),"
        " Nystrom(...), NystromPCG(...), NystromRichardson(...), SpectralReuse(...),"
        " AmortizedEigenbasis(...));"
        f" got {solver!r}"
    )


def resolve_solver(solver, n: int):
    """The concrete solver that ``solver`` stands for at dimension ``n`` (resolves ``"auto"``)."""
    return as_solver(solver).pick(n)


def _check_rank(rank: int, n: int) -> None:
    if rank > n:
        raise ValueError(
            f"`rank`={rank} exceeds the dimension of the inner problem n={n}: a Nystrom"
            f" sketch has at most n columns (use rank <= {n})"
        )


# --------------------------------------------------------------------------- #
# Error reporting that works both eagerly and under jit
# --------------------------------------------------------------------------- #
class SolveError(ValueError, ArithmeticError):
    """A numerical failure of a solve or a factorisation: an iteration that diverged or
    made no progress, a Hessian or kernel matrix that is not positive definite,
    non-finite values. The message names the quantity that failed."""


def _all_finite(x) -> jnp.ndarray:
    leaves = jax.tree_util.tree_leaves(x)
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


#: Messages of the runtime checks compiled into jitted code (see :func:`plain_errors`).
_RUNTIME_MESSAGES: set[str] = set()


def _require(x, ok, message: str):
    """Raise ``SolveError(message)`` eagerly, or a runtime error under ``jit``, unless ``ok``."""
    if not check.is_traced(ok):
        if not bool(ok):
            raise SolveError(message)
        return x
    _RUNTIME_MESSAGES.add(message)
    return eqx.error_if(x, ~ok, message)


def plain_errors(fn):
    """Decorate a public entry point that runs jitted code: a runtime check that fails
    inside it (a 1-2 kB ``JaxRuntimeError`` carrying Equinox's advice) is raised again
    as :class:`SolveError` with only its own message."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        # JAX logs the failing callback's traceback before raising; the error says it all.
        log = logging.getLogger("jax._src.callback")
        level = log.level
        log.setLevel(logging.CRITICAL)
        try:
            return fn(*args, **kwargs)
        except jax.errors.JaxRuntimeError as err:
            text = str(err)
            found = [m for m in _RUNTIME_MESSAGES if m in text]
            if not found:
                raise
            raise SolveError(max(found, key=len)) from None
        finally:
            log.setLevel(level)

    return wrapped


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
    _check_rank(check.positive_int(rank, "rank"), n)
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
# The iHVP
# --------------------------------------------------------------------------- #
@plain_errors
def solve_ihvp(solver, matvec, b, *, shift=0.0, matrix=None, x0=None, key=None, state=None,
               factor=None) -> IHVPSolution:
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
        state: a :class:`ReuseState` carried from the previous call of a
            :class:`SpectralReuse`.
        factor: the Nystrom eigen-factor ``(U, lam)`` of ``A`` (``H = A + shift I``)
            that a ``sketch="kernel"`` solver reads (:func:`kernel_nystrom`);
            required for, and only for, such a solver.

    Returns:
        An :class:`IHVPSolution` ``(value, info, state)``; unpack it as
        ``u, info, state = solve_ihvp(...)``.

    Raises:
        ValueError: ``rank`` larger than ``n``; non-finite HVPs or a Hessian that is
            not positive definite (a runtime error naming it under ``jit``).
    """
    solver = as_solver(solver)
    if not callable(matvec):
        raise ValueError(f"`matvec` must be a function v -> H v; got {type(matvec).__name__}")
    b = jnp.asarray(b, dtype=jnp.float64)
    if b.ndim != 1:
        raise ValueError(f"`b` must be a 1-D array (n,); got shape {b.shape}")
    if check.violated(lambda: ~jnp.all(jnp.isfinite(b))):
        raise ValueError("`b` contains NaN or infinite values")
    if check.violated(lambda: ~(jnp.asarray(shift) >= 0.0)):
        raise ValueError(f"`shift` must be >= 0 (H = A + shift I with A positive "
                         f"semi-definite); got {shift!r}")
    n = b.shape[0]
    try:
        Hb = jax.eval_shape(matvec, jax.ShapeDtypeStruct(b.shape, b.dtype))
    except (TypeError, ValueError) as err:
        raise ValueError(f"`matvec` cannot be applied to a vector of the size of `b` "
                         f"({b.shape}): {err}") from None
    if getattr(Hb, "shape", None) != b.shape:
        raise ValueError(f"`matvec` must map (n,) = {b.shape} to (n,); it returns "
                         f"{getattr(Hb, 'shape', type(Hb).__name__)} (is `b` the right size?)")
    if factor is not None:
        if getattr(solver, "sketch", None) != "kernel":
            raise ValueError("`factor` is what a sketch='kernel' solver reads; got it with"
                             f" {solver!r}, which would ignore it")
        given = factor

        def factor(rank, key):
            U, lam = given
            if U.shape != (n, rank) or lam.shape != (rank,):
                raise ValueError(
                    f"`factor` must be (U (n, rank), lam (rank,)) = ({(n, rank)}, {(rank,)});"
                    f" got {U.shape} and {lam.shape}")
            return U, lam

    operator = Operator(
        matvec, n, jnp.asarray(shift, dtype=jnp.float64),
        matrix=None if matrix is None else (lambda: jnp.asarray(matrix, jnp.float64)),
        factor=factor,
    )
    prepared = solver.init(operator, key=key, carry=state)
    x, info = solver.compute(prepared, b, x0=x0)
    ok = _all_finite(x) & jnp.isfinite(info.residual_norm)
    x = _require(x, ok, _nonfinite_solution_message(type(solver).__name__))
    check_solution(solver, b, x, info)
    info = info._replace(matvecs=info.matvecs + prepared.setup_matvecs)
    return IHVPSolution(x, info, prepared.carry)


#: A solve that ends above ``RESIDUAL_FACTOR`` times its solver's ``tol`` is reported.
RESIDUAL_FACTOR = 1e3


def check_solution(solver, b, x, info) -> None:
    """Judge one solve ``x ~ H^{-1} b`` by what it can tell about itself.

    * relative residual ``|b - H x| / |b| >= 1`` (no better than ``x = 0``: a
      diverged Neumann series, a singular ``H``) or ``b . x < 0`` (``H`` is not
      positive definite along ``b``: the inner point is not a minimum) raise
      :class:`SolveError` (warn for a regularised surrogate, ``Nystrom``, whose
      residual may exceed 1 by design);
    * a residual above ``RESIDUAL_FACTOR * tol`` of a solver that iterates to a
      tolerance warns (``RuntimeWarning``): the answer is approximate.

    Eagerly the error is raised here; under ``jit`` (values unknown) both become
    warnings through ``jax.debug.callback``, since an error raised inside a callback
    reaches the user as an unreadable runtime error.
    """
    tol = getattr(solver, "tol", None)
    name = repr(solver)
    residual = jnp.max(jnp.asarray(info.residual_norm))
    curvature = jnp.vdot(jnp.ravel(b), jnp.ravel(x))
    if check.is_traced(residual, curvature):
        jax.debug.callback(_report_solution, residual, curvature, tol, name, False)
        return
    _report_solution(residual, curvature, tol, name, solver.residual_below_one)


def _report_solution(residual, curvature, tol, name: str, strict: bool) -> None:
    """Raise (``strict``) or warn about one solve's residual and curvature ``b . x``
    (``curvature`` None: not known)."""
    residual = float(np.max(residual))  # vmap batches
    curvature = 0.0 if curvature is None else float(np.min(curvature))
    problem = None
    if not residual < 1.0:
        problem = (f"{name} ended with relative residual |b - H u| / |b| = {residual:.3g}, no "
                   "better than u = 0: the iteration diverged (for Neumann/Richardson, lower "
                   "`lr` below 2 / the largest eigenvalue of H) or H is singular")
    elif curvature < 0.0:
        problem = (f"{name}: b . H^-1 b = {curvature:.3g} < 0, so H is not positive definite "
                   "at this point (the inner solution is not a minimum, or the inner problem "
                   "is concave); the implicit gradient does not apply there")
    if problem is not None:
        if strict:
            raise SolveError(problem)
        warnings.warn(problem, RuntimeWarning, stacklevel=2)
        return
    if tol is not None and residual > RESIDUAL_FACTOR * tol:
        warnings.warn(f"{name} ended with relative residual {residual:.3g}, more than "
                      f"{RESIDUAL_FACTOR:g} x its tol {tol:g}: the result is approximate "
                      "(raise maxiter or the rank, or add noise variance)",
                      RuntimeWarning, stacklevel=3)


def _factor_or_sketch(solver, operator: Operator, key):
    """``(U, lam, HVPs spent)``: the operator's factor, else a sketch of ``A = H - shift I``."""
    n = operator.n
    _check_rank(solver.rank, n)
    if solver.sketch == "kernel":
        if operator.factor is None:
            raise ValueError("sketch='kernel' reads kernel columns: pass"
                             " `factor=kernel_nystrom(...)` or use it through"
                             " optimize_hyperparameters")
        U, lam = operator.factor(solver.rank, key)
        return U, lam, jnp.asarray(0, jnp.int32)
    A = _shifted_out(operator.matvec, operator.shift)
    U, lam, ok = _sketch(A, n, solver.rank, solver.sketch, key)
    U = _require(U, ok, _nonfinite_hvp_message("the Nystrom sketch"))
    return U, lam, jnp.asarray(solver.rank, jnp.int32)


def _nonfinite_solution_message(name: str) -> str:
    return (
        f"{name}: the inverse Hessian-vector product is not finite: the Hessian-vector"
        " products returned NaN or inf, or the Hessian is singular or indefinite at w_star"
    )
