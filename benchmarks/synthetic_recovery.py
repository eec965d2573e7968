"""Synthetic recovery benchmark (issue 3): the paper's two regimes and a degenerate one.

Regimes (unit cube, noise sd 0.1, 20% held out):

* (a) rotated truth, l = (0.5, 0.2, 0.08), a = (pi/4)(1,1,1)/sqrt(3); N_train 200 and 500;
* (b) axis-aligned truth, l = (0.5, 0.2, 0.08), a = 0; N_train 200;
* (c) near-degenerate, l = (0.3, 0.28, 0.1), rotated as in (a); N_train 200.

Models: rotated (axis-angle and identifiable), ARD, full SPD. Columns: RMSE, NLPD,
90% coverage, relative Frobenius and affine-invariant metric error, axial angle
error per axis, max R-hat and min bulk ESS on invariants, ESS/s, leapfrog steps per
draw, divergences, wall time. Then the median over seeds and the targets.

A second table times one gradient of the log density: this package's model (custom
VJP Gaussian likelihood) against the same model written the way GPJax's NumPyro
integration does it (GPJax kernel and conjugate MLL inside the model, a ``factor``
site, autodiff through the Cholesky), and the gradient/value ratio at N = 2,000.

    python benchmarks/synthetic_recovery.py            # full (hours on 2 cores)
    python benchmarks/synthetic_recovery.py --quick    # smoke: seconds to minutes
    python benchmarks/synthetic_recovery.py --jobs 4   # fits in parallel processes
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import math
import os
import platform
import sys
import time
from pathlib import Path

REGIMES = {
    "a": {"l": (0.5, 0.2, 0.08), "a": tuple(math.pi / 4 / math.sqrt(3) * x for x in (1, 1, 1))},
    "b": {"l": (0.5, 0.2, 0.08), "a": (0.0, 0.0, 0.0)},
    "c": {"l": (0.3, 0.28, 0.1), "a": tuple(math.pi / 4 / math.sqrt(3) * x for x in (1, 1, 1))},
}
MODELS = {
    "rotated-aa": {"kernel": "rotated", "parameterization": "axis-angle"},
    "rotated-id": {"kernel": "rotated", "parameterization": "identifiable"},
    "ard": {"kernel": "ard"},
    "full": {"kernel": "full"},
}


def machine() -> str:
    import jax

    return (f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"python {platform.python_version()}, jax {jax.__version__} "
            f"({jax.default_backend()}, {jax.local_device_count()} devices)")


def run_one(job: dict) -> dict:
    """One fit: returns a row of metrics (runs in a worker process)."""
    import numpy as np

    from aniso_gp import inference

    train, test = regime_data(job["regime"], job["n_train"], job["seed"])
    t0 = time.perf_counter()
    fit = inference.fit(train.X, train.y, num_chains=job["chains"], num_warmup=job["warmup"],
                        num_samples=job["samples"], seed=job["seed"], progress=False,
                        **MODELS[job["model"]])
    wall = time.perf_counter() - t0
    sc = fit.score(test.X, test.y, num_draws=200)
    table = fit.orientation()
    truth = train.truth
    from aniso_gp import orientation

    err = orientation.metric_errors(fit.metric_draws(), truth.metric)
    ax = orientation.axis_errors(fit._draws("axes"), truth.axes)
    d = fit.diagnostics()
    notes = " | ".join(n for n in table["note"] if n) or "-"
    return {
        "regime": job["regime"], "n_train": job["n_train"], "seed": job["seed"],
        "model": job["model"], **sc,
        "rel_frob": err["relative_frobenius"], "affine_inv": err["affine_invariant"],
        "ax1_deg": float(ax[0]), "ax2_deg": float(ax[1]), "ax3_deg": float(ax[2]),
        "max_rhat": d["max_r_hat"], "min_ess": d["min_ess_bulk"],
        "ess_per_s": d["min_ess_bulk"] / wall, "steps_per_draw": d["mean_steps_per_draw"],
        "div_frac": d["divergence_fraction"], "wall_s": wall,
        "flagged_pair": bool(np.any(
            table["note"].str.contains("not distinguishable|weakly identified"))),
        "notes": notes,
    }


def gpjax_pattern(X, y, spec):
    """The rotated model as GPJax documents its NumPyro use: the kernel object built
    inside the model, the conjugate MLL added through a ``factor`` site, autodiff
    through the Cholesky; exchangeable log length-scales and a free axis-angle."""
    import gpjax as gpx
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from aniso_gp import kernels

    p = spec.priors
    mean = numpyro.sample("mean", dist.Normal(p.mean_loc, p.mean_sd))
    signal = numpyro.sample("signal", dist.HalfNormal(p.signal_scale))
    noise = numpyro.sample("noise", dist.HalfNormal(p.noise_scale))
    log_l = numpyro.sample("log_l", dist.Normal(math.log(p.lengthscale_median),
                                                p.log_lengthscale_sd).expand([3]).to_event(1))
    a = numpyro.sample("axis_angle", dist.Normal(0.0, 1.5).expand([3]).to_event(1))
    kern = kernels.RotatedAnisotropic(jnp.exp(log_l), a, variance=signal**2)
    prior = gpx.gps.Prior(mean_function=gpx.mean_functions.Constant(mean), kernel=kern)
    post = prior * gpx.likelihoods.Gaussian(obs_stddev=noise)
    numpyro.factor("mll", gpx.objectives.conjugate_mll(post, gpx.Dataset(X=X, y=y[:, None])))


def regime_data(regime, n_train, seed):
    """(train, test) fields of one regime: N_train / 0.8 points, 20% held out."""
    from aniso_gp import datasets

    reg = REGIMES[regime]
    n_total = int(round(n_train / 0.8))
    field = datasets.synthetic_field(n_total, reg["l"], reg["a"], noise_sd=0.1,
                                     seed=1000 * seed + n_total)
    return field.split(0.2, seed=seed)


def _standardised(X, y):
    """The fit's standardiser and the default model spec on its scale."""
    from aniso_gp import inference, models

    std = inference.Standardizer.from_data(X, y)
    return std, models.ModelSpec(priors=models.Priors().standardised(
        std.x_scale, std.y_mean, std.y_sd, std.extent))


def gradient_timing(sizes, repeats: int) -> list[dict]:
    """Median time of value and value+gradient of the log density, ours vs GPJax pattern."""
    import jax
    import numpy as np
    from numpyro.infer.util import initialize_model

    from aniso_gp import datasets, models

    rows = []
    for n in sizes:
        f = datasets.synthetic_field(n, REGIMES["a"]["l"], REGIMES["a"]["a"], noise_sd=0.1,
                                     seed=0)
        std, spec = _standardised(f.X, f.y)
        Xs, ys = std.x(f.X), std.y(f.y)
        fns = {}
        for name, model, kw in (("aniso_gp", models.gp_model, {"spec": spec, "landmarks": None}),
                                ("gpjax_pattern", gpjax_pattern, {"spec": spec})):
            info = initialize_model(jax.random.PRNGKey(0), model, model_args=(Xs, ys),
                                    model_kwargs=kw)
            z = info.param_info.z
            fns[f"{name}_value_ms"] = (jax.jit(info.potential_fn), z)
            fns[f"{name}_grad_ms"] = (jax.jit(jax.value_and_grad(info.potential_fn)), z)
        # Interleaved rounds, so a noisy spell of this shared machine hits every
        # variant alike; the median over rounds is reported.
        times = {k: [] for k in fns}
        for fn, z in fns.values():
            jax.block_until_ready(fn(z))
        for _ in range(repeats):
            for k, (fn, z) in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(fn(z))
                times[k].append(time.perf_counter() - t)
        out = {"N": n, **{k: 1e3 * float(np.median(v)) for k, v in times.items()}}
        out["grad_over_value"] = out["aniso_gp_grad_ms"] / out["aniso_gp_value_ms"]
        out["gpjax_grad_over_ours"] = out["gpjax_pattern_grad_ms"] / out["aniso_gp_grad_ms"]
        rows.append(out)
    return rows


def gpjax_pattern_nuts(n_train, chains, warmup, samples, seed=0) -> dict:
    """NUTS on the GPJax-pattern model with NumPyro's defaults (diagonal mass matrix),
    on the same regime-(a) data as :func:`run_one`; ESS on the same invariants."""
    import jax
    import numpy as np
    from numpyro.infer import MCMC, NUTS

    from aniso_gp import diagnostics, so3

    train, _ = regime_data("a", n_train, seed)
    std, spec = _standardised(train.X, train.y)
    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(gpjax_pattern), num_warmup=warmup, num_samples=samples,
                num_chains=chains, chain_method="parallel", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), std.x(train.X), std.y(train.y), spec=spec,
             extra_fields=("num_steps", "diverging"))
    s = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    wall = time.perf_counter() - t0
    l = np.exp(s["log_l"])
    M = np.asarray(so3.metric(l, s["axis_angle"]))
    inv = {f"l{i + 1}": np.sort(l, axis=-1)[..., ::-1][..., i] for i in range(3)}
    for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        inv[f"M_{i}{j}"] = M[..., i, j]
    inv.update(signal=s["signal"], noise=s["noise"], mean=s["mean"])
    summ = diagnostics.invariant_summary(inv)
    ex = mcmc.get_extra_fields()
    return {"model": "gpjax-pattern (NUTS defaults)", "n_train": n_train,
            "max_rhat": float(summ.r_hat.max()), "min_ess": float(summ.ess_bulk.min()),
            "steps_per_draw": float(np.mean(ex["num_steps"])),
            "div_frac": float(np.mean(ex["diverging"])), "wall_s": wall,
            "ess_per_s": float(summ.ess_bulk.min()) / wall}


def read_log(path):
    """(fit rows, baseline row or None, gradient rows or None) from an earlier run's stdout."""
    import ast

    rows, base, grads = [], None, None
    for line in Path(path).read_text().splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "ROW":
            rows.append(ast.literal_eval(rest))
        elif tag == "BASELINE":
            base = ast.literal_eval(rest)
        elif tag == "GRADS":
            grads = ast.literal_eval(rest)
    return rows, base, grads


def _init_worker():
    import aniso_gp  # noqa: F401  (x64 and CPU devices before any computation)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--regimes", default="a,b,c")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--large-n", type=int, default=500, help="extra N_train for regime (a)")
    ap.add_argument("--jobs", type=int, default=1, help="fits run in parallel processes")
    ap.add_argument("--grad-sizes", default="500,2000")
    ap.add_argument("--baseline-n", type=int, default=200,
                    help="N_train of the GPJax-pattern NUTS run in regime (a), seed 0 (0: skip)")
    ap.add_argument("--out", default="reports/synthetic_recovery.md")
    ap.add_argument("--no-append", action="store_true", help="print only, write no report")
    ap.add_argument("--resume", metavar="LOG",
                    help="stdout of an earlier run: keep its results, run only what is missing")
    ap.add_argument("--no-run", action="store_true",
                    help="with --resume: write the report from the log alone; list what is missing")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.chains, args.warmup, args.samples = 1, 2, 60, 60
        args.large_n, args.grad_sizes, args.baseline_n = 0, "200", 60
    import pandas as pd

    import aniso_gp  # noqa: F401  (x64 and the CPU devices, also for the machine line)

    prior_rows, prior_base, prior_grads = read_log(args.resume) if args.resume else ([], None, None)
    finished = {(r["regime"], r["n_train"], r["seed"], r["model"]) for r in prior_rows}
    jobs = []
    for regime in args.regimes.split(","):
        sizes = [60 if args.quick else 200]
        if regime == "a" and args.large_n:
            sizes.insert(0, args.large_n)  # the fits behind most targets first
        for n in sizes:
            for seed in range(args.seeds):
                for model in args.models.split(","):
                    if (regime, n, seed, model) not in finished:
                        jobs.append({"regime": regime, "n_train": n, "seed": seed,
                                     "model": model, "chains": args.chains,
                                     "warmup": args.warmup, "samples": args.samples})
    missing = []
    if args.no_run:
        missing, jobs = [(j["regime"], j["n_train"], j["seed"], j["model"]) for j in jobs], []
    t0 = time.perf_counter()
    # Short measurements first; every result is printed as one line as soon as it
    # exists, so a run cut short can be completed with --resume.
    grads = prior_grads
    if grads is None and not args.no_run:
        grads = gradient_timing([int(s) for s in args.grad_sizes.split(",")],
                                repeats=5 if args.quick else 20)
        print("GRADS", grads, flush=True)
    b = prior_base
    if b is None and args.baseline_n and not args.no_run:
        b = gpjax_pattern_nuts(args.baseline_n, args.chains, args.warmup, args.samples)
        print("BASELINE", b, flush=True)
    rows = list(prior_rows)

    def done(row):
        rows.append(row)
        print("ROW", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
              flush=True)

    if args.jobs > 1:
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"),
                                    initializer=_init_worker) as ex:
            for fut in cf.as_completed([ex.submit(run_one, j) for j in jobs]):
                done(fut.result())
    else:
        for j in jobs:
            done(run_one(j))
    df = pd.DataFrame(rows)
    grads = pd.DataFrame(grads or [])
    base = pd.DataFrame()
    if b:
        ours = df[(df.regime == "a") & (df.n_train == b["n_train"]) & (df.seed == 0)]
        base = pd.concat([pd.DataFrame([b]), ours[list(b)]], ignore_index=True)
        base["ess_per_s / baseline"] = base["ess_per_s"] / b["ess_per_s"]
    total = time.perf_counter() - t0

    per_seed = df.drop(columns=["notes"]).round(4)
    med = (df.drop(columns=["seed", "notes"]).groupby(["regime", "n_train", "model"])
           .median(numeric_only=True).round(4))
    checks = targets(df, base)
    cmd = "python benchmarks/synthetic_recovery.py " + " ".join(argv or sys.argv[1:])
    text = "\n".join([
        f"## Synthetic recovery ({dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"Machine: {machine()}  ",
        f"Command: `{cmd}`  ",
        f"Chains x draws: {args.chains} x {args.samples} (warmup {args.warmup}); "
        f"seeds {args.seeds}; wall of this invocation {total:.0f} s, of all fits in the "
        f"report {df.wall_s.sum():.0f} s",
        "",
        "### Median over seeds",
        "",
        med.to_markdown(),
        "",
        "### Targets (issue 3)",
        "",
        checks.to_markdown(index=False),
        "",
        f"### Against the GPJax-pattern model under NUTS (regime a, N={args.baseline_n}, seed 0)",
        "",
        base.round(4).to_markdown(index=False) if len(base) else "(skipped)",
        "",
        "### Gradient timing (one log-density gradient, ms, median)",
        "",
        grads.round(3).to_markdown(index=False),
        "",
        "### Per seed",
        "",
        per_seed.to_markdown(index=False),
        "",
        "### Identifiability notes",
        "",
        *[f"- ({r.regime}, N={r.n_train}, seed {r.seed}, {r.model}): {r.notes}"
          for r in df.itertuples() if r.notes != "-"],
        "",
        *(["### Not run", "", "Fits of the design missing from this report "
           "(regime, N_train, seed, model):", "",
           *[f"- {m}" for m in missing], ""] if missing else []),
    ])
    print(text)
    if not args.no_append:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as fh:
            fh.write(text + "\n")
        print(f"appended to {out}")


def targets(df, base=None):
    """The issue's targets: medians over seeds; comparisons between models are paired
    (per-seed ratio or difference on the same data, then the median)."""
    import numpy as np
    import pandas as pd

    def sel(regime, model, n=None):
        s = (df.regime == regime) & (df.model == model)
        return s & (df.n_train == n) if n is not None else s

    def med(regime, model, col, n=None):
        s = sel(regime, model, n)
        return float(np.median(df.loc[s, col])) if s.any() else float("nan")

    def paired(regime, model, ref, col, n=None, op=np.divide):
        a = df.loc[sel(regime, model, n)].set_index("seed")[col]
        b = df.loc[sel(regime, ref, n)].set_index("seed")[col]
        both = a.index.intersection(b.index)
        return float(np.median(op(a[both], b[both]))) if len(both) else float("nan")

    rows = []

    def add(name, value, ok):
        rows.append({"target": name, "measured": round(value, 4) if value == value else "n/a",
                     "met": "yes" if ok else ("n/a" if value != value else "NO")})

    for n_a in sorted(df.loc[df.regime == "a", "n_train"].unique(), reverse=True):
        seeds = df.loc[(df.regime == "a") & (df.n_train == n_a), "seed"].nunique()
        tag = f"(a) N={n_a} ({seeds} seed{'s' if seeds > 1 else ''})"
        for m in ("rotated-id", "rotated-aa"):
            v = med("a", m, "rel_frob", n_a)
            add(f"{tag} {m}: rel. Frobenius < 0.2", v, v < 0.2)
            v = med("a", m, "ax3_deg", n_a)
            add(f"{tag} {m}: shortest-axis error < 5 deg", v, v < 5)
            v = paired("a", m, "ard", "rmse", n_a)
            add(f"{tag} {m}: RMSE / ARD <= 0.85", v, v <= 0.85)
            v = paired("a", m, "full", "nlpd", n_a, np.subtract)
            add(f"{tag} {m}: NLPD - full-SPD <= 0.05", v, v <= 0.05)
            v = med("a", m, "steps_per_draw", n_a)
            add(f"{tag} {m}: leapfrog steps per draw <= 15", v, v <= 15)
        v = paired("a", "rotated-id", "rotated-aa", "ess_per_s", n_a)
        add(f"{tag}: ESS/s identifiable / axis-angle >= 2", v, v >= 2)
    for m in ("rotated-id",):
        worst = max(med("b", m, c) for c in ("ax1_deg", "ax2_deg", "ax3_deg"))
        add(f"(b) {m}: axes within 5 deg of coordinate axes", worst, worst < 5)
        v = paired("b", m, "ard", "rmse")
        add(f"(b) {m}: RMSE within 2% of ARD", v, abs(v - 1) <= 0.02)
        frac = float(df.loc[sel("c", m), "flagged_pair"].mean()) if sel("c", m).any() \
            else float("nan")
        add(f"(c) {m}: near-equal pair flagged (fraction of seeds)", frac, frac == 1.0)
        v = med("c", m, "ax3_deg")
        add(f"(c) {m}: well-separated axis within 10 deg", v, v < 10)
    v = paired("c", "rotated-id", "rotated-aa", "ess_per_s")
    add("(c): ESS/s identifiable / axis-angle >= 2", v, v >= 2)
    add("max R-hat on invariants < 1.01 (all fits)", float(df.max_rhat.max()),
        df.max_rhat.max() < 1.01)
    add("divergences < 1% (all fits)", float(df.div_frac.max()), df.div_frac.max() < 0.01)
    if base is not None and len(base):
        for _, r in base.iloc[1:].iterrows():
            v = r["ess_per_s / baseline"]
            add(f"(a) N={r.n_train} {r.model}: ESS/s >= 5x GPJax pattern", v, v >= 5)
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
