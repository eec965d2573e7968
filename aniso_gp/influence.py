r"""Which observations drive the inferred orientation: Bayesian case deletion.

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

Shapes: S draws, N observations; all work is one (N, S) weight matrix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aniso_gp import diagnostics, orientation

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
    if getattr(fit, "is_volume", None) is not False:
        raise ValueError("`fit` must be a point Fit (aniso_gp.fit on X, y): case deletion "
                         "reweights its leave-one-out densities, which a whole-volume fit "
                         "does not have")
    log_w, k = diagnostics.psis_log_weights(fit.idata)
    if not np.all(np.isfinite(log_w)):
        raise ValueError("the fit's leave-one-out densities are not finite for every draw: "
                         "case deletion cannot reweight them")
    w = np.exp(log_w)  # (N, S)
    short = fit.axes_draws()[:, :, 2]  # (S, 3): the shortest axis of each draw
    ls = fit.lengthscale_draws()  # (S, 3)
    T = np.einsum("ns,si,sj->nij", w, short, short)  # weighted orientation tensors
    _, vecs = np.linalg.eigh(T)
    without = vecs[:, :, -1]  # (N, 3)
    full = orientation.mean_axis(short)
    change = orientation.axial_angles(without, full)
    trend, plunge = orientation.trend_plunge(without)
    dl = w @ ls - ls.mean(axis=0)
    X = fit.X
    table = pd.DataFrame({
        "x": X[:, 0], "y": X[:, 1], "z": X[:, 2], "y_obs": fit.y,
        "short_axis_change_deg": change, "trend_deg": trend, "plunge_deg": plunge,
        "l1_change": dl[:, 0], "l2_change": dl[:, 1], "l3_change": dl[:, 2],
        "pareto_k": k, "unreliable": k > K_MAX,
    })
    table.index.name = "observation"
    return table.sort_values("short_axis_change_deg", ascending=False)
