r"""Which observations, or groups of them, drive the inferred orientation: Bayesian
case deletion.

For each observation ``i`` of a point fit, the posterior without it is reached
by importance sampling over the existing NUTS draws: ``p(theta | y_-i)`` is
proportional to ``p(theta | y) / p(y_i | y_-i, theta)``, whose ratio is the
closed-form GP leave-one-out density the fit already stores for LOO. The
weights are Pareto-smoothed (PSIS, the ArviZ estimate of :func:`loo`), and the
Pareto shape ``k`` of each says whether the estimate can be trusted (above 0.7
it cannot: refit without that observation).

Summaries under the deletion weights ``w_si`` (sum_s w_si = 1):

* the short axis: the principal eigenvector of ``sum_s w_si v_s v_s^T`` (the
  weighted orientation tensor of the draws' short axes ``v_s``), reported as its
  axial angle to the full posterior's mean short axis and its trend/plunge;
* the sorted length-scales: ``sum_s w_si l_s``, and their change.

A *group* ``G`` (a drill hole, a block of voxels) is left out the same way with
the ratio ``1 / p(y_G | y_-G, theta_s)``, the closed-form multivariate GP
leave-group-out density: with ``Q = K_y^{-1}`` and ``alpha = Q y``,

.. math::
    \log p(y_G | y_{-G}, \theta) = -\tfrac12 \alpha_G^T Q_{GG}^{-1} \alpha_G
        + \tfrac12 \log |Q_{GG}| - \tfrac{|G|}{2} \log 2\pi,

computed per draw from one Cholesky of ``K_y`` (O(N^3) per draw: fits of up to a
few thousand points).

Shapes: S draws, N observations, G groups; all work is one (N or G, S) weight
matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from aniso_gp import _validation as check
from aniso_gp import diagnostics, orientation
from aniso_gp.models import dense_covariance

#: Pareto shape above which an importance-sampling estimate is unreliable.
K_MAX = 0.7


def case_deletion(fit) -> pd.DataFrame:
    """Change of the orientation summaries when each observation is left out.

    Args:
        fit: a point :class:`~aniso_gp.inference.Fit` (a whole-volume fit has no
            per-voxel leave-one-out densities).

    Returns:
        A DataFrame indexed by observation, sorted by the short axis's change
        (largest first), with the coordinates ``x, y, z``, the value ``y_obs``,
        ``short_axis_change_deg`` (axial angle between the short axis without
        the observation and with it), ``trend_deg``/``plunge_deg`` of the short
        axis without it, ``l1_change``..``l3_change`` (sorted length-scales,
        longest first, user units), ``pareto_k`` and ``unreliable``
        (``pareto_k > 0.7``).

    Example::

        from aniso_gp import influence

        fit = aniso_gp.fit(X, y)
        table = influence.case_deletion(fit)
        table.head(5)   # the observations that move the short axis most
    """
    _check_point_fit(fit)
    log_w, k = diagnostics.psis_log_weights(fit.idata)
    if not np.all(np.isfinite(log_w)):
        raise ValueError("the fit's leave-one-out densities are not finite for every draw: "
                         "case deletion cannot reweight them")
    X = fit.X
    table = pd.DataFrame({"x": X[:, 0], "y": X[:, 1], "z": X[:, 2], "y_obs": fit.y,
                          **_summaries(fit, np.exp(log_w), k)})
    table.index.name = "observation"
    return table.sort_values("short_axis_change_deg", ascending=False)


def group_deletion(fit, groups, num_draws: int | None = None) -> pd.DataFrame:
    """Change of the orientation summaries when each group of observations is left out.

    Args:
        fit: a point :class:`~aniso_gp.inference.Fit` with the exact likelihood.
        groups: (N,) labels, one per observation of the fit (e.g. the drill hole of
            each assay); any hashable values.
        num_draws: use this many evenly thinned posterior draws (default: all).

    Returns:
        A DataFrame indexed by group label, sorted by the short axis's change, with
        ``n_obs``, the group's centroid ``x, y, z``, and the columns of
        :func:`case_deletion` (``short_axis_change_deg``, ``trend_deg``,
        ``plunge_deg``, ``l1_change``..``l3_change``, ``pareto_k``, ``unreliable``).

    Example::

        holes = data["drillhole"].to_numpy()          # one label per fitted point
        table = influence.group_deletion(fit, holes)
        table.head(5)   # the drill holes that set the dip
    """
    _check_exact_fit(fit)
    labels = np.asarray(groups)
    if labels.shape != (fit.X.shape[0],):
        raise ValueError(f"`groups` must hold one label per observation of the fit "
                         f"({fit.X.shape[0]}); got shape {labels.shape}")
    codes, names = pd.factorize(labels)
    if (codes < 0).any():
        raise ValueError("`groups` has missing labels (NaN/None)")
    if len(names) < 2:
        raise ValueError("`groups` must name at least two groups")
    idx = _draw_index(fit, num_draws)
    members = [np.flatnonzero(codes == g) for g in range(len(names))]
    logdens = group_loo_log_density(fit, members, idx)  # (G, S')
    # ArviZ's LOO efficiency, so that groups of one reproduce case_deletion exactly.
    S = fit.lengthscale_draws().shape[0]
    r_eff = min(1.0, diagnostics.relative_ess(fit.idata) * S / len(idx))
    log_w, k = diagnostics.psis(-logdens, r_eff)
    sizes = np.array([len(m) for m in members])
    centre = np.stack([fit.X[m].mean(axis=0) for m in members])
    table = pd.DataFrame({"n_obs": sizes, "x": centre[:, 0], "y": centre[:, 1],
                          "z": centre[:, 2], **_summaries(fit, np.exp(log_w), k, idx)},
                         index=pd.Index(names, name="group"))
    return table.sort_values("short_axis_change_deg", ascending=False)


def group_loo_log_density(fit, members: list, draws: np.ndarray) -> np.ndarray:
    """``log p(y_G | y_-G, theta_s)`` (G, S') for index arrays ``members`` and the
    posterior draws ``draws``, in standardised units (a constant per group away from
    the user's; the importance ratios do not see it)."""
    G, m = len(members), max(len(g) for g in members)
    index = np.zeros((G, m), dtype=int)
    valid = np.zeros((G, m), dtype=bool)
    for g, rows in enumerate(members):
        index[g, :len(rows)], valid[g, :len(rows)] = rows, True
    index, valid = jnp.asarray(index), jnp.asarray(valid)

    def per_draw(Q, alpha):
        def group(ix, ok):
            both = ok[:, None] & ok[None, :]
            Qg = jnp.where(both, Q[ix][:, ix], jnp.eye(m))  # padding: identity, alpha 0
            ag = jnp.where(ok, alpha[ix], 0.0)
            C = jnp.linalg.cholesky(Qg)
            u = jax.scipy.linalg.solve_triangular(C, ag, lower=True)
            logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(C)))
            return -0.5 * u @ u + 0.5 * logdet - 0.5 * jnp.sum(ok) * jnp.log(2 * jnp.pi)

        return jax.vmap(group)(index, valid)

    return np.asarray(_map_inverse(fit, draws, per_draw)).T


def _check_point_fit(fit) -> None:
    if getattr(fit, "is_volume", None) is not False:
        raise ValueError("`fit` must be a point Fit (aniso_gp.fit on X, y): case deletion "
                         "reweights its leave-one-out densities, which a whole-volume fit "
                         "does not have")


def _check_exact_fit(fit) -> None:
    _check_point_fit(fit)
    if fit.settings.get("likelihood") != "exact":
        raise ValueError("`fit` must use the exact likelihood: the leave-out densities of a "
                         f"{fit.settings.get('likelihood')!r} fit are not the GP's")


def _draw_index(fit, num_draws: int | None) -> np.ndarray:
    """Indices of ``num_draws`` evenly thinned posterior draws (all when None), the same
    thinning as :meth:`Fit.standardised_draws`."""
    S = fit.lengthscale_draws().shape[0]
    if num_draws is None:
        return np.arange(S)
    n = min(check.positive_int(num_draws, "num_draws"), S)
    return np.unique(np.linspace(0, S - 1, n).round().astype(int))


def _draw_params(fit, draws: np.ndarray) -> list[np.ndarray]:
    """``[A_std, signal, noise, mean]`` of the posterior draws ``draws``, standardised."""
    d = fit.standardised_draws(fit.lengthscale_draws().shape[0])
    return [np.asarray(d[k])[draws] for k in ("A_std", "signal", "noise", "mean")]


def _map_inverse(fit, draws: np.ndarray, per_draw):
    """``per_draw(Q, alpha)`` for each posterior draw in ``draws``, with ``Q = K_y^{-1}``
    (one Cholesky) and ``alpha = Q (y - m)``; outputs stacked over the draws."""
    Xs, ys = fit.std.x(fit.X), fit.std.y(fit.y)
    base = fit.settings["base"]

    def one(args):
        A, s, e, mu = args
        L = jnp.linalg.cholesky(dense_covariance(Xs @ A, s, e, base))
        Q = jax.scipy.linalg.cho_solve((L, True), jnp.eye(L.shape[0]))
        return per_draw(Q, Q @ (ys - mu))

    return jax.lax.map(jax.jit(one), tuple(jnp.asarray(p) for p in _draw_params(fit, draws)))


def _summaries(fit, w: np.ndarray, k: np.ndarray, draws=None) -> dict:
    """Columns of the deletion tables from normalised weights ``w`` (rows, S') over the
    posterior draws ``draws`` (default all S)."""
    short = fit.axes_draws()[:, :, 2]  # (S, 3): the shortest axis of each draw
    ls = fit.lengthscale_draws()  # (S, 3)
    full = orientation.mean_axis(short)
    if draws is not None:
        short, ls = short[draws], ls[draws]
    T = np.einsum("ns,si,sj->nij", w, short, short)  # weighted orientation tensors
    without = np.linalg.eigh(T)[1][:, :, -1]  # (rows, 3)
    trend, plunge = orientation.trend_plunge(without)
    dl = w @ ls - ls.mean(axis=0)
    return {"short_axis_change_deg": orientation.axial_angles(without, full),
            "trend_deg": trend, "plunge_deg": plunge, "l1_change": dl[:, 0],
            "l2_change": dl[:, 1], "l3_change": dl[:, 2], "pareto_k": k,
            "unreliable": k > K_MAX}


def vertical_groups(X) -> np.ndarray:
    """Labels of vertical drill holes: observations that share their (x, y) position
    (exactly, as assays down one hole do). ``X`` is (N, 3)."""
    X = np.asarray(check.coordinates(X, "X"))
    _, codes = np.unique(X[:, :2], axis=0, return_inverse=True)
    return codes.ravel()


def block_groups(X, size: float) -> np.ndarray:
    """Labels of cubic blocks of side ``size`` (the data's units) on a lattice anchored at
    the data's lower corner: ``'i_j_k'`` for the block holding each row of ``X``."""
    X = np.asarray(check.coordinates(X, "X"))
    size = check.positive_scalar(size, "size")
    ijk = np.floor((X - X.min(axis=0)) / size).astype(int)
    return np.array(["_".join(map(str, r)) for r in ijk])


def first_order(fit, num_draws: int | None = None, solver=None, probes: int = 64,
                seed: int = 0) -> pd.DataFrame:
    r"""First-order (infinitesimal) influence of each observation, with weights.

    Give observation ``i`` a weight ``w_i`` on its leave-one-out factor,
    ``log p_w(y | theta) = log p(y_-i | theta) + w_i log p(y_i | y_-i, theta)``, so
    ``w_i = 0`` deletes it. Then ``d log p / d w_i = l_i(theta)``, the GP's
    leave-one-out log density

    .. math::
        l_i = \tfrac12 \log [K_y^{-1}]_{ii} - \tfrac12 \alpha_i^2 / [K_y^{-1}]_{ii}
              - \tfrac12 \log 2\pi, \qquad \alpha = K_y^{-1} (y - m),

    and the derivative of a posterior mean is a posterior covariance,
    ``d E[s] / d w_i = Cov(s, l_i)``: deleting ``i`` changes ``E[s]`` by about
    ``-Cov(s, l_i)``, the linearisation of :func:`case_deletion`. For the short axis
    the orientation tensor ``T = E[v v^T]`` changes by ``-Cov(v v^T, l_i)`` and its
    top eigenvector turns by ``|sum_{j<3} u_j (u_j^T dT u_3) / (lambda_3 - lambda_j)|``.

    Args:
        fit: a point :class:`~aniso_gp.inference.Fit` with the exact likelihood.
        num_draws: evenly thinned posterior draws to use (default: all).
        solver: ``None``: ``alpha`` and ``diag(K_y^{-1})`` from one Cholesky per draw
            (O(N^3)). A solver value (e.g. ``hypergrad.NystromRichardson(rank=200)``,
            the ASTRA-style iteration, or ``NystromPCG``): ``alpha`` by one iterative
            solve and the diagonal by Hutchinson's estimator with ``probes``
            Rademacher vectors (``diag(Q) ~ mean_k z_k * Q z_k``, standard error
            ``sqrt(sum_{j != i} Q_ij^2 / probes)``), one solve each: no factorisation,
            O(N^2) per matvec.
        probes, seed: the diagonal estimator's probe count and seed (iterative path).

    Returns:
        A DataFrame indexed by observation, sorted by ``short_axis_change_deg``
        (largest first): ``x, y, z``, ``short_axis_change_deg`` and
        ``l1_change``..``l3_change`` (first-order changes on deletion); for the
        iterative path ``attrs["solves"]`` holds the total ``matvecs`` and the largest
        relative ``residual`` of the solves.

    Example::

        from aniso_gp.hypergrad import NystromRichardson

        table = influence.first_order(fit)                     # dense, one Cholesky per draw
        table = influence.first_order(fit, num_draws=100,      # large N: iterative solves
                                      solver=NystromRichardson(rank=200, tol=1e-8))
    """
    _check_exact_fit(fit)
    idx = _draw_index(fit, num_draws)
    info = {}
    if solver is None:
        alpha, diag = (np.asarray(v) for v in _map_inverse(
            fit, idx, lambda Q, alpha: (alpha, jnp.diagonal(Q))))
    else:
        from aniso_gp.hypergrad import as_solver

        alpha, diag, info = _iterative_alpha_diag(
            fit.std.x(fit.X), fit.std.y(fit.y), fit.settings["base"], _draw_params(fit, idx),
            as_solver(solver), check.positive_int(probes, "probes"), check.seed(seed))
    loo = 0.5 * np.log(diag) - 0.5 * alpha**2 / diag  # (S', N), constants dropped
    loo = loo - loo.mean(axis=0)
    n = loo.shape[0]
    short = fit.axes_draws()[idx][:, :, 2]
    ls = fit.lengthscale_draws()[idx]
    outer = np.einsum("si,sj->sij", short, short)
    lam, U = np.linalg.eigh(outer.mean(axis=0))
    dT = -np.einsum("sn,sij->nij", loo, outer - outer.mean(axis=0)) / n  # (N, 3, 3)
    coupling = np.einsum("ia,nij,j->na", U[:, :2], dT, U[:, 2]) / (lam[2] - lam[:2])
    turn = np.degrees(np.linalg.norm(coupling, axis=1))
    dl = -loo.T @ (ls - ls.mean(axis=0)) / n
    X = fit.X
    table = pd.DataFrame({"x": X[:, 0], "y": X[:, 1], "z": X[:, 2],
                          "short_axis_change_deg": turn, "l1_change": dl[:, 0],
                          "l2_change": dl[:, 1], "l3_change": dl[:, 2]})
    table.index.name = "observation"
    table = table.sort_values("short_axis_change_deg", ascending=False)
    table.attrs["solves"] = info
    return table


def _iterative_alpha_diag(Xs, ys, base, pick, solver, probes: int, seed: int):
    """``alpha`` and Hutchinson's ``diag(K_y^{-1})`` per draw by iterative solves (one
    compiled solve, batched over the probes)."""
    from aniso_gp import kernels
    from aniso_gp.hypergrad import solve_ihvp

    N = Xs.shape[0]
    Z = jnp.asarray(np.random.default_rng(seed).choice([-1.0, 1.0], size=(probes, N)))

    def solve(K, e2, b):
        out = solve_ihvp(solver, lambda v: K @ v + e2 * v, b, shift=e2)
        return out.value, out.info.matvecs, out.info.residual_norm

    @jax.jit
    def per_draw(A, s, e, mu):
        Zt = Xs @ A
        K = kernels.gram_transformed(Zt, Zt, s**2, base)  # never factorised
        a, mv, r = solve(K, e**2, ys - mu)
        qz, mvz, rz = jax.vmap(solve, in_axes=(None, None, 0))(K, e**2, Z)
        diag = jnp.mean(Z * qz, axis=0)
        return a, diag, mv + jnp.sum(mvz), jnp.maximum(r, jnp.max(rz))

    alphas, diags, matvecs, worst = [], [], 0, 0.0
    for A, s, e, mu in zip(*pick, strict=True):
        a, dg, mv, r = per_draw(*(jnp.asarray(v) for v in (A, s, e, mu)))
        alphas.append(np.asarray(a))
        diags.append(np.asarray(dg))
        matvecs += int(mv)
        worst = max(worst, float(r))
    info = {"matvecs": matvecs, "residual": worst}
    return np.array(alphas), np.maximum(np.array(diags), 1e-12), info
