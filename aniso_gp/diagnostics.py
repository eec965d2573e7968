"""The one module that talks to ArviZ: InferenceData, R-hat/ESS on invariants, LOO.

Both ArviZ lines work: 1.x (arviz-base / arviz-stats, Python >= 3.12; the
posterior is an ``xarray.DataTree``) and 0.x (Python 3.11; ``az.InferenceData``).
The few calls whose form differs are adapted here and nowhere else; the rest of
the package reads groups by name (``idata.posterior["x"]``), which both support,
and fits saved by either line load in the other (the same NetCDF groups).
R-hat and ESS are only meaningful on quantities that do not depend on the
labelling of the principal axes (docs/design.md section 3): the sorted
length-scales, the metric entries, signal, noise and mean.
"""

from __future__ import annotations

import warnings

import numpy as np
import numpyro  # noqa: F401  (before ArviZ: see the note in aniso_gp/__init__.py)
import pandas as pd

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.x refactor on import (0.x serves Python 3.11).
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

#: The ArviZ line in use: 1 (DataTree, arviz-stats) or 0 (InferenceData).
ARVIZ_LINE = 1 if int(az.__version__.split(".")[0]) >= 1 else 0
#: Tail ESS: the smaller of the ESS of the 5% and 95% quantiles (both lines).
_TAIL = (0.05, 0.95)

RHAT_MAX = 1.01
ESS_MIN = 400
DIVERGENCE_MAX = 0.01
BFMI_MIN = 0.3


def max_rhat(chains) -> float:
    """Largest rank-normalised split R-hat over the last axis of ``chains`` (C, D, d)."""
    x = np.asarray(chains, dtype=np.float64)
    return max(float(az.rhat(x[..., i])) for i in range(x.shape[-1]))


def inference_data(posterior, sample_stats, log_likelihood, observed, constant, coords, dims,
                   attrs=None):
    """ArviZ data (a DataTree on 1.x, an InferenceData on 0.x) from dicts of
    (chain, draw, ...) arrays."""
    groups = {"posterior": posterior, "sample_stats": sample_stats,
              "log_likelihood": log_likelihood, "observed_data": observed,
              "constant_data": constant}
    if ARVIZ_LINE:  # attributes by group there; "/" is the root
        return az.from_dict(groups, coords=coords, dims=dims, attrs={"/": attrs or {}})
    return az.from_dict(**groups, coords=coords, dims=dims, attrs=attrs or {})


def invariant_summary(draws: dict[str, np.ndarray]) -> pd.DataFrame:
    """Mean, sd, 5/50/95% quantiles, R-hat, bulk and tail ESS of scalar invariants.

    Args:
        draws: name -> (chain, draw) array of one scalar invariant each.
    """
    rows = {}
    for name, x in draws.items():
        x = np.asarray(x, dtype=float)
        q5, q50, q95 = np.quantile(x, [0.05, 0.5, 0.95])
        if np.ptp(x) == 0:  # fixed by the model (an ARD off-diagonal): nothing to diagnose
            rows[name] = {"mean": x.mean(), "sd": 0.0, "q5": q5, "q50": q50, "q95": q95,
                          "r_hat": np.nan, "ess_bulk": np.nan, "ess_tail": np.nan}
            continue
        rows[name] = {
            "mean": x.mean(),
            "sd": x.std(ddof=1),
            "q5": q5,
            "q50": q50,
            "q95": q95,
            "r_hat": float(az.rhat(x)) if x.shape[0] > 1 else np.nan,
            "ess_bulk": float(az.ess(x, method="bulk")),
            "ess_tail": float(az.ess(x, method="tail", prob=_TAIL)),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def sampler_report(idata, summary: pd.DataFrame, wall_time: float | None = None) -> dict:
    """Divergences, R-hat/ESS on invariants, E-BFMI, steps per draw, and flags in words."""
    stats = idata.sample_stats
    div = np.asarray(stats["diverging"])
    n_draws = div.size
    bfmi = _bfmi(idata) if "energy" in stats else np.array([np.nan])
    steps = np.asarray(stats["n_steps"]) if "n_steps" in stats else np.array([np.nan])
    out = {
        "draws": int(n_draws),
        "chains": int(div.shape[0]),
        "divergences": int(div.sum()),
        "divergence_fraction": float(div.mean()),
        "max_r_hat": float(np.nanmax(summary["r_hat"])) if summary["r_hat"].notna().any()
        else float("nan"),
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "min_ess_tail": float(summary["ess_tail"].min()),
        "min_e_bfmi": float(np.min(bfmi)),
        "mean_steps_per_draw": float(np.mean(steps)),
    }
    if wall_time is not None:
        out["wall_time_s"] = float(wall_time)
        out["min_ess_per_s"] = out["min_ess_bulk"] / wall_time
    flags = []
    if out["divergence_fraction"] > DIVERGENCE_MAX:
        flags.append(
            f"{out['divergences']} divergent transitions ({100 * out['divergence_fraction']:.1f}%"
            " of draws): the sampler missed part of the posterior; raise target_accept_prob or"
            " reparameterise"
        )
    elif out["divergences"]:
        flags.append(f"{out['divergences']} divergent transitions (below 1%: minor)")
    if out["max_r_hat"] > RHAT_MAX:
        worst = summary["r_hat"].idxmax()
        flags.append(
            f"R-hat {out['max_r_hat']:.3f} > {RHAT_MAX} on {worst}: chains disagree; run longer"
        )
    if out["min_ess_bulk"] < ESS_MIN:
        worst = summary["ess_bulk"].idxmin()
        flags.append(
            f"bulk ESS {out['min_ess_bulk']:.0f} < {ESS_MIN} on {worst}: estimates are noisy;"
            " draw more samples"
        )
    if out["min_e_bfmi"] < BFMI_MIN:
        flags.append(
            f"E-BFMI {out['min_e_bfmi']:.2f} < {BFMI_MIN}: the energy distribution is poorly"
            " explored (heavy tails or a funnel)"
        )
    out["flags"] = flags or ["no problems detected"]
    return out


def _bfmi(idata) -> np.ndarray:
    """E-BFMI per chain (C,)."""
    res = az.bfmi(idata)
    return np.atleast_1d(np.asarray(res["energy"] if ARVIZ_LINE else res, dtype=float))


def loo(idata) -> dict:
    """PSIS-LOO of the pointwise closed-form GP leave-one-out log-likelihood."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = az.loo(idata, pointwise=True)
    elpd, p = (res.elpd, res.p) if ARVIZ_LINE else (res.elpd_loo, res.p_loo)
    return {
        "elpd_loo": float(elpd),
        "se": float(res.se),
        "p_loo": float(p),
        "max_pareto_k": float(np.max(np.asarray(res.pareto_k))),
    }


def relative_ess(idata) -> float:
    """The relative efficiency ``r_eff`` that ArviZ's LOO gives PSIS: the mean "mean" ESS
    over every posterior variable divided by the number of draws (1 for one chain in
    ArviZ 1.x, as there)."""
    post = idata.posterior
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    if ARVIZ_LINE and n_chains == 1:
        return 1.0
    ess = post.azstats.ess(method="mean") if ARVIZ_LINE else az.ess(idata, method="mean")
    return float(np.hstack([np.ravel(ess[v]) for v in ess.data_vars]).mean()) / (
        n_chains * n_draws)


def psis(log_ratios: np.ndarray, r_eff: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed importance sampling of ``log_ratios`` (G, S), ArviZ's estimator.

    Returns ``(log_w, k)``: (G, S) log-weights normalised over the S draws of each
    row, and the (G,) Pareto shape estimates.
    """
    ratios = np.asarray(log_ratios, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if ARVIZ_LINE:
            from arviz_stats.base import array_stats

            # ArviZ 1.x's psislw takes log-likelihoods (it smooths their negatives).
            lw, k = array_stats.psislw(-ratios, r_eff=r_eff, axis=-1)
        else:
            lw, k = az.psislw(ratios, r_eff)
    lw = np.asarray(lw)
    return lw - np.logaddexp.reduce(lw, axis=1, keepdims=True), np.asarray(k)


def psis_log_weights(idata) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed leave-one-out importance log-weights of each observation.

    The ratios are ``1 / p(y_i | y_-i, theta_s)`` (the pointwise log-likelihood
    group holds the closed-form GP leave-one-out densities), smoothed as in
    :func:`loo`. Returns ``(log_w, k)``: (N, S) log-weights normalised over the
    S draws of each observation, and the (N,) Pareto shape estimates.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if ARVIZ_LINE:
            res = az.loo(idata, pointwise=True)
            lw = res.log_weights.transpose(..., "chain", "draw")
            lw = np.asarray(lw).reshape(lw.shape[0], -1)
            k = np.asarray(res.pareto_k)
        else:
            ll = np.asarray(idata.log_likelihood["y"])  # (C, D, N)
            n_samples = ll.shape[0] * ll.shape[1]
            lw, k = az.psislw(-ll.reshape(n_samples, -1).T, relative_ess(idata))
            lw, k = np.asarray(lw), np.asarray(k)
    lw = lw - np.logaddexp.reduce(lw, axis=1, keepdims=True)
    return lw, k


def compare(idatas: dict) -> pd.DataFrame:
    """ArviZ LOO model comparison, ranked: ``rank``, ``elpd_diff`` (>= 0, from the
    best), stacking ``weight`` and the rest of ArviZ's columns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if not ARVIZ_LINE:
            return az.compare(idatas, ic="loo")
        table = az.compare(idatas, round_to="none")
    # ArviZ 1.x counts the difference down from the best (<= 0), 0.x up (>= 0).
    return table.assign(elpd_diff=-table["elpd_diff"])


def to_netcdf(idata, path) -> None:
    idata.to_netcdf(str(path))


def from_netcdf(path):
    """The saved posterior, read into memory and its file closed.

    Closed here rather than left to xarray's file cache: netCDF4 is not thread-safe,
    and a cached handle closed later by the garbage collector crashed the process
    (a segfault after a few dozen loads in one session)."""
    data = az.from_netcdf(str(path))
    if hasattr(data, "load"):
        data.load()
    if hasattr(data, "close"):
        data.close()
    return data
