"""Scaling and accuracy of the low-rank linear-algebra core (issue 4).

Three tables, printed and appended to ``reports/benchmark-log.md``:

1. FITC log-likelihood and its gradient (8 hyperparameters of a rotated
   Matérn-5/2 kernel) vs N at fixed rank m, streamed over row blocks
   (``likelihoods.lowrank_loglik_streamed``, what ``fit`` uses) and with the
   (N, m) factor held: median times, log-log slope, and achieved GFLOP/s against
   the floor of 3 N m^2 flops and the measured dense matmul rate.
2. Accuracy vs rank at N = 5,000 on a rotated synthetic field: relative MLL
   error of DTC and FITC against the exact likelihood, predictive-mean RMSE
   against the exact GP, for uniform, k-means++ and rpcholesky landmarks.
3. Conjugate gradients with and without the randomized Nyström preconditioner
   on ``(K + s^2 I) x = y`` to 1e-8: iterations vs N, and time against a dense
   Cholesky solve.

Usage::

    python benchmarks/linalg_scaling.py            # full CPU run (minutes)
    python benchmarks/linalg_scaling.py --quick --no-append   # smoke size (seconds)
    python benchmarks/linalg_scaling.py --sizes 1e3,1e4,1e5,1e6 --rank 1024  # on a GPU

Set ``XLA_FLAGS`` before running (the Makefile's single-thread default is used
when unset, as in the test suite); the table records what was in effect.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from aniso_gp import datasets, kernels, likelihoods, models  # noqa: E402
from aniso_gp.linalg import dense, nystrom, solvers  # noqa: E402

REPORT = Path(__file__).resolve().parent.parent / "reports" / "benchmark-log.md"
BASE = "matern52"
LENGTHSCALES = (0.5, 0.25, 0.12)
AXIS_ANGLE = (0.3, -0.5, 0.8)
NOISE_SD = 0.1
ISSUE_SIZES = (1_000, 10_000, 100_000, 300_000)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def block(x):
    return jax.block_until_ready(x)


def median_time(fn, *args, repeats: int, budget_s: float = 30.0):
    """``(median wall time, calls, last result)`` of ``fn(*args)`` over up to ``repeats``
    calls (fewer past ``budget_s``)."""
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        out = block(fn(*args))
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times), len(times), out


def markdown_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def loglog_slope(ns, ts) -> float:
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": f"{cpu} x {os.cpu_count()} logical cores",
        "devices": ", ".join(str(d) for d in jax.devices()),
        "jax": jax.__version__,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "load average at start (1, 5, 15 min)": ", ".join(f"{x:.1f}" for x in load),
    }


def matmul_gflops(n: int, repeats: int) -> float:
    """Measured float64 dense matmul rate (GFLOP/s), the peer for achieved rates."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n)))
    b = jnp.asarray(rng.standard_normal((n, n)))
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    block(mm(a, b))
    t, _, _ = median_time(mm, a, b, repeats=repeats)
    return 2.0 * n**3 / t / 1e9


def kernel_params(theta):
    return {
        "lengthscales": jnp.exp(theta[:3]),
        "axis_angle": theta[3:6],
        "variance": jnp.exp(theta[6]),
    }


def true_theta() -> np.ndarray:
    return np.concatenate([np.log(LENGTHSCALES), AXIS_ANGLE, [0.0, 2.0 * np.log(NOISE_SD)]])


def kernel_on(variance):
    return lambda Z1, Z2: kernels.gram_transformed(Z1, Z2, variance, BASE)


# --------------------------------------------------------------------------- #
# 1. Low-rank likelihood + gradient vs N
# --------------------------------------------------------------------------- #
def fitc_objective(X, y, idx, block_size):
    def loglik(theta):
        p = kernel_params(theta)
        Z = kernels.transform(X, p)
        return likelihoods.lowrank_loglik_streamed(
            kernel_on(p["variance"]),
            Z,
            idx,
            y,
            jnp.exp(theta[7]),
            kdiag=p["variance"],
            block_size=block_size,
        )

    return loglik


def fitc_materialised(X, y, idx):
    """The same FITC log density with ``U`` (N, m) held and the Woodbury likelihood's
    hand-written tangent (``models.lowrank_parts`` + ``likelihoods.lowrank_loglik``)."""

    def loglik(theta):
        p = kernel_params(theta)
        A = kernels.transform_matrix(p)
        U, d = models.lowrank_parts(
            X @ A, X[idx] @ A, jnp.sqrt(p["variance"]), jnp.exp(0.5 * theta[7]), BASE, True
        )
        return likelihoods.lowrank_loglik(U, d, y)

    return loglik


def bench_scaling(sizes, m, block_size, repeats, rate, select_max_n):
    rows, ns, t_vg = [], [], []
    theta = jnp.asarray(true_theta())
    for n in sizes:
        rng = np.random.default_rng(n)
        X = jnp.asarray(rng.uniform(0.0, 1.0, size=(n, 3)))
        y = jnp.asarray(rng.standard_normal(n))
        mm = min(m, n)
        idx = jnp.asarray(np.sort(rng.choice(n, mm, replace=False)))
        f = fitc_objective(X, y, idx, min(block_size, n))
        t0 = time.perf_counter()
        value = jax.jit(f).lower(theta).compile()
        vg = jax.jit(jax.value_and_grad(f)).lower(theta).compile()
        held = jax.jit(jax.value_and_grad(fitc_materialised(X, y, idx))).lower(theta).compile()
        compile_s = time.perf_counter() - t0
        tv, rv, v_stream = median_time(value, theta, repeats=repeats)
        tg, rg, _ = median_time(vg, theta, repeats=repeats)
        th, _, (v_held, _) = median_time(held, theta, repeats=repeats)
        if abs(float(v_held) - float(v_stream)) > 1e-8 * abs(float(v_stream)):
            raise RuntimeError(f"streamed and held FITC disagree at N={n}: {v_stream} vs {v_held}")
        if n <= select_max_n:
            Z = kernels.transform(X, kernel_params(theta))
            t0 = time.perf_counter()
            nystrom.select_landmarks(Z, mm, "rpcholesky", kernel_fn=kernel_on(1.0))
            t_sel = f"{time.perf_counter() - t0:.2f}"
        else:
            t_sel = "skipped"
        gflops = 3.0 * n * mm**2 / tv / 1e9
        rows.append(
            [
                f"{n:,}",
                mm,
                min(block_size, n),
                f"{tv:.3f}",
                f"{tg:.3f}",
                f"{tg / tv:.1f}",
                f"{th:.3f}",
                f"{tg / th:.1f}",
                f"{gflops:.1f}",
                f"{100 * gflops / rate:.0f}%",
                f"{compile_s:.1f}",
                t_sel,
                f"{rv}/{rg}",
            ]
        )
        ns.append(n)
        t_vg.append(tg)
        print("  scaling", rows[-1], flush=True)
    big = [(n, t) for n, t in zip(ns, t_vg, strict=True) if n >= 10_000]
    slope_all = loglog_slope(ns, t_vg)
    slope_big = loglog_slope(*zip(*big, strict=True)) if len(big) >= 2 else float("nan")
    headers = [
        "N",
        "m",
        "block",
        "value s",
        "value+grad s",
        "grad/value",
        "value+grad s, U held",
        "streamed / held",
        "value GFLOP/s (3Nm^2)",
        "of matmul",
        "compile s",
        "rpcholesky select s",
        "repeats",
    ]
    notes = [
        f"log-log slope of value+grad time in N: {slope_all:.2f} over all sizes, "
        f"{slope_big:.2f} over N >= 10,000.",
        f"Dense float64 matmul rate measured in this run: {rate:.1f} GFLOP/s.",
        "Gradient with respect to all 8 hyperparameters (log l, axis-angle, log s^2_f, "
        "log s^2_n); uniform landmarks fixed before timing (the rpcholesky column is the "
        "one-off selection cost); compile time excluded from the medians; repeats stop "
        "early once 30 s are spent.",
        "'U held': the (N, m) factor materialised and the likelihood's hand-written "
        "tangent (models.lowrank_parts + likelihoods.lowrank_loglik), O(N m) memory; "
        "'streamed' recomputes row blocks under jax.checkpoint, O(B m) memory, and is "
        "what `fit` uses. Both agree to 1e-8 relative (checked in the run).",
    ]
    if tuple(sizes) != ISSUE_SIZES:
        notes.append(
            f"Sizes run: {', '.join(f'{n:,}' for n in sizes)} "
            f"(issue asks for {', '.join(f'{n:,}' for n in ISSUE_SIZES)})."
        )
    return markdown_table(headers, rows), notes


# --------------------------------------------------------------------------- #
# 2. Accuracy vs rank
# --------------------------------------------------------------------------- #
def bench_accuracy(n, n_test, ranks, seed=0):
    field = datasets.synthetic_field(
        n + n_test, LENGTHSCALES, AXIS_ANGLE, base=BASE, noise_sd=NOISE_SD, seed=seed
    )
    train, test = field.split(n_test / (n + n_test), seed=seed)
    theta = jnp.asarray(true_theta())
    p = kernel_params(theta)
    noise = NOISE_SD**2
    kfn = kernel_on(p["variance"])
    Z = kernels.transform(jnp.asarray(train.X), p)
    Zt = kernels.transform(jnp.asarray(test.X), p)
    y = jnp.asarray(train.y)
    C = kfn(Z, Z) + noise * jnp.eye(n)
    t0 = time.perf_counter()
    exact = float(likelihoods.exact_loglik(C, y))
    t_exact = time.perf_counter() - t0
    mean_exact, _ = likelihoods.exact_predict(
        C, y, kfn(Z, Zt), jnp.full(Zt.shape[0], p["variance"])
    )
    del C
    rmse_exact = float(jnp.sqrt(jnp.mean((mean_exact - test.y) ** 2)))
    rows = []
    for m in ranks:
        for method in ("uniform", "kmeans++", "rpcholesky"):
            t0 = time.perf_counter()
            idx = nystrom.select_landmarks(Z, m, method, seed=seed, kernel_fn=kfn)
            t_sel = time.perf_counter() - t0
            U = nystrom.nystrom_factor(kfn, Z, idx)
            dtc = float(likelihoods.dtc_loglik(U, y, noise))
            fitc = float(likelihoods.fitc_loglik(U, p["variance"], y, noise))
            L = nystrom.landmark_cholesky(kfn, Z[idx])
            U_t = nystrom.cross_factor(kfn, Zt, Z[idx], L)
            d_fitc = likelihoods.fitc_diagonal(U, p["variance"], noise)
            mean, _ = likelihoods.lowrank_predict(U, d_fitc, y, U_t, p["variance"])
            rmse = float(jnp.sqrt(jnp.mean((mean - mean_exact) ** 2)))
            rows.append(
                [
                    m,
                    method,
                    f"{abs(dtc - exact) / abs(exact):.2e}",
                    f"{abs(fitc - exact) / abs(exact):.2e}",
                    f"{rmse:.3e}",
                    f"{t_sel:.2f}",
                ]
            )
            print("  accuracy", rows[-1], flush=True)
    headers = [
        "m",
        "landmarks",
        "DTC rel. MLL error",
        "FITC rel. MLL error",
        "FITC pred. mean RMSE vs exact GP",
        "select s",
    ]
    notes = [
        f"N = {n:,} training + {n_test} test points of a synthetic {BASE} field, "
        f"l = {LENGTHSCALES}, a = {AXIS_ANGLE}, noise sd {NOISE_SD}, true hyperparameters; "
        f"landmark seed {seed}.",
        f"Exact log-likelihood {exact:.2f} ({t_exact:.1f} s dense Cholesky); exact GP "
        f"test RMSE against noisy y {rmse_exact:.3f} (noise sd {NOISE_SD}).",
    ]
    return markdown_table(headers, rows), notes


# --------------------------------------------------------------------------- #
# 3. PCG with and without the Nyström preconditioner
# --------------------------------------------------------------------------- #
def dense_kernel(Z, kfn, rows_per_block=2048):
    """``K(Z, Z)`` built in row blocks, so the pairwise temporaries stay small."""
    parts = [kfn(Z[i : i + rows_per_block], Z) for i in range(0, Z.shape[0], rows_per_block)]
    return jnp.concatenate(parts, axis=0)


def _iterations(info) -> str:
    mark = "" if bool(info.converged) else " (not converged)"
    return f"{int(info.iterations)}{mark}"


def pcg_case(n, rank, with_dense, with_cg, maxiter, repeats):
    """One row of table 3: CG (optionally), Nyström-PCG and (optionally) dense Cholesky at size
    ``n``. Each solver is compiled before it is timed, so no solve runs twice for warm-up."""
    p = kernel_params(jnp.asarray(true_theta()))
    noise = NOISE_SD**2
    rng = np.random.default_rng(n)
    Z = kernels.transform(jnp.asarray(rng.uniform(0.0, 1.0, size=(n, 3))), p)
    y = jnp.asarray(rng.standard_normal(n))
    K = block(dense_kernel(Z, kernel_on(p["variance"])))
    k = min(rank, n)
    key = jax.random.PRNGKey(0)

    def run_cg(K, y):
        return solvers.cg(lambda v: K @ v + noise * v, y, tol=1e-8, maxiter=maxiter)

    def run_pcg(K, y, key):
        U, lam = nystrom.randomized_nystrom(lambda V: K @ V, n, k, key, batched=True)
        P = solvers.nystrom_preconditioner(U, lam, noise)
        return solvers.pcg(lambda v: K @ v + noise * v, y, P, tol=1e-8, maxiter=maxiter)

    def run_dense(K, y):
        L, _ = dense.cholesky(K + noise * jnp.eye(n, dtype=K.dtype))
        return jax.scipy.linalg.cho_solve((L, True), y)

    def timed(fn, *args):
        compiled = jax.jit(fn).lower(*args).compile()
        t, _, out = median_time(compiled, *args, repeats=repeats)
        return out, t

    cg_cols = ["not run", "-"]
    if with_cg:
        (_, info_cg), t_cg = timed(run_cg, K, y)
        cg_cols = [_iterations(info_cg), f"{t_cg:.2f}"]
    (_, info_pcg), t_pcg = timed(run_pcg, K, y, key)
    dense_cols = ["-", "-", "-"]
    if with_dense:
        x, t_dense = timed(run_dense, K, y)
        rel = float(jnp.linalg.norm(K @ x + noise * x - y) / jnp.linalg.norm(y))
        dense_cols = [f"{t_dense:.2f}", f"{rel:.1e}", f"{t_dense / t_pcg:.1f}x"]
    return [
        f"{n:,}",
        k,
        *cg_cols,
        _iterations(info_pcg),
        f"{float(info_pcg.residual_norm):.1e}",
        f"{t_pcg:.2f}",
        *dense_cols,
    ]


def bench_pcg(sizes, rank, dense_sizes, cg_max_n, maxiter, repeats,
              issue_dense=(5000, 20000)):
    rows = []
    for n in sizes:
        rows.append(pcg_case(n, rank, n in dense_sizes, n <= cg_max_n, maxiter, repeats))
        print("  pcg", rows[-1], flush=True)
    headers = [
        "N",
        "rank",
        "CG its",
        "CG s",
        "Nystrom-PCG its",
        "PCG rel. residual",
        "PCG s (sketch + solve)",
        "dense Cholesky s",
        "dense rel. residual",
        "dense / PCG",
    ]
    notes = [
        f"(K + s^2 I) x = y, {BASE} kernel with the table-2 hyperparameters on uniform "
        f"points in the unit cube, s^2 = {NOISE_SD**2:g}, random y, tol 1e-8 relative, "
        f"maxiter {maxiter}; K is materialised (its construction is not timed) and "
        "the PCG time includes the randomized Nyström sketch (rank matvecs + QR + SVD).",
    ]
    if any(n > cg_max_n for n in sizes):
        notes.append(
            f"Unpreconditioned CG not run above N = {cg_max_n:,} (--cg-max-n): each of its "
            "~2,000 iterations streams the dense N x N matrix from memory."
        )
    ran_dense = sorted(n for n in sizes if n in dense_sizes)
    if tuple(ran_dense) != tuple(issue_dense):
        notes.append(
            f"Dense comparison run at N = {', '.join(f'{n:,}' for n in ran_dense) or 'none'} "
            f"(issue asks for {', '.join(f'{n:,}' for n in issue_dense)})."
        )
    return markdown_table(headers, rows), notes


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #
def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds): smoke test")
    ap.add_argument("--sizes", type=parse_sizes, help="table 1 sizes, e.g. 1e3,1e4,1e5,3e5")
    ap.add_argument("--max-n", type=int, help="drop every size above this, in all tables")
    ap.add_argument("--no-append", action="store_true", help="print only; leave the report")
    ap.add_argument("--rank", type=int, help="table 1 rank m (default 512)")
    ap.add_argument("--ranks", type=parse_sizes, help="table 2 ranks (default 64..1024)")
    ap.add_argument("--pcg-sizes", type=parse_sizes, help="table 3 sizes")
    ap.add_argument("--dense-sizes", type=parse_sizes, help="table 3 sizes with dense solve")
    ap.add_argument("--pcg-rank", type=int, help="table 3 preconditioner rank (default 512)")
    ap.add_argument("--cg-max-n", type=int,
                    help="table 3: largest N for plain CG (default: all on GPU, 5000 on CPU)")
    ap.add_argument("--block-size", type=int, help="rows per streamed block")
    ap.add_argument("--repeats", type=int, help="timed repeats, median (default 3; quick 1)")
    ap.add_argument("--skip", default="", help="comma list of tables to skip: 1,2,3")
    return ap.parse_args(argv)


def settings(args) -> dict:
    if args.quick:
        cfg = dict(
            sizes=[300],
            rank=16,
            acc_n=200,
            acc_test=20,
            ranks=[16],
            pcg_sizes=[200],
            dense_sizes=[200],
            cg_max_n=200,
            pcg_rank=32,
            block=128,
            matmul_n=256,
            maxiter=2000,
            select_max_n=0,
            repeats=1,
        )
    else:
        gpu = on_gpu()
        cfg = dict(
            sizes=list(ISSUE_SIZES),
            rank=512,
            acc_n=5000,
            acc_test=500,
            ranks=[64, 128, 256, 512, 1024],
            pcg_sizes=[1000, 2000, 5000, 20000],
            dense_sizes=[5000, 20000],
            cg_max_n=10**9 if gpu else 5000,
            pcg_rank=512,
            block=16384 if gpu else 2048,
            matmul_n=8192 if gpu else 2048,
            maxiter=5000,
            select_max_n=300_000,
            repeats=3,
        )
    for key, arg in (
        ("sizes", args.sizes),
        ("rank", args.rank),
        ("ranks", args.ranks),
        ("pcg_sizes", args.pcg_sizes),
        ("dense_sizes", args.dense_sizes),
        ("pcg_rank", args.pcg_rank),
        ("cg_max_n", args.cg_max_n),
        ("block", args.block_size),
        ("repeats", args.repeats),
    ):
        if arg is not None:
            cfg[key] = arg
    if args.max_n is not None:
        for key in ("sizes", "pcg_sizes", "dense_sizes"):
            cfg[key] = [n for n in cfg[key] if n <= args.max_n]
        cfg["acc_n"] = min(cfg["acc_n"], args.max_n)
        cfg["ranks"] = [m for m in cfg["ranks"] if m <= cfg["acc_n"]]
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = settings(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t_start = time.perf_counter()
    info = machine_info()
    rate = matmul_gflops(cfg["matmul_n"], cfg["repeats"])
    mode = "quick" if args.quick else "full"
    out = [
        f"## linalg_scaling ({mode}, {jax.default_backend().upper()}, {info['date']})",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- dense float64 matmul ({cfg['matmul_n']}^3): {rate:.1f} GFLOP/s",
        f"- command: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`",
        "",
    ]
    print("\n".join(out), flush=True)
    sections = [
        (
            "1",
            f"### 1. FITC log-likelihood + gradient vs N (m = {cfg['rank']}, streamed and held)",
            lambda: bench_scaling(
                cfg["sizes"],
                cfg["rank"],
                cfg["block"],
                cfg["repeats"],
                rate,
                cfg["select_max_n"],
            ),
        ),
        (
            "2",
            f"### 2. Accuracy vs rank (N = {cfg['acc_n']:,})",
            lambda: bench_accuracy(cfg["acc_n"], cfg["acc_test"], cfg["ranks"]),
        ),
        (
            "3",
            f"### 3. CG vs Nyström-PCG vs dense Cholesky (rank {cfg['pcg_rank']})",
            lambda: bench_pcg(
                cfg["pcg_sizes"],
                cfg["pcg_rank"],
                set(cfg["dense_sizes"]),
                cfg["cg_max_n"],
                cfg["maxiter"],
                cfg["repeats"],
            ),
        ),
    ]
    for key, title, run in sections:
        if key in skip:
            continue
        print(title, flush=True)
        t0 = time.perf_counter()
        table, notes = run()
        block_text = [title, "", table, "", *[f"- {n}" for n in notes]]
        block_text.append(f"- section wall time {time.perf_counter() - t0:.0f} s")
        print("\n".join(block_text) + "\n", flush=True)
        out += block_text + [""]
    out.append(f"Total wall time {time.perf_counter() - t_start:.0f} s.\n")
    print(out[-1])
    if not args.no_append:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        with open(REPORT, "a") as f:
            f.write("\n".join(out) + "\n")
        print(f"appended to {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
