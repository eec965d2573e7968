"""End-to-end low-rank fit on a large rotated field (issue 4).

``fit(likelihood="fitc", num_landmarks=m)`` on N points of an exactly simulated
rotated RBF field, then: wall time, leapfrog steps per draw, time of one
log-density gradient (so wall ~ draws x steps x gradient can be checked), R-hat
and ESS on invariants, metric and axis errors against the truth, and held-out
RMSE against the noise floor.

The field is drawn exactly on a G^3 voxel grid of the unit cube by circulant
embedding (``datasets.stationary_rbf_grid``; a dense Cholesky at N = 20,000 would
cost minutes and 6 GB), N + N_test voxels are picked at random, and Gaussian
noise is added.

    python benchmarks/large_fit.py                    # N = 20,000, m = 256, 2 x (300 + 300)
    python benchmarks/large_fit.py --quick --no-append    # smoke (seconds)
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import time
from pathlib import Path


def machine() -> str:
    import jax

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.machine()} {os.cpu_count()} cores (load {load} at start), python "
            f"{platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}, "
            f"{jax.local_device_count()} devices), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def field(n, n_test, lengthscales, axis_angle, noise_sd, grid, seed):
    """(X, y, X_test, y_test, f_test, truth) from an exact grid draw, sampled voxels."""
    import numpy as np

    from aniso_gp import datasets, so3

    M = np.asarray(so3.metric(np.asarray(lengthscales), np.asarray(axis_angle)))
    rng = np.random.default_rng(seed)
    f = datasets.stationary_rbf_grid((grid,) * 3, (1.0 / grid,) * 3, M, 1.0, rng).ravel()
    X = datasets.voxel_coordinates((grid,) * 3, 1.0 / grid)
    idx = rng.choice(f.size, n + n_test, replace=False)
    y = f[idx] + noise_sd * rng.standard_normal(idx.size)
    lc, ac = (np.asarray(v) for v in so3.canonicalize(np.asarray(lengthscales),
                                                      np.asarray(axis_angle)))
    truth = datasets.Truth(lengthscales=lc, axis_angle=ac, metric=M, axes=np.asarray(so3.exp(ac)),
                           variance=1.0, noise_sd=noise_sd, base="rbf")
    return X[idx[:n]], y[:n], X[idx[n:]], y[n:], f[idx[n:]], truth


def gradient_ms(X, y, fit, repeats=5):
    """Median time of one value-and-gradient of the fitted model's potential."""
    import jax
    import numpy as np
    from numpyro.infer.util import initialize_model

    from aniso_gp import models

    s, std = fit.settings, fit.std
    spec = models.ModelSpec(kernel=s["kernel"], base=s["base"],
                            parameterization=s["parameterization"], likelihood=s["likelihood"],
                            priors=models.Priors(**s["priors"]).standardised(
                                std.x_scale, std.y_mean, std.y_sd, std.extent))
    kw = {"spec": spec, "landmarks": np.asarray(s["landmarks"])}
    info = initialize_model(jax.random.PRNGKey(0), models.gp_model,
                            model_args=(std.x(X), std.y(y)), model_kwargs=kw)
    vg = jax.jit(jax.value_and_grad(info.potential_fn))
    jax.block_until_ready(vg(info.param_info.z))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(vg(info.param_info.z))
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--n-test", type=int, default=2_000)
    ap.add_argument("--m", type=int, default=256, help="landmarks (rpcholesky)")
    ap.add_argument("--likelihood", default="fitc", choices=("fitc", "dtc"))
    ap.add_argument("--parameterization", default="identifiable")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--grid", type=int, default=40, help="voxels per side of the simulated field")
    ap.add_argument("--lengthscales", default="0.6,0.3,0.15")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--out", default="reports/benchmark-log.md")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.n_test, args.m, args.grid = 200, 50, 16, 8
        args.warmup = args.samples = 20

    import numpy as np
    import pandas as pd

    import aniso_gp  # noqa: F401  (x64, CPU devices)
    from aniso_gp import inference, orientation

    l = tuple(float(v) for v in args.lengthscales.split(","))
    a = tuple(math.pi / 4 / math.sqrt(3) for _ in range(3))
    X, y, Xt, yt, ft, truth = field(args.n, args.n_test, l, a, 0.1, args.grid, args.seed)
    header = machine()
    t0 = time.perf_counter()
    fit = inference.fit(X, y, likelihood=args.likelihood, num_landmarks=args.m,
                        parameterization=args.parameterization, num_chains=args.chains,
                        num_warmup=args.warmup, num_samples=args.samples, seed=args.seed,
                        progress=False)
    wall = time.perf_counter() - t0
    d = fit.diagnostics()
    err = orientation.metric_errors(fit.metric_draws(), truth.metric)
    ax = orientation.axis_errors(fit._draws("axes"), truth.axes)
    t1 = time.perf_counter()
    mean = fit.predict(Xt, return_std=False, num_draws=50)
    predict_s = time.perf_counter() - t1
    grad = gradient_ms(X, y, fit)
    iters = args.chains * (args.warmup + args.samples)
    lq = np.quantile(fit._draws("lengthscales"), [0.05, 0.5, 0.95], axis=0)
    row = {
        "N": args.n, "m": args.m, "likelihood": args.likelihood,
        "chains x (warmup + draws)": f"{args.chains} x ({args.warmup} + {args.samples})",
        "wall s": round(wall, 1),
        "steps/draw": round(d["mean_steps_per_draw"], 2),
        "grad ms": round(grad, 1),
        "sampling floor s": round(iters * d["mean_steps_per_draw"] * grad / 1e3 / args.chains, 1),
        "max R-hat": round(d["max_r_hat"], 4), "min ESS": round(d["min_ess_bulk"], 1),
        "divergences": d["divergences"],
        "rel. Frobenius": round(err["relative_frobenius"], 3),
        "axis errors deg": ", ".join(f"{v:.1f}" for v in ax),
        "test RMSE vs f": round(float(np.sqrt(np.mean((mean - ft) ** 2))), 4),
        "test RMSE vs y": round(float(np.sqrt(np.mean((mean - yt) ** 2))), 4),
        "predict s": round(predict_s, 1),
    }
    table = pd.DataFrame([row]).T.rename(columns={0: "value"})
    cmd = "python benchmarks/large_fit.py " + " ".join(argv if argv is not None else
                                                       __import__("sys").argv[1:])
    text = "\n".join([
        f"## End-to-end low-rank fit (benchmarks/large_fit.py, {dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"- machine: {header}",
        f"- command: `{cmd}`",
        f"- data: exact RBF draw on a {args.grid}^3 grid of the unit cube, l = {l}, "
        f"a = (pi/4)(1,1,1)/sqrt(3), noise sd 0.1; N = {args.n} train and {args.n_test} test "
        "voxels at random",
        f"- truth l = {np.round(truth.lengthscales, 3).tolist()}; posterior l 5/50/95%: "
        + "; ".join(f"{q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}" for q in lq.T),
        "- 'sampling floor' = chains x (warmup + draws) x steps/draw x gradient time / chains "
        "(chains run in parallel, one per core)",
        "",
        table.to_markdown(),
        "",
    ])
    print(text)
    if not args.no_append:
        with Path(args.out).open("a") as fh:
            fh.write("\n" + text)
        print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
