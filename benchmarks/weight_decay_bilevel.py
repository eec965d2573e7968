r"""Generality check: per-weight weight decay for logistic regression (issue 5).

The classic bilevel problem of Hataya & Yamada's reference implementation, on
synthetic data: 1,000 training points in 100 dimensions (10 informative weights),
1,000 validation and 1,000 test points.

* inner: ``w*(h) = argmin_w mean_i logloss(x_i^T w, y_i) + 1/2 sum_j exp(h_j) w_j^2``
  (one decay per weight, ``h`` in R^100), solved by Newton to a 1e-12 gradient;
* outer: validation log-loss ``g(w*(h))``, optimised over ``h`` with Adam.

The hypergradient goes through :func:`aniso_gp.hypergrad.implicit_solution`
(``jax.jit(jax.grad(...))`` of the outer objective) with each iHVP solver.
Part 1 compares hypergradients at the start against the exact one at equal HVP
budgets; part 2 runs the outer optimisation with each solver at one budget and
reports the final validation / test loss.

Usage::

    python benchmarks/weight_decay_bilevel.py           # 100 outer steps
    python benchmarks/weight_decay_bilevel.py --quick --no-append
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from aniso_gp import hypergrad as hg  # noqa: E402

jax.config.update("jax_enable_x64", True)

REPORT = Path(__file__).resolve().parents[1] / "reports" / "benchmark-log.md"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hypergrad_solvers import NEVER, machine, table  # noqa: E402


def make_data(n: int, d: int, informative: int, seed: int):
    rng = np.random.default_rng(seed)
    w_true = np.zeros(d)
    w_true[:informative] = rng.normal(0.0, 2.0, informative)

    def draw(m):
        X = rng.standard_normal((m, d))
        y = (rng.uniform(size=m) < 1.0 / (1.0 + np.exp(-X @ w_true))).astype(float)
        return jnp.asarray(X), jnp.asarray(y)

    return draw(n), draw(n), draw(n)


def logloss(X, y, w):
    z = X @ w
    return jnp.mean(jax.nn.softplus(z) - y * z)


def inner_loss(w, h, X, y):
    return logloss(X, y, w) + 0.5 * jnp.sum(jnp.exp(h) * w * w)


def newton(h, X, y, max_iter: int = 50, tol: float = 1e-12):
    """Exact inner solve: Newton with the dense (d, d) Hessian (strictly convex: no line search
    needed from w = 0 at these decays)."""
    d = X.shape[1]

    def grad_hess(w):
        p = jax.nn.sigmoid(X @ w)
        g = X.T @ (p - y) / X.shape[0] + jnp.exp(h) * w
        H = (X.T * (p * (1 - p))) @ X / X.shape[0] + jnp.diag(jnp.exp(h))
        return g, H

    def cond(s):
        it, _, gnorm = s
        return (it < max_iter) & (gnorm > tol)

    def body(s):
        it, w, _ = s
        g, H = grad_hess(w)
        w = w - jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(H), True), g)
        return it + 1, w, jnp.max(jnp.abs(grad_hess(w)[0]))

    _, w, _ = jax.lax.while_loop(cond, body, (0, jnp.zeros(d), jnp.inf))
    return w


_STEPS: dict = {}


def make_step(solver, data):
    """``jit(value_and_grad)`` of the outer loss through the implicit inner solution
    (one compiled function per solver value)."""
    if solver not in _STEPS:
        (Xt, yt), (Xv, yv), _ = data
        sol = hg.implicit_solution(newton, inner_loss, solver)

        def objective(h, sink):
            return logloss(Xv, yv, sol.with_sink(h, sink, Xt, yt))

        _STEPS[solver] = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
    return _STEPS[solver]


def solvers_at(T: int, lr: float, rho: float, gaussian: bool = True):
    out = [
        (f"cg T={T}", hg.CG(T - 1, NEVER)),
        (f"neumann T={T}", hg.Neumann(T - 1, lr)),
        (f"nystrom-coords k={T - 1}", hg.Nystrom(T - 1, rho)),
    ]
    if gaussian:
        out.append((f"nystrom-gauss k={T - 1}", hg.Nystrom(T - 1, rho, sketch="gaussian")))
    if T >= 4:
        out.append((f"nystrom-pcg k={T // 2}", hg.NystromPCG(T // 2, T - T // 2 - 1, NEVER)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="few outer steps and budgets (seconds)")
    ap.add_argument("--no-append", action="store_true",
                    help="do not write reports/benchmark-log.md")
    ap.add_argument("--steps", type=int, default=None, help="outer Adam steps (default 100)")
    ap.add_argument("--budget", type=int, default=None, help="HVP budget of part 2 (20)")
    ap.add_argument("--rho", type=float, default=0.05, help="Nystrom damping")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", default=str(REPORT), help="Markdown file to append to")
    args = ap.parse_args(argv)
    q = args.quick
    steps = args.steps or (3 if q else 100)
    budgets = [10] if q else [5, 10, 20, 50]
    T = args.budget or (10 if q else 20)

    data = make_data(1000, 100, 10, args.seed)
    (Xt, yt), (Xv, yv), (Xs, ys) = data
    h0 = jnp.full(100, np.log(1e-2))
    w0 = newton(h0, Xt, yt)
    H0 = jax.hessian(lambda w: inner_loss(w, h0, Xt, yt))(w0)
    eig = np.linalg.eigvalsh(np.asarray(H0))
    lr = 1.0 / float(eig[-1])
    header = [
        f"machine: {machine()}",
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        "problem: logistic regression, 1000 train / 1000 val / 1000 test points, d=100"
        " (10 informative), one weight decay per weight, h0 = log(1e-2); Hessian eigenvalues"
        f" at h0 in [{eig[0]:.3g}, {eig[-1]:.3g}]; Neumann lr = 1/lambda_max,"
        f" Nystrom rho = {args.rho:g}",
        f"command: python benchmarks/weight_decay_bilevel.py {' '.join(argv or sys.argv[1:])}",
    ]
    print("\n".join(header), flush=True)

    # Part 1: hypergradient accuracy at h0 at equal budgets.
    exact_step = make_step(hg.Exact(), data)
    _, (g_exact, sink) = exact_step(h0, hg.ImplicitSolution.sink())
    g_exact = np.asarray(g_exact)
    rows = [{"solver": "exact (dense Cholesky)", "matvecs": int(sink[0]), "rel err": 0.0,
             "cosine": 1.0, "iHVP residual": float(sink[1])}]
    for budget in budgets:
        for name, solver in solvers_at(budget, lr, args.rho, not q):
            step = make_step(solver, data)
            _, (g, sink) = step(h0, hg.ImplicitSolution.sink())
            t0 = time.perf_counter()
            jax.block_until_ready(step(h0, hg.ImplicitSolution.sink()))
            g = np.asarray(g)
            rows.append(
                {
                    "solver": name,
                    "matvecs": int(sink[0]),
                    "rel err": float(np.linalg.norm(g - g_exact) / np.linalg.norm(g_exact)),
                    "cosine": float(g @ g_exact / np.linalg.norm(g) / np.linalg.norm(g_exact)),
                    "iHVP residual": float(sink[1]),
                    "time ms": 1e3 * (time.perf_counter() - t0),
                }
            )
    t1 = table(rows, ["solver", "matvecs", "rel err", "cosine", "iHVP residual", "time ms"])
    print("\n1. Hypergradient at h0 (jit(value_and_grad) of the outer loss; time includes the"
          " Newton inner solve)\n" + t1, flush=True)

    # Part 2: the outer optimisation with each solver at one budget.
    rows2 = []
    for name, solver in [("exact", hg.Exact())] + solvers_at(T, lr, args.rho, not q):
        step = make_step(solver, data)
        opt = optax.adam(0.05)
        h, state = h0, opt.init(h0)
        hvps, t0 = 0, None
        for i in range(steps):
            if i == 1:
                t0 = time.perf_counter()
            loss, (g, sink) = step(h, hg.ImplicitSolution.sink())
            hvps += int(sink[0])
            upd, state = opt.update(g, state, h)
            h = optax.apply_updates(h, upd)
        jax.block_until_ready(h)
        wall = time.perf_counter() - t0 if t0 is not None else float("nan")
        w = newton(h, Xt, yt)
        acc = float(jnp.mean(((Xs @ w) > 0) == (ys > 0.5)))
        rows2.append(
            {
                "solver": name, "steps": steps, "total matvecs": hvps,
                "val loss": float(logloss(Xv, yv, w)), "test loss": float(logloss(Xs, ys, w)),
                "test acc": acc, "wall s": wall,
                "decay range": f"{float(jnp.exp(h).min()):.2g}..{float(jnp.exp(h).max()):.2g}",
            }
        )
    w_base = newton(h0, Xt, yt)
    base = f"{float(logloss(Xv, yv, w_base)):.4f} / {float(logloss(Xs, ys, w_base)):.4f}"
    t2 = table(rows2, ["solver", "steps", "total matvecs", "val loss", "test loss", "test acc",
                       "decay range", "wall s"])
    print(f"\n2. Outer optimisation, Adam lr 0.05, {steps} steps, budget T={T} (val / test loss"
          f" at h0: {base})\n" + t2, flush=True)

    if not args.no_append:
        md = ["", "## Weight-decay bilevel check (benchmarks/weight_decay_bilevel.py)"
              + (" [quick]" if q else ""), ""]
        md += [f"- {x}" for x in header]
        md += ["", "### Hypergradient at h0 at equal HVP budgets", "", t1, "",
               f"### Outer optimisation ({steps} Adam steps, T={T}; val / test loss at h0:"
               f" {base})", "", t2]
        report = Path(args.report)
        new = not report.exists()
        report.parent.mkdir(parents=True, exist_ok=True)
        with open(report, "a") as fh:
            if new:
                fh.write("# Benchmarks\n")
            fh.write("\n".join(md) + "\n")
        print(f"\nappended to {report}")


if __name__ == "__main__":
    main()
