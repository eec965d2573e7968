"""Tests of aniso_gp.hypergrad: iHVP solvers, implicit hypergradients, GP applications.

Oracles: dense ``numpy.linalg.solve`` for every iHVP; central finite differences
of the outer loss through an exactly (densely) solved inner problem for the
hypergradients; the Laplace log marginal with a tightly converged Newton mode
for the Laplace-GP gradients. Sizes are small (n <= 200).
"""

import warnings
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from aniso_gp import hypergrad as hg
from aniso_gp import kernels
from aniso_gp.datasets import synthetic_field


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _central_fd(f, x, eps=1e-5):
    x = jnp.asarray(x)
    steps = [(float(f(x.at[i].add(eps))), float(f(x.at[i].add(-eps)))) for i in range(x.size)]
    return np.array([(up - down) / (2 * eps) for up, down in steps])


# --------------------------------------------------------------------------- #
# iHVP solvers against a dense solve
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def spd_system():
    rng = np.random.default_rng(0)
    n = 50
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    # Decaying spectrum (like a kernel matrix) plus a floor (the noise variance).
    eig = 10.0 * np.exp(-np.arange(n) / 4.0) + 0.05
    H = jnp.asarray((Q * eig) @ Q.T)
    b = jnp.asarray(rng.standard_normal(n))
    return H, b, np.linalg.solve(np.asarray(H), np.asarray(b)), float(eig.max())


@pytest.mark.parametrize(
    "solver, tol",
    [
        (hg.Exact(), 1e-12),
        (hg.CG(500, 1e-12), 1e-9),
        (hg.NystromPCG(20, 200, 1e-12, sketch="coordinates"), 1e-9),
        (hg.NystromRichardson(20, tol=1e-12), 1e-9),
        (hg.Nystrom(50, 1e-9), 1e-6),
        (hg.Nystrom(50, 1e-9, sketch="gaussian"), 1e-6),
        ("neumann", 1e-8),
        ("auto", 1e-12),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "name", None),
)
def test_ihvp_matches_dense_solve(spd_system, solver, tol):
    H, b, ref, lmax = spd_system
    if solver == "neumann":
        # Contraction 1 - lr lambda_min = 1 - 0.05/10: 8,000 terms reach ~1e-17.
        solver = hg.Neumann(8000, 1.0 / lmax)
    x, info, _ = hg.solve_ihvp(solver, lambda v: H @ v, b)
    assert _rel(x, ref) < tol
    assert float(info.residual_norm) < 100 * tol
    # Matvec accounting: sketch + iterations + one HVP for the reported residual.
    it = int(info.iterations)
    expected = {
        "exact": 50,  # H formed from 50 HVPs
        "cg": it + 1,
        "neumann": 8001,
        "nystrom": 51,
        "nystrom_pcg": 20 + it + 1,
        "nystrom_richardson": 20 + 21 + it + 1,  # sketch, power iterations for lr
    }[hg.resolve_solver(solver, 50).name]
    assert int(info.matvecs) == expected


def test_exact_with_given_matrix_spends_no_hvps(spd_system):
    H, b, ref, _ = spd_system
    x, info, _ = hg.solve_ihvp(hg.Exact(), lambda v: H @ v, b, matrix=H)
    assert int(info.matvecs) == 0 and _rel(x, ref) < 1e-12


def test_nystrom_full_rank_tends_to_exact(spd_system):
    """k = n, rho -> 0: the damped Nystrom iHVP tends to H^{-1} b (error ~ rho / lambda_min)."""
    H, b, ref, _ = spd_system
    errs = [
        _rel(hg.solve_ihvp(hg.Nystrom(50, rho, sketch=sk), lambda v: H @ v, b)[0], ref)
        for sk in ("coordinates", "gaussian")
        for rho in (1e-3, 1e-6, 1e-10)
    ]
    for e in (errs[:3], errs[3:]):
        assert e[0] > e[1] > e[2]
        assert e[2] < 1e-7
        assert e[0] < 0.05  # rho / lambda_min = 1e-3 / 0.05


def test_nystrom_small_rho_is_stable_at_partial_rank(spd_system):
    """The eigen-form stays finite and equals the dense (H_k + rho I)^{-1} b for tiny rho."""
    H, b, _, _ = spd_system
    mv = lambda v: H @ v
    U, lam = hg.hessian_nystrom(mv, 50, 20, key=jax.random.PRNGKey(3))
    rho = 1e-12
    Hk = np.asarray(U) @ np.diag(np.asarray(lam)) @ np.asarray(U).T
    x = hg.solve_ihvp(hg.Nystrom(20, rho), mv, b, key=jax.random.PRNGKey(3)).value
    assert np.all(np.isfinite(np.asarray(x)))
    # (H_k + rho I) has condition ~1e13 and |x| ~ |b| / rho, so judge by the
    # normwise backward error |r| / (|A| |x| + |b|): round-off level for the eigen-form.
    A = Hk + rho * np.eye(50)
    x = np.asarray(x)
    residual = A @ x - np.asarray(b)
    eta = np.linalg.norm(residual) / (np.linalg.norm(A, 2) * np.linalg.norm(x) + np.linalg.norm(b))
    assert eta < 1e-14


def test_nystrom_known_shift_is_exact_at_full_rank(spd_system):
    H, b, ref, _ = spd_system
    mv = lambda v: H @ v
    # H = A + 0.05 I: with the shift known and k = n the result is (H + rho I)^{-1} b.
    x = hg.solve_ihvp(hg.Nystrom(50, 1e-12), mv, b, shift=0.05).value
    assert _rel(x, ref) < 1e-8


# --------------------------------------------------------------------------- #
# Generic implicit differentiation
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def ridge():
    rng = np.random.default_rng(1)
    d = 12
    X = jnp.asarray(rng.standard_normal((60, d)))
    Xv = jnp.asarray(rng.standard_normal((30, d)))
    w_true = rng.standard_normal(d)
    y = X @ w_true + 0.3 * jnp.asarray(rng.standard_normal(60))
    yv = Xv @ w_true + 0.3 * jnp.asarray(rng.standard_normal(30))

    def inner(w, h):
        # Pytrees on both sides: w = {"coef", "bias"}, h = {"log_decay" (d,), "log_bias_decay"}.
        r = X @ w["coef"] + w["bias"] - y
        return 0.5 * jnp.sum(r**2) + 0.5 * jnp.sum(jnp.exp(h["log_decay"]) * w["coef"] ** 2) + (
            0.5 * jnp.exp(h["log_bias_decay"]) * w["bias"] ** 2
        )

    def outer(w, h):
        return 0.5 * jnp.mean((Xv @ w["coef"] + w["bias"] - yv) ** 2) + 1e-3 * jnp.sum(
            h["log_decay"] ** 2
        )

    def solve(h):
        # Exact inner minimiser: normal equations of the augmented design.
        A = jnp.concatenate([X, jnp.ones((60, 1))], axis=1)
        D = jnp.concatenate([jnp.exp(h["log_decay"]), jnp.exp(h["log_bias_decay"])[None]])
        theta = jnp.linalg.solve(A.T @ A + jnp.diag(D), A.T @ y)
        return {"coef": theta[:d], "bias": theta[d]}

    h = {"log_decay": jnp.linspace(-1.0, 2.0, d), "log_bias_decay": jnp.asarray(0.5)}
    flat, unravel = ravel_pytree(h)
    fd = _central_fd(jax.jit(lambda x: outer(solve(unravel(x)), unravel(x))), flat)
    return inner, outer, solve, h, fd


@pytest.mark.parametrize(
    "solver",
    [hg.Exact(), hg.CG(200, 1e-13), hg.NystromPCG(6, 200, 1e-13), hg.SpectralReuse(6, tol=1e-13)],
    ids=lambda s: s.name,
)
def test_implicit_grad_matches_finite_differences(ridge, solver):
    inner, outer, solve, h, fd = ridge
    g, info, _ = hg.implicit_grad(inner, outer, solve(h), h, solver)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(h)
    assert _rel(ravel_pytree(g)[0], fd) < 1e-5
    assert float(info.residual_norm) < 1e-10


def test_implicit_grad_nystrom_is_biased_and_says_so(ridge):
    inner, outer, solve, h, fd = ridge
    # rank 5 of 13 with rho near the spectral tail (eigenvalues 19..133): biased but
    # informative, and the reported residual says so.
    g, info, _ = hg.implicit_grad(inner, outer, solve(h), h, hg.Nystrom(5, 30.0))
    assert _rel(ravel_pytree(g)[0], fd) < 0.5
    assert float(info.residual_norm) > 0.1


def test_implicit_solution_under_jit_grad(ridge):
    inner, outer, solve, h, fd = ridge
    sol = hg.implicit_solution(
        lambda hh, scale: solve(hh), lambda w, hh, scale: scale * inner(w, hh), hg.CG(200, 1e-13)
    )

    def objective(hh):
        return outer(sol(hh, 2.0), hh)

    g = jax.jit(jax.grad(objective))(h)
    assert _rel(ravel_pytree(g)[0], fd) < 1e-5
    # The info sink carries the iHVP record out of the backward pass.
    _, sink_grad = jax.jit(
        jax.grad(lambda hh, s: outer(sol.with_sink(hh, s, 2.0), hh), argnums=(0, 1))
    )(h, sol.sink())
    info = hg.ImplicitSolution.info(sink_grad)
    assert int(info.matvecs) == int(info.iterations) + 1 > 1
    assert float(info.residual_norm) < 1e-12


def test_spectral_reuse_saves_sketches_and_refreshes_on_drift():
    rng = np.random.default_rng(2)
    n = 80
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    Q1 = np.linalg.qr(rng.standard_normal((n, n)))[0]
    spectrum = 50.0 * np.exp(-np.arange(n) / 5.0)
    A0, A1 = (jnp.asarray((V * spectrum) @ V.T) for V in (Q, Q1))
    b = jnp.asarray(rng.standard_normal(n))
    reuse = hg.SpectralReuse(25, tau=0.3, tol=1e-10)

    @jax.jit
    def step(state, t, key):
        # A kernel-like operator drifting from A0 towards A1 (another eigenbasis),
        # plus a known shift 0.01.
        H = (1.0 - t) * A0 + t * A1 + 0.01 * jnp.eye(n)
        x, info, state = hg.solve_ihvp(reuse, lambda v: H @ v, b, shift=0.01, state=state, key=key)
        return x, info, state, jnp.linalg.solve(H, b)

    state = reuse.init(n)
    for i in range(6):
        x, info, state, ref = step(state, 1e-3 * i, jax.random.PRNGKey(i))
        assert _rel(x, ref) < 1e-8
    assert int(state.refreshes) == 1  # only the first sketch
    assert int(state.matvecs_saved) == 5 * (25 - 8)
    assert float(state.staleness) < 0.3
    x, info, state, ref = step(state, 0.5, jax.random.PRNGKey(9))  # a large jump
    assert int(state.refreshes) == 2
    assert _rel(x, ref) < 1e-8


def test_amortized_eigenbasis_tracks_a_rotating_eigenbasis():
    """Each step moves Q towards the leading eigenvectors (subspace angles against
    eigh shrink), solves stay exact, and a step costs steps * k HVPs."""
    from scipy.linalg import subspace_angles

    rng = np.random.default_rng(3)
    n, k = 80, 12
    V0 = np.linalg.qr(rng.standard_normal((n, n)))[0]
    skew = rng.standard_normal((n, n))
    skew = 0.01 * (skew - skew.T) / np.sqrt(n)
    spectrum = 50.0 * np.exp(-np.arange(n) / 3.0)
    b = jnp.asarray(rng.standard_normal(n))
    solver = hg.AmortizedEigenbasis(k, steps=2, tol=1e-10)

    @jax.jit
    def step(state, H):
        return hg.solve_ihvp(solver, lambda v: H @ v, b, shift=0.01, state=state)

    state, angles, costs = None, [], []
    R = np.eye(n)
    for _ in range(12):
        R = R @ (np.eye(n) + skew)  # a slowly rotating operator, as along an optimisation
        V = np.linalg.qr(R @ V0)[0]
        H = (V * spectrum) @ V.T + 0.01 * np.eye(n)
        x, info, state = step(state, jnp.asarray(H))
        assert _rel(x, np.linalg.solve(H, np.asarray(b))) < 1e-8
        angles.append(np.degrees(subspace_angles(np.asarray(state.basis[:, :6]), V[:, :6]).max()))
        costs.append(int(info.matvecs) - int(info.iterations) - 1)
    assert costs[0] == k and all(c == 2 * k for c in costs[1:])
    assert int(state.refreshes) == 1  # only the first sketch
    assert angles[-1] < 1.0 < angles[0]  # the basis converged and follows the rotation


# --------------------------------------------------------------------------- #
# GP validation-loss hypergradients
# --------------------------------------------------------------------------- #
def _numpy_validation_loss(x, data, objective):
    """Validation loss through a dense NumPy/SciPy solve: the oracle for GP hypergradients."""
    from scipy.spatial.transform import Rotation

    Xt, yt, Xv, yv = (np.asarray(a) for a in data)
    a, log_l, log_noise, log_signal = x[:3], x[3:6], x[6], x[7]  # ravel_pytree order
    A = Rotation.from_rotvec(a).as_matrix() / np.exp(log_l)[None, :]
    Zt, Zv = Xt @ A, Xv @ A
    sf2, s2 = np.exp(2 * log_signal), np.exp(2 * log_noise)

    def gram(Z1, Z2):
        return sf2 * np.exp(-0.5 * ((Z1[:, None, :] - Z2[None, :, :]) ** 2).sum(-1))

    H = gram(Zt, Zt) + s2 * np.eye(len(yt))
    Kvt = gram(Zv, Zt)
    mu = Kvt @ np.linalg.solve(H, yt)
    if objective == "mse":
        return np.mean((mu - yv) ** 2)
    var = sf2 + s2 - np.sum(Kvt * np.linalg.solve(H, Kvt.T).T, axis=1)
    return 0.5 * np.mean(np.log(2 * np.pi * var) + (yv - mu) ** 2 / var)


@pytest.fixture(scope="module")
def gp_problem():
    fld = synthetic_field(100, [0.5, 0.3, 0.15], [0.3, -0.2, 0.5], noise_sd=0.1, seed=1)
    tr, va = fld.split(0.25, seed=0)
    data = tuple(jnp.asarray(a) for a in (tr.X, tr.y, va.X, va.y))
    theta = {
        "log_lengthscales": jnp.log(jnp.array([0.4, 0.3, 0.2])),
        "axis_angle": jnp.array([0.2, -0.1, 0.4]),
        "log_signal": jnp.asarray(0.1),
        "log_noise": jnp.asarray(np.log(0.15)),
    }
    flat = np.array(ravel_pytree(theta)[0])
    fd, exact = {}, {}
    for o in ("mse", "nlpd"):
        fd[o] = _central_fd(lambda x, o=o: _numpy_validation_loss(np.array(x), data, o), flat)
        exact[o] = _numpy_validation_loss(flat, data, o)
    return data, theta, fd, exact


@pytest.mark.parametrize(
    "solver, objective",
    [(hg.Exact(), "nlpd"), (hg.SpectralReuse(30, tol=1e-12), "mse"),
     (hg.NystromPCG(20, tol=1e-12, sketch="kernel"), "nlpd")],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_gp_hypergradient_matches_finite_differences(gp_problem, solver, objective):
    data, theta, fd, exact = gp_problem
    loss, grad, metrics = hg.validation_hypergradient(
        theta, *data, solver=solver, objective=objective
    )
    assert float(loss) == pytest.approx(exact[objective], rel=1e-10)
    assert _rel(ravel_pytree(grad)[0], fd[objective]) < 1e-5
    assert metrics["residual"] < 1e-10
    if isinstance(solver, hg.NystromPCG):  # the kernel sketch spends no HVPs
        assert int(metrics["precond_matvecs"]) == 0


def test_kernel_nystrom_is_the_rpcholesky_factor_in_eigen_form():
    from aniso_gp.linalg import nystrom

    rng = np.random.default_rng(5)
    X = jnp.asarray(rng.uniform(size=(120, 3)))
    params = {"lengthscales": jnp.array([0.4, 0.2, 0.3]), "axis_angle": jnp.array([0.3, 0.1, -0.2]),
              "variance": 1.7}
    key = jax.random.PRNGKey(3)
    U, lam = hg.kernel_nystrom(X, params, "matern52", 25, key)
    A = kernels.transform_matrix(params)
    F, _ = nystrom.rpcholesky(X @ A, 25, key, lambda Z1, Z2: kernels.gram_transformed(
        Z1, Z2, 1.7, "matern52"))
    np.testing.assert_allclose(U.T @ U, np.eye(25), atol=1e-10)
    np.testing.assert_allclose((U * lam) @ U.T, F @ F.T, atol=1e-10)
    # As a preconditioner it solves a kernel system to tolerance without sketch HVPs
    # (here 24 HVPs against CG's 115).
    params = dict(params, lengthscales=jnp.array([0.8, 0.5, 0.6]))
    H = kernels.gram(X, X, params, "rbf") + 0.01 * jnp.eye(120)
    b = jnp.asarray(rng.standard_normal(120))
    u, info, _ = hg.solve_ihvp(hg.NystromPCG(25, tol=1e-12, sketch="kernel"), lambda v: H @ v, b,
                            shift=0.01, factor=hg.kernel_nystrom(X, params, "rbf", 25, key))
    np.testing.assert_allclose(u, np.linalg.solve(H, b), rtol=1e-8, atol=1e-10)
    cg = hg.solve_ihvp(hg.CG(1000, 1e-12), lambda v: H @ v, b).info
    assert int(info.matvecs) < 0.5 * int(cg.matvecs)


def test_kernel_apply_blocked_matches_dense():
    rng = np.random.default_rng(4)
    X1, X2 = jnp.asarray(rng.uniform(size=(37, 3))), jnp.asarray(rng.uniform(size=(29, 3)))
    params = {"lengthscales": jnp.array([0.3, 0.2, 0.5]), "axis_angle": jnp.array([0.1, 0.2, 0.3])}
    V = jnp.asarray(rng.standard_normal((29, 2)))
    dense = kernels.gram(X1, X2, params, "matern32") @ V
    blocked = hg.kernel_apply(X1, X2, params, "matern32", V, block=8)
    np.testing.assert_allclose(blocked, dense, rtol=1e-12, atol=1e-12)


def test_optimize_hyperparameters_reduces_validation_loss(gp_problem):
    # The data shapes and solver of the finite-difference test above: the compiled
    # step is shared.
    (Xt, yt, Xv, yv), *_ = gp_problem
    params, hist = hg.optimize_hyperparameters(
        Xt, yt, Xv, yv, solver=hg.SpectralReuse(30, tol=1e-12), objective="mse", steps=10
    )
    assert len(hist) == 10
    for col in ("val_loss", "total_matvecs", "residual", "refreshed", "staleness", "grad_norm"):
        assert col in hist.columns
    assert params["val_loss"] < hist["val_loss"].iloc[0]
    assert hist["residual"].max() < 1e-10
    assert hist["refreshed"].iloc[0] == 1 and hist["refreshed"].sum() < 10
    assert params["lengthscales"].shape == (3,) and params["axis_angle"].shape == (3,)
    assert params["noise_variance"] > 0 and params["variance"] > 0


def test_gp_params_ard_has_no_rotation():
    theta = {"log_lengthscales": jnp.zeros(3), "log_signal": 0.0, "log_noise": np.log(0.1)}
    params, s2 = hg.gp_params(theta, "ard")
    assert set(params) == {"lengthscales", "variance"}
    assert float(s2) == pytest.approx(0.01)


# --------------------------------------------------------------------------- #
# Laplace GP
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("likelihood", ["poisson", "student_t"])
def test_laplace_gradient_matches_finite_differences(likelihood):
    rng = np.random.default_rng(5)
    X = rng.uniform(size=(25, 3))
    f = np.sin(3 * X[:, 0]) + 0.5 * X[:, 1]
    if likelihood == "poisson":
        y, lik = rng.poisson(np.exp(f)).astype(float), {}
    else:
        # t(3) noise: outliers make the likelihood non-log-concave there (W < 0).
        y = f + 0.2 * rng.standard_t(3, 25)
        lik = {"df": jnp.asarray(4.0), "scale": jnp.asarray(0.3)}
    theta = {
        "kernel": {
            "lengthscales": jnp.array([0.5, 0.4, 0.3]),
            "axis_angle": jnp.array([0.1, 0.2, -0.3]),
            "variance": jnp.asarray(1.2),
        },
        "mean": jnp.asarray(0.3),
        "likelihood": lik,
    }
    solver = hg.Exact() if likelihood == "poisson" else hg.CG(200, 1e-12)
    flat, unravel = ravel_pytree(theta)

    def value_and_grad(x):  # one compiled function serves the finite differences too
        return hg.laplace_value_and_grad(unravel(x), X, y, likelihood, "matern52", solver)

    fd = _central_fd(lambda x: value_and_grad(x)[0], flat)
    v, g, info = value_and_grad(flat)
    assert _rel(ravel_pytree(g)[0], fd) < 1e-5
    assert float(info.residual_norm) < 1e-10 and int(info.matvecs) >= 25
    if likelihood == "student_t":
        mode = hg.laplace_mode(unravel(flat), X, y, likelihood, "matern52")
        assert bool(mode.converged) and int(mode.iterations) < 20
        assert float(jnp.min(mode.W)) < 0  # the non-log-concave case is exercised


# --------------------------------------------------------------------------- #
# Solver values: init / compute, Auto, the route through the tuning layers
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("solver", [hg.Exact(), hg.CG(500, 1e-12), hg.NystromPCG(20, tol=1e-12),
                                    hg.NystromRichardson(20, tol=1e-12),
                                    hg.SpectralReuse(20, tol=1e-12), hg.Auto()],
                         ids=lambda s: s.name)
def test_one_prepared_state_serves_several_right_hand_sides(spd_system, solver):
    H, _, _, _ = spd_system
    B = np.random.default_rng(7).standard_normal((50, 3))
    state = solver.init(hg.Operator(lambda v: H @ v, 50, 0.05))
    X = np.stack([np.asarray(solver.compute(state, B[:, j])[0]) for j in range(3)], axis=1)
    np.testing.assert_allclose(X, np.linalg.solve(np.asarray(H), B), rtol=1e-8, atol=1e-10)
    # the set-up cost is paid once: a sketch of rank 20, H formed from 50 HVPs, or nothing
    expected = {"exact": 50, "cg": 0, "nystrom_pcg": 20, "spectral_reuse": 20, "auto": 50,
                "nystrom_richardson": 20 + 21}
    assert int(state.setup_matvecs) == expected[solver.name]
    solution = hg.solve_ihvp(solver, lambda v: H @ v, B[:, 0], shift=0.05)
    assert isinstance(solution, hg.IHVPSolution)
    np.testing.assert_allclose(solution.value, X[:, 0], rtol=1e-8, atol=1e-10)
    assert (solution.state is None) == (solver.name != "spectral_reuse")


def test_nystrom_richardson_needs_far_fewer_steps_than_plain_neumann():
    # A kernel-like spectrum (lam_1 / mu = 2,000): plain Richardson (the Neumann series
    # with a stopping rule) against the Nystrom-preconditioned one, same tolerance.
    from aniso_gp.linalg import solvers

    rng = np.random.default_rng(4)
    n = 120
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    H = jnp.asarray((Q * (100.0 * np.exp(-np.arange(n) / 3.0) + 0.05)) @ Q.T)
    b = jnp.asarray(rng.standard_normal(n))
    ref = np.linalg.solve(np.asarray(H), np.asarray(b))
    x, info, _ = hg.solve_ihvp(hg.NystromRichardson(30, tol=1e-10), lambda v: H @ v, b,
                               shift=0.05)
    assert _rel(x, ref) < 1e-8 and float(info.residual_norm) <= 1e-10
    lam = solvers.largest_eigenvalue(lambda v: H @ v, n, jax.random.PRNGKey(0), iterations=200)
    np.testing.assert_allclose(float(lam), float(np.linalg.eigvalsh(np.asarray(H))[-1]),
                               rtol=1e-6)
    _, plain = solvers.richardson(lambda v: H @ v, b, lr=1.0 / (1.1 * float(lam)), tol=1e-10,
                                  maxiter=100_000)
    assert bool(plain.converged)
    assert int(info.matvecs) < int(plain.iterations) / 5, (int(info.matvecs), int(plain.iterations))
    # a step size too large diverges visibly instead of returning garbage as converged
    _, bad = solvers.richardson(lambda v: H @ v, b, lr=3.0 / float(lam), tol=1e-10, maxiter=500)
    assert not bool(bad.converged) and float(bad.residual_norm) > 1.0


def test_auto_picks_by_size_and_structure_and_warns_above_its_tolerance():
    auto = hg.Auto()
    assert hg.as_solver("auto") == auto and hg.resolve_solver("auto", 50) == hg.Exact()
    limit = hg.AUTO_DENSE_MAX["cpu"]
    assert isinstance(auto.pick(limit + 1), hg.NystromPCG)
    assert isinstance(auto.pick(50, matrix_free=True), hg.NystromPCG)
    # cond(H) = 1e13: a backward-stable Cholesky leaves a relative residual ~1e-6
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    H = jnp.asarray((Q * np.geomspace(1.0, 1e-13, 40)) @ Q.T)
    b = jnp.asarray(rng.standard_normal(40))
    with pytest.warns(RuntimeWarning, match=r"solver='auto' picked Exact\(\).*above the tolerance"):
        out = hg.solve_ihvp("auto", lambda v: H @ v, b, matrix=H)
    assert float(out.info.residual_norm) > auto.tol
    # under jit too (the check is a host callback)
    step = jax.jit(lambda b: hg.solve_ihvp(hg.Auto(tol=1e-12), lambda v: H @ v, b).value)
    with pytest.warns(RuntimeWarning, match="above the tolerance"):
        jax.block_until_ready(step(b))
    well = jnp.asarray((Q * np.linspace(1.0, 2.0, 40)) @ Q.T)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hg.solve_ihvp("auto", lambda v: well @ v, b)


class _CountingCG(hg.CG):
    """A CG that counts how often it is asked to prepare an operator."""

    calls: ClassVar[list] = []

    def init(self, operator, *, key=None, carry=None):
        _CountingCG.calls.append(operator.n)
        return super().init(operator, key=key, carry=carry)


def test_a_solver_travels_down_the_tuning_layers_once(gp_problem):
    data, theta, fd, _ = gp_problem
    _CountingCG.calls.clear()
    loss, grad, metrics = hg.validation_hypergradient(theta, *data, solver=_CountingCG(2000, 1e-12),
                                                      objective="mse")
    # one operator per outer step: one init, whose state serves the weight solve and the iHVP
    assert _CountingCG.calls == [data[0].shape[0]]
    assert metrics["precond_matvecs"] == 0 and metrics["residual"] < 1e-10
    assert _rel(ravel_pytree(grad)[0], fd["mse"]) < 1e-5


# --------------------------------------------------------------------------- #
# Clear errors
# --------------------------------------------------------------------------- #
def test_errors_name_the_problem(spd_system, ridge):
    H, b, _, _ = spd_system
    mv = lambda v: H @ v
    with pytest.raises(ValueError, match="rank.*exceeds the dimension"):
        hg.solve_ihvp(hg.Nystrom(51, 0.1), mv, b)
    with pytest.raises(ValueError, match="rank.*exceeds the dimension"):
        hg.solve_ihvp(hg.NystromPCG(60), mv, b)
    with pytest.raises(ValueError, match="`rho` must be finite and strictly positive"):
        hg.Nystrom(5, 0.0)
    with pytest.raises(ValueError, match="`rho`"):
        hg.Nystrom(5, -1e-3)
    with pytest.raises(ValueError, match="`tol` must be in"):
        hg.CG(10, 1.5)
    with pytest.raises(ValueError, match="`sketch`"):
        hg.Nystrom(5, 0.1, sketch="sobol")
    with pytest.raises(ValueError, match="`solver` must be 'auto'"):
        hg.solve_ihvp("dense", mv, b)
    with pytest.raises(ValueError, match="`probes`"):
        hg.SpectralReuse(5, probes=1)
    with pytest.raises(ValueError, match="sketch='kernel' reads kernel columns"):
        hg.solve_ihvp(hg.NystromPCG(5, sketch="kernel"), mv, b)
    with pytest.raises(ValueError, match="`factor` must be"):
        hg.solve_ihvp(hg.NystromPCG(5, sketch="kernel"), mv, b,
                      factor=(jnp.ones((50, 4)), jnp.ones(4)))
    with pytest.raises(ValueError, match="`factor` is what a sketch='kernel' solver reads"):
        hg.solve_ihvp(hg.NystromPCG(5), mv, b, factor=(jnp.ones((50, 5)), jnp.ones(5)))

    inner, outer, solve, h, _ = ridge

    def bad_inner(w, hh):  # sqrt of a negative number: NaN curvature
        return inner(w, hh) + jnp.sum(jnp.sqrt(w["coef"] - 100.0))

    for solver in (hg.Exact(), hg.NystromPCG(4)):
        with pytest.raises(ValueError, match="non-finite Hessian-vector products|not finite"):
            hg.implicit_grad(bad_inner, outer, solve(h), h, solver)
    with pytest.raises(ValueError, match="likelihood"):
        hg.laplace_mode({"kernel": {"lengthscales": jnp.ones(3)}}, np.eye(3), np.zeros(3), "gamma")
    with pytest.raises(ValueError, match="counts"):
        hg.laplace_mode(
            {"kernel": {"lengthscales": jnp.ones(3)}}, np.eye(3), np.array([0.5, 1.0, 2.0])
        )


# --------------------------------------------------------------------------- #
# Influence of training observations on tuned hyperparameters
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def weighted_problem():
    """Standardised data (so the function's own standardisation is the identity) and
    the weighted validation loss L(x, w) written directly with dense JAX algebra."""
    fld = synthetic_field(70, [0.5, 0.3, 0.15], [0.3, -0.2, 0.5], noise_sd=0.2, seed=4)
    tr, va = fld.split(0.3, seed=1)
    centre, mean, sd = tr.X.mean(axis=0), tr.y.mean(), tr.y.std()
    data = (tr.X - centre, (tr.y - mean) / sd, va.X - centre, (va.y - mean) / sd)
    Xt, yt, Xv, yv = (jnp.asarray(a) for a in data)

    def loss(x, w, objective):
        a, log_l, log_noise, log_signal = x[:3], x[3:6], x[6], x[7]  # ravel_pytree order
        params = {"lengthscales": jnp.exp(log_l), "axis_angle": a,
                  "variance": jnp.exp(2 * log_signal)}
        s2 = jnp.exp(2 * log_noise)
        H = kernels.gram(Xt, Xt, params, "rbf") + s2 * jnp.diag(1.0 / w)
        Kvt = kernels.gram(Xv, Xt, params, "rbf")
        mu = Kvt @ jnp.linalg.solve(H, yt)
        if objective == "mse":
            return jnp.mean((mu - yv) ** 2)
        var = params["variance"] + s2 - jnp.sum(Kvt.T * jnp.linalg.solve(H, Kvt.T), axis=0)
        return 0.5 * jnp.mean(jnp.log(2 * jnp.pi * var) + (yv - mu) ** 2 / var)

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=2)

    def argmin(w, x0, objective="mse"):
        """The minimiser of the dense weighted loss, by BFGS to a 1e-11 gradient."""
        from scipy.optimize import minimize

        res = minimize(lambda v: [np.asarray(t) for t in value_and_grad(v, w, objective)], x0,
                       jac=True, method="BFGS", options={"gtol": 1e-11, "maxiter": 2000})
        return res.x

    return data, loss, argmin


X0_THETA = np.array([0.3, -0.2, 0.5, *np.log([0.5, 0.3, 0.2]), np.log(0.25), 0.0])


def _as_params(x):
    return {"lengthscales": np.exp(x[3:6]), "axis_angle": np.asarray(x[:3]),
            "variance": float(np.exp(2 * x[7])), "noise_variance": float(np.exp(2 * x[6]))}


@pytest.mark.parametrize("objective", ["mse", "nlpd"])
def test_hyperparameter_influence_formula_matches_autodiff(weighted_problem, objective):
    """-H^-1 d(dL/dw)/dtheta from the solver-value pieces against JAX's own second
    derivatives of the dense weighted loss, at its minimum."""
    data, loss, argmin = weighted_problem
    n = data[0].shape[0]
    x = argmin(jnp.ones(n), X0_THETA, objective)
    ones = jnp.ones(n)
    H = jax.hessian(loss)(jnp.asarray(x), ones, objective)
    mixed = jax.jacfwd(jax.grad(loss, argnums=1), argnums=0)(jnp.asarray(x), ones, objective)
    # MSE is flat in (signal, noise) scaled together: a pseudo-inverse in both.
    expected = -np.linalg.pinv(np.asarray(H), rcond=1e-6, hermitian=True) @ np.asarray(mixed).T
    table, info = hg.hyperparameter_influence(*data, _as_params(x), objective=objective,
                                              newton_steps=0)
    assert info["flat_directions"] == (1 if objective == "mse" else 0)
    assert table.shape == (n, 8)
    assert list(table.columns[:3]) == ["axis_angle[0]", "axis_angle[1]", "axis_angle[2]"]
    assert _rel(table.to_numpy().T, expected) < 1e-5


def test_hyperparameter_influence_predicts_reweighted_optima(weighted_problem):
    """Brute force: the minimiser of the dense weighted loss re-found by BFGS with one
    weight at 1 +- 0.01; central differences of those optima against the prediction."""
    data, _, argmin = weighted_problem
    n = data[0].shape[0]
    x_star = argmin(jnp.ones(n), X0_THETA)
    start = x_star + 0.01  # off the optimum: the Newton polish must bring it back
    table, info = hg.hyperparameter_influence(*data, _as_params(start), objective="mse")
    assert info["grad_norm"] < 1e-6
    np.testing.assert_allclose(np.log(info["theta"]["lengthscales"]), x_star[3:6], atol=1e-5)
    top = np.argsort(-np.linalg.norm(table.to_numpy(), axis=1))[:3]
    for i in top:
        optima = [argmin(jnp.ones(n).at[i].set(1 + s), x_star) for s in (0.01, -0.01)]
        refit = (optima[0] - optima[1]) / 0.02
        # The rotation, the length-scales and log(noise/signal); MSE leaves their sum free.
        pred = table.iloc[i].to_numpy()
        assert _rel(pred[:6], refit[:6]) < 2e-2
        assert pred[6] - pred[7] == pytest.approx(refit[6] - refit[7], rel=2e-2, abs=1e-4)
