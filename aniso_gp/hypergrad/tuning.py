r"""GP hyperparameters tuned on a validation loss by hypergradients
(:func:`optimize_hyperparameters`, :func:`validation_hypergradient`).
"""

from __future__ import annotations

import functools
import math
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from jax.flatten_util import ravel_pytree

from aniso_gp import _validation as check
from aniso_gp import kernels
from aniso_gp.hypergrad.solvers import (
    Auto,
    Operator,
    SolveError,
    _all_finite,
    _info,
    _report_solution,
    _require,
    as_solver,
    kernel_nystrom,
    plain_errors,
)
from aniso_gp.kernels import kernel_apply
from aniso_gp.linalg.operators import matmul

#: Above this many training points :func:`optimize_hyperparameters` never forms
#: ``K`` and applies it in row blocks instead (O(block * N) memory).
MATRIX_FREE_MIN = 25_000
_BLOCK = 2048


# --------------------------------------------------------------------------- #
# GP hyperparameter optimisation on a validation loss
# --------------------------------------------------------------------------- #
_KERNELS = tuple(k for k in kernels.KERNELS if k != "full")  # gp_params has no Cholesky
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


def _initial_theta(Xt, kernel, init, y_sd, name: str = "init"):
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
    keys = {"lengthscales", "variance", "noise_variance"} | (
        {"axis_angle"} if kernel == "rotated" else set())
    if not isinstance(init, dict):
        raise ValueError(f"`{name}` must be a dict with keys {sorted(keys)}; got "
                         f"{type(init).__name__}")
    missing = {"lengthscales", "variance", "noise_variance"} - set(init)
    if missing or set(init) - keys:
        raise ValueError(f"`{name}` for the {kernel} kernel takes the keys {sorted(keys)} "
                         f"(axis_angle optional); missing {sorted(missing)}, unexpected "
                         f"{sorted(set(init) - keys)}")
    theta = {
        "log_lengthscales": jnp.log(check.lengthscales(init["lengthscales"],
                                                       f"{name}['lengthscales']")),
        "log_signal": 0.5 * jnp.log(check.positive_scalar(init["variance"],
                                                          f"{name}['variance']")
                                    / y_sd**2),
        "log_noise": 0.5 * jnp.log(check.positive_scalar(init["noise_variance"],
                                                         f"{name}['noise_variance']") / y_sd**2),
    }
    if kernel == "rotated":
        theta["axis_angle"] = check.vector3(init.get("axis_angle", np.zeros(3)),
                                            f"{name}['axis_angle']")
    return _strong(theta)


def _strong(tree):
    # Strongly typed float64 leaves: weakly typed Python scalars would make the
    # jitted step retrace once the optimiser hands back strongly typed arrays.
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype=jnp.float64), tree)


def _validation_loss(objective, mu, var, yv):
    if objective == "mse":
        return jnp.mean((mu - yv) ** 2)
    return 0.5 * jnp.mean(_LOG_2PI + jnp.log(var) + (yv - mu) ** 2 / var)


def _solve_columns(solver, state, B, X0):
    """``H^{-1} B`` column by column (B (n, m)); info summed over columns."""
    def one(b, x0):
        return solver.compute(state, b, x0=x0)

    X, info = jax.vmap(one, in_axes=(1, None if X0 is None else 1), out_axes=(1, 0))(B, X0)
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
    carry_in, w_prev, V_prev, u_prev = carry
    n = Xt.shape[0]
    params, s2 = gp_params(theta, kernel)
    if block is None:
        K = kernels.gram(Xt, Xt, params, base)

        def matvec(v):
            return matmul(K, v) + s2 * v

        def matrix():
            return K + s2 * jnp.eye(n, dtype=K.dtype)

    else:

        def matvec(v):
            return kernel_apply(Xt, Xt, params, base, v, block) + s2 * v

        matrix = None

    def kernel_factor(rank, key):
        return kernel_nystrom(Xt, params, base, rank, key)

    H = Operator(matvec, n, s2, matrix=matrix, factor=kernel_factor,
                 matrix_free=block is not None)
    k_inner, k_ihvp = jax.random.split(key)
    # One factor / preconditioner of H per step serves the weight solve, the
    # variance solves and, when the iHVP solver is the inner one, the iHVP.
    prepared = inner.init(H, key=k_inner, carry=carry_in)
    w, info_w = inner.compute(prepared, yt, x0=w_prev)
    if objective == "nlpd":
        Ktv = kernels.gram(Xt, Xv, params, base)  # (n, m): needed whole, as V is
        V, info_v = _solve_columns(inner, prepared, Ktv, V_prev)
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
    if inner == solver:
        u, info_u = inner.compute(prepared, g_w, x0=u_prev)
    else:
        own = solver.init(H, key=k_ihvp)
        u, info_u = solver.compute(own, g_w, x0=u_prev)
        info_u = info_u._replace(matvecs=info_u.matvecs + own.setup_matvecs)

    def surrogate(theta_):
        """``g(w, theta) - u^T (K(theta) + s^2(theta) I) w``, w and u fixed: gradient dg/dtheta."""
        p_, s2_ = gp_params(theta_, kernel)
        Kw = kernel_apply(Xt, Xt, p_, base, w, block)
        return val_loss(w, theta_) - jnp.dot(u, Kw) - s2_ * jnp.dot(u, w)

    grad = jax.grad(surrogate)(theta)
    metrics = {
        "inner_matvecs": info_w.matvecs + info_v.matvecs,
        "ihvp_matvecs": info_u.matvecs,
        "precond_matvecs": prepared.setup_matvecs,
        "residual": info_u.residual_norm,
        "inner_residual": jnp.maximum(info_w.residual_norm, info_v.residual_norm),
        "ihvp_iterations": info_u.iterations,
        "inner_iterations": info_w.iterations,
        **prepared.stats,
    }
    return loss, grad, (prepared.carry, w, V, u), metrics


def _inner_and_ihvp(solver):
    """``(inner, solver)``: the iHVP solver value and the one of the inner (weight)
    problem, the same value when it is unbiased (its factor then serves both)."""
    solver = as_solver(solver)
    return (solver if solver.shares_inner else Auto()), solver


@plain_errors
def validation_hypergradient(theta: dict, X_train, y_train, X_val, y_val, kernel: str = "rotated",
                             base: str = "rbf", solver="auto", objective: str = "mse", *,
                             seed: int = 0, matrix_free: bool = False):
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
    check.one_of(kernel, _KERNELS, "kernel")
    check.one_of(objective, _OBJECTIVES, "objective")
    base = check.base_name(base)
    Xt = check.coordinates(X_train, "X_train", min_points=2)
    yt = check.values(y_train, Xt.shape[0], "y_train")
    Xv = check.coordinates(X_val, "X_val")
    yv = check.values(y_val, Xv.shape[0], "y_val")
    theta = _check_theta(theta, kernel)
    inner, solver = _inner_and_ihvp(solver)
    carry = _cold_carry(inner, Xt.shape[0], Xv.shape[0], objective)
    loss, grad, _, metrics = _gp_hypergrad_step(
        _strong(theta), carry, jax.random.PRNGKey(seed), Xt, yt, Xv, yv,
        kernel=kernel, base=base, objective=objective, solver=solver, inner=inner,
        block=_BLOCK if matrix_free else None,
    )
    return loss, grad, _metrics_row(metrics)


def _check_theta(theta, kernel: str) -> dict:
    """``theta`` with exactly the entries of ``kernel`` (see :func:`gp_params`), each a
    finite float array of its shape."""
    shapes = {"log_lengthscales": (3,), "log_signal": (), "log_noise": ()}
    if kernel == "rotated":
        shapes["axis_angle"] = (3,)
    if not isinstance(theta, dict):
        raise ValueError(f"`theta` must be a dict with keys {sorted(shapes)}; got "
                         f"{type(theta).__name__}")
    missing, extra = sorted(set(shapes) - set(theta)), sorted(set(theta) - set(shapes))
    if missing or extra:
        raise ValueError(f"`theta` for the {kernel} kernel needs the keys {sorted(shapes)}; "
                         f"missing {missing}, unexpected {extra}")
    out = {}
    for k, shape in shapes.items():
        v = theta[k]
        if not check.is_traced(v):
            v = check._to_numpy(v, f"theta['{k}']")
            if v.shape != shape:
                raise ValueError(f"`theta['{k}']` must have shape {shape}; got {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"`theta['{k}']` contains NaN or infinite values")
        out[k] = jnp.asarray(v, jnp.float64)
    return out


def _cold_carry(inner, n: int, m: int, objective: str, state=None):
    """Zero warm starts (and the solver's empty carry unless one is passed on)."""
    state = inner.empty_carry(n) if state is None else state
    V0 = jnp.zeros((n, m)) if objective == "nlpd" else None
    return (state, jnp.zeros(n), V0, jnp.zeros(n))


def _metrics_row(metrics: dict) -> dict:
    row = {}
    for key, value in metrics.items():
        is_float = key in ("residual", "inner_residual", "staleness")
        row[key] = float(value) if is_float else int(value)
    row["total_matvecs"] = row["inner_matvecs"] + row["ihvp_matvecs"] + row["precond_matvecs"]
    return row


@plain_errors
def optimize_hyperparameters(X_train, y_train, X_val, y_val, kernel: str = "rotated",
                             base: str = "rbf", solver="auto", objective: str = "nlpd",
                             steps: int = 100, learning_rate: float = 0.05, seed: int = 0, *,
                             init: dict | None = None, warm_start: bool = True,
                             matrix_free: bool | None = None) -> tuple[dict, pd.DataFrame]:
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
        preconditioner, iHVP residual, reuse refreshes/staleness, wall time);
        ``history.attrs["theta"]`` / ``["grad"]``: per step, ``theta`` and its
        hypergradient in the standardised units of the optimisation (data centred,
        ``y`` divided by its sd).
    """
    check.one_of(kernel, _KERNELS, "kernel")
    check.one_of(objective, _OBJECTIVES, "objective")
    base = check.base_name(base)
    steps = check.positive_int(steps, "steps")
    learning_rate = check.positive_scalar(learning_rate, "learning_rate")
    Xt, yt, Xv, yv, y_mean, y_sd = _standardise(X_train, y_train, X_val, y_val)
    n = Xt.shape[0]
    matrix_free = n > MATRIX_FREE_MIN if matrix_free is None else bool(matrix_free)
    block = _BLOCK if matrix_free else None
    inner, solver = _inner_and_ihvp(solver)
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
    rows, trajectory = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        if not warm_start:
            carry = _cold_carry(inner, n, m, objective, state=carry[0])
        loss, grad, carry, metrics = step_fn(theta, carry, jax.random.fold_in(base_key, step))
        grad = _require(grad, _all_finite(grad), f"non-finite hypergradient at step {step}")
        trajectory.append((theta, grad))
        updates, opt_state = opt.update(grad, opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        jax.block_until_ready(theta)
        row = {"step": step, "val_loss": to_user(float(loss)), **_metrics_row(metrics)}
        row["grad_norm"] = float(ravel_pytree(grad)[0] @ ravel_pytree(grad)[0]) ** 0.5
        row["time_s"] = time.perf_counter() - t0
        rows.append(row)
        for key, used in (("inner_residual", inner), ("residual", solver)):
            if key in row and not row[key] < 1.0:  # diverged: stop before using it
                _report_solution(row[key], None, None, f"{used!r} at step {step}",
                                 used.residual_below_one)
    for key, used in (("inner_residual", inner), ("residual", solver)):
        worst = max((r[key] for r in rows if key in r), default=0.0)
        if worst < 1.0:  # (>= 1 was reported at its step)
            _report_solution(worst, None, getattr(used, "tol", None),
                             f"{used!r} (worst of {steps} steps)", True)
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
    history.attrs["solver"] = repr(solver.pick(n, matrix_free))
    history.attrs["inner_solver"] = repr(inner.pick(n, matrix_free))
    history.attrs["objective"] = objective
    # theta before each step and the hypergradient used there, in the optimiser's own
    # (centred, standardised) units: what validation_hypergradient takes to check it.
    history.attrs["theta"] = [jax.tree_util.tree_map(np.asarray, t) for t, _ in trajectory]
    history.attrs["grad"] = [jax.tree_util.tree_map(np.asarray, g) for _, g in trajectory]
    return out, history


# --------------------------------------------------------------------------- #
# Influence of training observations on tuned hyperparameters
# --------------------------------------------------------------------------- #
def _weight_gradient(theta, key, Xt, yt, Xv, yv, *, kernel, base, objective, solver, inner):
    r"""``(loss, dL/dtheta, dL/dw)`` at observation weights ``w = 1``.

    A weight ``w_i`` multiplies observation ``i``'s Gaussian log-likelihood, i.e.
    divides its noise variance: ``H(w) = K + s^2 diag(1/w)``, so
    ``dH/dw_i = -s^2 e_i e_i^T``. With ``alpha = H^{-1} y``, ``u = H^{-1} dL/dalpha``
    (the step's iHVP) and ``V = H^{-1} K_tv``:

    .. math:: \frac{\partial L}{\partial w_i} = s^2 \alpha_i u_i
              - s^2 \sum_j \frac{\partial L}{\partial \sigma_j^2} V_{ij}^2

    (the second term for ``"nlpd"`` only: ``d sigma_j^2 / d w_i = -s^2 V_ij^2``).
    Every solve is the step's, by the solver values given.
    """
    n, m = Xt.shape[0], Xv.shape[0]
    carry = _cold_carry(inner, n, m, objective)
    loss, grad, (_, alpha, V, u), _ = _gp_hypergrad_step(
        theta, carry, key, Xt, yt, Xv, yv, kernel=kernel, base=base, objective=objective,
        solver=solver, inner=inner, block=None)
    params, s2 = gp_params(theta, kernel)
    dw = s2 * alpha * u
    if objective == "nlpd":
        Kvt = kernels.gram(Xv, Xt, params, base)
        mu = matmul(Kvt, alpha)
        var = params["variance"] + s2 - jnp.sum(Kvt.T * V, axis=0)
        dvar = 0.5 * (1.0 / var - (yv - mu) ** 2 / var**2) / m
        dw = dw - s2 * matmul(V**2, dvar)
    return loss, grad, dw


@plain_errors
def hyperparameter_influence(X_train, y_train, X_val, y_val, params: dict,
                             kernel: str = "rotated", base: str = "rbf", solver="auto",
                             objective: str = "nlpd", *, newton_steps: int = 10,
                             eps: float = 1e-4, seed: int = 0):
    r"""How each training observation moves hyperparameters tuned on a validation loss.

    The tuned ``theta*`` minimises the validation loss ``L(theta, w)``, where the
    weight ``w_i`` of training observation ``i`` scales its log-likelihood (its
    noise variance becomes ``s^2 / w_i``). At a minimum ``grad_theta L = 0``, and
    the implicit function theorem gives, for all observations at once,

    .. math:: \frac{d\theta^*}{dw} = -\big(\nabla^2_{\theta\theta} L\big)^{-1}
              \nabla_\theta \frac{\partial L}{\partial w} \quad (d \times N),

    where ``dL/dw`` needs, besides the solve ``alpha = H^{-1} y`` and the
    hypergradient's iHVP ``u``, nothing more (see :func:`_weight_gradient`): the
    solves are done by ``solver`` exactly as in :func:`optimize_hyperparameters`.
    The ``d x d`` Hessian and the ``N x d`` mixed Jacobian are central differences
    of those solver-value computations in ``theta`` (``2 d`` evaluations: 16 for
    the rotated kernel), so an iterative solver needs a tolerance well below
    ``eps^2`` (default ``1e-8``; ``"auto"`` uses ``1e-10``). Leaving observation
    ``i`` out is ``w_i = 1 -> 0``: to first order ``theta*`` moves by
    ``-d theta*/d w_i``.

    ``params`` (what :func:`optimize_hyperparameters` returned) is first polished by
    up to ``newton_steps`` Newton steps on ``L`` with the same Hessian (trust radius
    ``NEWTON_RADIUS``, backtracking, until the gradient falls by ``NEWTON_GTOL``),
    since the theorem holds at a stationary point, not after a fixed number of
    Adam steps. Directions
    in which ``L`` is flat (with ``"mse"``: signal and noise variance scaled
    together) are left out of the inverse (:func:`_flat_inverse`).

    Args:
        X_train, y_train, X_val, y_val: the data the hyperparameters were tuned on.
        params: tuned values in user units (``lengthscales``, ``axis_angle``
            (rotated), ``variance``, ``noise_variance``).
        kernel, base, solver, objective: as in :func:`optimize_hyperparameters`.
        newton_steps: most Newton steps before differentiating (0: ``params`` as given).
        eps: central-difference step in the unconstrained ``theta``.
        seed: seed of randomized sketches.

    Returns:
        ``(table, info)``: ``table`` a DataFrame with one row per training
        observation and one column per entry of ``theta`` (``log_lengthscales[0..2]``,
        ``axis_angle[0..2]``, ``log_signal``, ``log_noise``; log-scales of the
        user's units), holding ``d theta*/d w_i``; ``info`` a dict with ``theta``
        (the polished optimum, user units via ``params``), ``grad_norm`` (of ``L``
        there, relative to the first), the Hessian's eigenvalues, the number of
        ``flat_directions`` left out and ``evaluations``.

    Example:
        >>> from aniso_gp import datasets
        >>> from aniso_gp.hypergrad import hyperparameter_influence, optimize_hyperparameters
        >>> f = datasets.synthetic_field(60, [0.5, 0.3, 0.2], [0.3, -0.2, 0.5], noise_sd=0.1)
        >>> tr, va = f.split(0.3, seed=0)
        >>> p, _ = optimize_hyperparameters(tr.X, tr.y, va.X, va.y, steps=30)
        >>> table, info = hyperparameter_influence(tr.X, tr.y, va.X, va.y, p)
        >>> table.shape
        (42, 8)
    """
    check.one_of(kernel, _KERNELS, "kernel")
    check.one_of(objective, _OBJECTIVES, "objective")
    base = check.base_name(base)
    newton_steps = check.integer(newton_steps, "newton_steps", minimum=0)
    eps = check.positive_scalar(eps, "eps")
    Xt, yt, Xv, yv, y_mean, y_sd = _standardise(X_train, y_train, X_val, y_val)
    if isinstance(params, dict):  # what optimize_hyperparameters returns also has these
        params = {k: v for k, v in params.items() if k not in ("mean", "val_loss")}
    theta = _initial_theta(Xt, kernel, params, y_sd, name="params")
    inner, solver = _inner_and_ihvp(solver)
    key = jax.random.PRNGKey(check.seed(seed))
    x, unravel = ravel_pytree(theta)
    d = x.shape[0]

    calls = []

    def evaluate(v):
        """``(loss, dL/dtheta, dL/dw)`` at the flat ``theta`` ``v``, as NumPy."""
        calls.append(1)
        loss, g, dw = _weight_gradient(unravel(v), key, Xt, yt, Xv, yv, kernel=kernel,
                                       base=base, objective=objective, solver=solver,
                                       inner=inner)
        return float(loss), np.asarray(ravel_pytree(g)[0]), np.asarray(dw)

    def derivatives(v):
        cols = [[evaluate(v + s * eps * np.eye(d)[j]) for s in (1.0, -1.0)] for j in range(d)]
        hess = np.stack([(up[1] - down[1]) / (2 * eps) for up, down in cols], axis=1)
        mixed = np.stack([(up[2] - down[2]) / (2 * eps) for up, down in cols], axis=1)
        return 0.5 * (hess + hess.T), mixed

    x = np.asarray(x)
    loss, g0, _ = evaluate(x)
    g = g0
    for _ in range(newton_steps):
        if np.linalg.norm(g) <= NEWTON_GTOL * np.linalg.norm(g0):
            break
        hess, _ = derivatives(x)
        step = -_flat_inverse(hess, saddle_free=True)[0] @ g
        # A trust radius and backtracking: along a weakly curved direction a full
        # Newton step can leave the basin (to where the curvature turns negative).
        step *= min(1.0, NEWTON_RADIUS / max(np.linalg.norm(step), 1e-300))
        for _ in range(20):
            trial_loss, trial_g, _ = evaluate(x + step)
            if trial_loss <= loss:
                x, loss, g = x + step, trial_loss, trial_g
                break
            step = 0.5 * step
        else:  # no step lowers the loss: x is as stationary as this can make it
            break
    if newton_steps and np.linalg.norm(g) > 1e-4 * np.linalg.norm(g0):
        warnings.warn(
            f"hyperparameter_influence: after {newton_steps} Newton steps the validation loss's"
            f" gradient is still {np.linalg.norm(g) / np.linalg.norm(g0):.1e} of its initial"
            " norm; the implicit derivative holds at a minimum (raise newton_steps)",
            RuntimeWarning, stacklevel=2)
    hess, mixed = derivatives(x)
    inverse, eig, flat = _flat_inverse(hess)
    dtheta = -inverse @ mixed.T  # (d, N)
    names = [f"{path[0].key}[{i}]" if np.ndim(leaf) else path[0].key
             for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]
             for i in range(max(1, np.size(leaf)))]  # ravel_pytree's order
    table = pd.DataFrame(dtheta.T, columns=names)
    table.index.name = "observation"
    polished, s2 = gp_params(unravel(jnp.asarray(x)), kernel)
    out = {
        "lengthscales": np.asarray(polished["lengthscales"]),
        "variance": float(polished["variance"]) * float(y_sd) ** 2,
        "noise_variance": float(s2) * float(y_sd) ** 2,
        "mean": float(y_mean),
    }
    if kernel == "rotated":
        out["axis_angle"] = np.asarray(polished["axis_angle"])
    info = {
        "theta": out,
        "grad_norm": float(np.linalg.norm(g) / max(np.linalg.norm(g0), 1e-300)),
        "hessian_eigenvalues": eig,
        "flat_directions": flat,
        "evaluations": len(calls),
    }
    return table, info


#: Hessian eigenvalues below this fraction of the largest are flat directions.
FLAT = 1e-6
#: Largest Newton step (Euclidean, in theta: log-scales and radians) when polishing.
NEWTON_RADIUS = 0.1
#: Polishing stops when the gradient is below this fraction of its initial norm.
NEWTON_GTOL = 1e-8


def _flat_inverse(hess, saddle_free: bool = False):
    """``(pinv, eigenvalues, flat)``: the inverse on the directions the loss curves in.

    A validation MSE does not change when signal and noise variance scale together
    (the predictive mean depends on their ratio only): its Hessian has an exact zero
    eigenvalue. Such directions (``|lambda| <= FLAT lambda_max``) are left out, so
    ``theta*`` moves only where it is determined; a clearly negative eigenvalue means
    the point is not a minimum. A Newton step on the way there uses ``|lambda|``
    instead (saddle-free Newton: downhill along negative curvature too).
    """
    eig, Q = np.linalg.eigh(hess)
    tol = FLAT * np.max(np.abs(eig))
    if saddle_free:
        keep = np.abs(eig) > tol
        return (Q[:, keep] / np.abs(eig[keep])) @ Q[:, keep].T, eig, int(np.sum(~keep))
    if np.any(eig < -tol):
        raise SolveError(
            "the validation loss's Hessian in theta is not positive semi-definite at the tuned"
            f" hyperparameters (smallest eigenvalue {eig[0]:.3g}, largest {eig[-1]:.3g}): they"
            " are not at a minimum; tune longer (more steps) or raise newton_steps")
    keep = eig > tol
    return (Q[:, keep] / eig[keep]) @ Q[:, keep].T, eig, int(np.sum(~keep))

