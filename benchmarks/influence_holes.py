"""Drill holes as groups (aniso_gp.influence.group_deletion) against refits without them.

    python benchmarks/influence_holes.py                  # 24 holes, 5 top + 5 random refits
    python benchmarks/influence_holes.py --quick --no-append

The oil-sands set-up of notebooks/oilsands.py: bitumen grade minus a quadratic
vertical trend, every sample of the 24 drill holes nearest the field's centre,
thinned to N points, the rotated RBF kernel with priors in metres, 2 chains of
300 + 300 draws. ``group_deletion`` (holes as groups, leave-group-out densities,
PSIS) predicts how far the posterior mean short axis (the bedding normal) turns
without each hole; the five holes it ranks highest and five at random are then
left out and refitted. Printed: per hole the predicted and refitted change, the
hole's Pareto k, the Spearman rank correlation over the ten, whether the top five
moved the refit more than the random five (issue 17: the top five verified by
refits), and the Monte Carlo noise of a refit (two full fits, two seeds).
Appends to reports/benchmark-log.md unless --no-append.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volume_scaling import log_entry, machine_info  # noqa: E402

import aniso_gp  # noqa: E402
from aniso_gp import datasets, influence, io, orientation  # noqa: E402

LOG = Path(__file__).resolve().parent.parent / "reports" / "benchmark-log.md"
PRIORS = {"lengthscale_median": 100.0, "log_lengthscale_sd": 1.5}


def holes_data(n_holes: int, n_points: int, seed: int = 0):
    """(X, y, hole label per point): the notebook's neighbourhood of holes."""
    df = datasets.oilsands()
    coef = np.polyfit(df["elevation_m"], df["bitumen_wt_pct"], deg=2)
    df["residual"] = df["bitumen_wt_pct"] - np.polyval(coef, df["elevation_m"])
    collars = df.groupby("drillhole")[["east_m", "north_m"]].first()
    centre = collars.median().to_numpy()
    near = collars.index[np.argsort(np.linalg.norm(collars.to_numpy() - centre,
                                                   axis=1))[:n_holes]]
    sub = df[df["drillhole"].isin(near)]
    X = sub[["east_m", "north_m", "elevation_m"]].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        Xk, yk, idx = io.subsample(X - X.mean(axis=0), sub["residual"].to_numpy(), n_points,
                                   method="random", seed=seed, return_index=True)
    return Xk, yk, sub["drillhole"].to_numpy()[idx]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--holes", type=int, default=24)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--random", type=int, default=5)
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="6 holes, N = 60, 1 + 1 refits")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.holes, args.n, args.top, args.random, args.draws = 6, 60, 1, 1, 60
    warnings.simplefilter("ignore")
    info = machine_info()
    settings = dict(num_chains=2, num_warmup=args.draws, num_samples=args.draws, seed=1,
                    progress=False, priors=PRIORS)
    X, y, holes = holes_data(args.holes, args.n)
    t0 = time.perf_counter()
    fit = aniso_gp.fit(X, y, **settings)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tab = influence.group_deletion(fit, holes)
    influence_s = time.perf_counter() - t0
    full = orientation.mean_axis(fit.axes_draws()[:, :, 2])
    twin = aniso_gp.fit(X, y, **{**settings, "seed": 2})
    noise = float(orientation.axial_angles(
        orientation.mean_axis(twin.axes_draws()[:, :, 2])[None], full)[0])

    rng = np.random.default_rng(0)
    top = list(tab.index[: args.top])
    rest = [h for h in tab.index if h not in top]
    chosen = top + list(rng.choice(rest, size=min(args.random, len(rest)), replace=False))
    rows = []
    for h in chosen:
        keep = holes != h
        refit = aniso_gp.fit(X[keep], y[keep], **settings)
        axis = orientation.mean_axis(refit.axes_draws()[:, :, 2])
        rows.append({
            "hole": int(h), "set": "top" if h in top else "random",
            "samples": int(tab.loc[h, "n_obs"]),
            "predicted deg": round(float(tab.loc[h, "short_axis_change_deg"]), 3),
            "refitted deg": round(float(orientation.axial_angles(axis[None], full)[0]), 3),
            "pareto k": round(float(tab.loc[h, "pareto_k"]), 3),
        })
    pred = np.array([r["predicted deg"] for r in rows])
    refit = np.array([r["refitted deg"] for r in rows])
    is_top = np.array([r["set"] == "top" for r in rows])
    rho = spearmanr(pred, refit).statistic
    verified = float(np.median(refit[is_top])) > float(np.median(refit[~is_top]))
    verdict = (f"Spearman rank correlation, predicted vs refitted short-axis change, over "
               f"{len(rows)} hole refits: {rho:.2f}. Median refitted change: top {args.top} "
               f"{np.median(refit[is_top]):.2f} deg, random {np.median(refit[~is_top]):.2f} deg"
               f" (top holes verified: {'YES' if verified else 'NO'}). Monte Carlo noise of one"
               f" fit's mean short axis (seeds 1 and 2): {noise:.2f} deg. "
               f"{int(tab['unreliable'].sum())} of {len(tab)} holes have Pareto k > 0.7.")
    facts = (f"{args.holes} holes, N = {len(y)}, 2 chains of {args.draws} + "
             f"{args.draws} draws; one fit {fit_s:.0f} s, group deletion over {len(tab)} "
             f"holes {influence_s:.1f} s")
    text = log_entry(__file__, argv, info, facts, rows, verdict)
    print(text)
    if not args.no_append and not args.quick:
        with open(LOG, "a") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
