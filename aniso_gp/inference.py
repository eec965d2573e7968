r"""Bayesian fit of an anisotropic GP: NUTS over chains -> :class:`Fit`.

``fit`` standardises the data (coordinates centred and divided by one common
scale, so rotations survive; values to zero mean and unit sd), runs NumPyro's
NUTS with a dense mass matrix on several chains, and returns a :class:`Fit`
whose every number is in the user's units:

* metric draws ``M`` (S, 3, 3): ``M_user = M_std / x_scale^2``;
* canonical length-scales (sorted descending) and axis-angles
  (:func:`aniso_gp.so3.canonicalize`), the principal axes as columns;
* a pointwise log-likelihood from closed-form GP leave-one-out, so
  ``az.loo`` / ``az.compare`` are meaningful.

Given a whole volume (a :class:`~aniso_gp.datasets.Volume` or a 3-D array), ``fit``
uses the debiased spatial Whittle likelihood on its grid
(:class:`~aniso_gp.models.WhittleFourier`), starts from a kernel-free moment
estimate refined by Newton steps, and adjusts the draws by the curvature
adjustment of :mod:`aniso_gp.calibration`; LOO is then over groups of frequencies
(:func:`~aniso_gp.gridded.loo_groups`) and prediction is on the grid
(:meth:`Fit.predict_grid`). The design notes are in ``docs/design.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpyro.infer import MCMC, NUTS, init_to_median
from numpyro.infer.util import log_density, potential_energy

from aniso_gp import _validation as check
from aniso_gp import calibration, diagnostics, gridded, kernels, orientation, so3
from aniso_gp.fit_result import FORMAT_VERSION, Fit, Standardizer
from aniso_gp.likelihoods import (
    loo_pointwise,
    lowrank_loo_pointwise,
)
from aniso_gp.linalg.nystrom import LANDMARK_METHODS
from aniso_gp.models import (
    KERNELS,
    LIKELIHOODS,
    PARAMETERIZATIONS,
    ModelSpec,
    Priors,
    dense_covariance,
    gp_model,
    lowrank_parts,
    unconstrained_start,
    vech,
    whittle_site,
)

__all__ = ["Fit", "Standardizer", "compare", "fit", "predict"]

MIN_POINTS = 10
# Bounds that catch typos (2**70 draws) long before memory runs out.
MAX_CHAINS = 1024
MAX_DRAWS = 10**7
EXACT_WARN_N = 3000
_PILOT_MAX_POINTS = 500  # above this the pilot MAP sees a random subset
_NEWTON_STEPS = 10  # ... and Newton steps on all the data finish the job


def _chain_method(num_chains: int) -> str:
    # On an accelerator the chains run as one vectorised program. On CPU, one chain
    # per device: `aniso_gp/__init__.py` asks XLA for max(4, cores) host devices
    # when it is imported before JAX starts.
    if jax.default_backend() != "cpu":
        return "vectorized"
    return "parallel" if jax.local_device_count() >= num_chains else "sequential"


def fit(
    X,
    y=None,
    kernel: str = "rotated",
    base: str = "rbf",
    parameterization: str | None = None,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 500,
    seed: int = 0,
    progress: bool = True,
    priors=None,
    likelihood: str | None = None,
    num_landmarks: int = 256,
    landmarks: str = "rpcholesky",
    target_accept_prob: float = 0.8,
    *,
    spacing=None,
    mask=None,
    taper=None,
    calibrate: bool = True,
    num_bootstrap: int = 200,
) -> Fit:
    """Fit a stationary anisotropic GP to 3-D data by NUTS.

    Args:
        X: (N, 3) coordinates (NumPy, JAX or a pandas DataFrame), or a whole
            volume: a :class:`~aniso_gp.datasets.Volume` or a 3-D array of
            values (then ``y`` is omitted; NaN voxels are missing).
        y: (N,) values, for points.
        kernel: ``"rotated"`` (M = R diag(l^-2) R^T), ``"ard"`` or ``"full"`` (free SPD).
        base: ``"rbf"``, ``"matern12"``, ``"matern32"`` or ``"matern52"``.
        parameterization: for the rotated kernel only (the others have no rotation
            to chart, and naming one for them is an error), ``"identifiable"`` (the default:
            the matrix logarithm of the metric, six unconstrained numbers with a
            Gaussian-orthogonal-ensemble prior; chains start at a pilot MAP; see
            :mod:`aniso_gp.models`) or ``"axis-angle"`` (the paper's: exchangeable
            length-scales, free axis-angle). The identifiable chart samples at least
            as fast everywhere it was measured and 17x faster where two length-scales
            meet (docs/design.md section 3).
        num_chains, num_warmup, num_samples: NUTS settings.
        seed: random seed (fits are reproducible).
        progress: show the sampler's progress bar.
        priors: dict of :class:`aniso_gp.models.Priors` fields in the user's units.
        likelihood: ``"exact"`` (dense Cholesky), ``"dtc"`` or ``"fitc"`` (Nystrom,
            O(N m^2) per step) for points; ``"whittle"`` (the debiased spatial
            Whittle likelihood, O(N log N) per step) for volumes. Default: exact
            for points, whittle for volumes (a volume with another likelihood is
            fitted as the points of its observed voxels).
        num_landmarks, landmarks: for the low-rank likelihoods, the number of
            inducing points and how they are chosen (once, from the data).
        target_accept_prob: NUTS target acceptance.
        spacing: voxel size of an array volume (one number or one per axis).
        mask: (n0, n1, n2) boolean, True where a volume's voxel is observed.
        taper: ``None``, ``"hann"`` or ``"tukey"``: the data taper of the Whittle
            likelihood (``"tukey"`` damps edge leakage at a smaller loss of variance).
        calibrate: for ``"whittle"``, apply the curvature adjustment
            (:mod:`aniso_gp.calibration`) so that intervals have frequentist
            coverage; the fit records whether it did.
        num_bootstrap: simulated volumes behind the adjustment's score variance (each
            entry of it has a relative Monte Carlo error of about sqrt(2 / num_bootstrap)).
    """
    base = check.base_name(base)
    check.one_of(kernel, KERNELS, "kernel")
    parameterization = _chart(kernel, parameterization)
    if likelihood is not None:
        check.one_of(likelihood, LIKELIHOODS, "likelihood")
    num_chains = check.positive_int(num_chains, "num_chains", maximum=MAX_CHAINS)
    num_warmup = check.positive_int(num_warmup, "num_warmup", maximum=MAX_DRAWS)
    num_samples = check.positive_int(num_samples, "num_samples", maximum=MAX_DRAWS)
    nuts = {"num_chains": num_chains, "num_warmup": num_warmup, "num_samples": num_samples,
            "seed": check.seed(seed), "progress": check.flag(progress, "progress"),
            "target_accept_prob": check.open_unit(target_accept_prob, "target_accept_prob")}
    calibrate = check.flag(calibrate, "calibrate")
    check.one_of(landmarks, LANDMARK_METHODS, "landmarks")
    if gridded.is_volume(X):
        if y is not None:
            raise ValueError("`y` must be omitted when `X` is a volume: its voxels are the "
                             "values")
        gv = gridded.as_gridded(X, spacing=spacing, mask=mask, taper=taper, name="X")
        if likelihood in (None, "whittle"):
            num_bootstrap = check.integer(num_bootstrap, "num_bootstrap", minimum=20)
            return _fit_volume(gv, kernel, base, parameterization, priors, nuts,
                               calibrate=calibrate, num_bootstrap=int(num_bootstrap))
        if gv.taper is not None:
            raise ValueError(f"`taper` applies to the whittle likelihood; likelihood="
                             f"{likelihood!r} fits the volume's voxels as points")
        X, y = gv.points()
    else:
        given = [k for k, v in (("spacing", spacing), ("mask", mask), ("taper", taper))
                 if v is not None]
        if given:
            raise ValueError(f"`{'`, `'.join(given)}` apply to volumes; `X` holds points")
        if y is None:
            shape = np.shape(X)
            if len(shape) == 2 and shape[1] == 3:
                raise ValueError("`y` is required when `X` holds points (N, 3)")
            raise ValueError(f"`X` must be a volume (a Volume or a 3-D array (n0, n1, n2)), "
                             f"or points (N, 3) with `y`; got a {len(shape)}-D array of "
                             f"shape {shape}")
        if likelihood == "whittle":
            raise ValueError("likelihood='whittle' needs a volume (a Volume or a 3-D array) "
                             "as `X`; points take 'exact', 'dtc' or 'fitc'")
    likelihood = likelihood or "exact"
    X = np.asarray(check.coordinates(X, "X", min_points=MIN_POINTS))
    y = np.asarray(check.values(y, n=X.shape[0], name="y"))
    n = X.shape[0]
    if likelihood == "exact" and n > EXACT_WARN_N:
        warnings.warn(
            f"exact likelihood on N={n} points costs O(N^3) per gradient; consider "
            f"likelihood='fitc' with num_landmarks={num_landmarks}",
            UserWarning,
            stacklevel=2,
        )
    std = Standardizer.from_data(X, y)
    user_priors = Priors.from_user(priors)
    spec = _spec(kernel, base, parameterization, likelihood, user_priors, std)
    Xs, ys = std.x(X), std.y(y)
    Xm = None
    if likelihood != "exact":
        Xm = _choose_landmarks(Xs, num_landmarks, landmarks, spec, seed)

    model_kwargs = {"spec": spec, "landmarks": Xm}
    init_params = inverse_mass = None
    if spec.kernel == "rotated" and spec.parameterization == "identifiable":
        init_params = jax.device_get(_pilot_start(Xs, ys, spec, Xm, seed, num_chains))
        first = (jax.tree_util.tree_map(lambda v: v[0], init_params)
                 if num_chains > 1 else init_params)
        z, inverse_mass = _warmup_start(
            (Xs, ys), model_kwargs, first,
            newton_steps=_NEWTON_STEPS if n > _PILOT_MAX_POINTS else 0)
        # Every chain moves with the first, so the starts keep their spread.
        init_params = jax.tree_util.tree_map(lambda s, a, b: s + (a - b), init_params,
                                             jax.device_get(z), first)

    samples, extra, wall = _run_nuts((Xs, ys), model_kwargs, init_params, inverse_mass, nuts,
                                     init_strategy=init_to_median(num_samples=15))
    settings = _settings(kernel, base, spec, likelihood, nuts, user_priors, std, wall)
    settings["landmarks"] = None if Xm is None else np.asarray(Xm).tolist()
    settings["landmark_method"] = landmarks if Xm is not None else None
    idata = _build_idata(samples, extra, (X, y), (Xs, ys), std, spec, Xm, settings)
    return Fit(idata, settings)


def _chart(kernel: str, parameterization: str | None) -> str:
    """The rotated kernel's chart (default ``"identifiable"``); the other kernels have
    none, and asking for one is an error rather than a silent change."""
    if kernel == "rotated":
        return check.one_of(parameterization or "identifiable", PARAMETERIZATIONS,
                            "parameterization")
    if parameterization is not None:
        raise ValueError(f"`parameterization` applies to the rotated kernel only; "
                         f"kernel={kernel!r} has no rotation to parameterise: omit it "
                         f"(got {parameterization!r})")
    return "axis-angle"  # the model's internal label for 'no log-metric chart'


def _spec(kernel, base, parameterization, likelihood, user_priors, std) -> ModelSpec:
    return ModelSpec(
        kernel=kernel,
        base=base,
        parameterization=_chart(kernel, parameterization if kernel == "rotated" else None),
        likelihood=likelihood,
        priors=user_priors.standardised(std.x_scale, std.y_mean, std.y_sd, std.extent),
    )


def _settings(kernel, base, spec, likelihood, nuts, user_priors, std, wall) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "kernel": kernel,
        "base": base,
        "parameterization": spec.parameterization,
        "likelihood": likelihood,
        "num_chains": nuts["num_chains"],
        "num_warmup": nuts["num_warmup"],
        "num_samples": nuts["num_samples"],
        "seed": nuts["seed"],
        "priors": dataclasses.asdict(user_priors),
        "standardizer": dataclasses.asdict(std),
        "wall_time_s": wall,
    }


def _run_nuts(model_args, model_kwargs, init_params, inverse_mass, nuts, init_strategy=None):
    """NUTS with a dense mass matrix on ``nuts["num_chains"]`` chains; returns the
    samples and extra fields grouped by chain, as NumPy, and the wall time."""
    kernel = NUTS(
        gp_model,
        dense_mass=True,
        inverse_mass_matrix=inverse_mass,
        target_accept_prob=nuts["target_accept_prob"],
        **({} if init_strategy is None else {"init_strategy": init_strategy}),
    )
    mcmc = MCMC(
        kernel,
        num_warmup=nuts["num_warmup"],
        num_samples=nuts["num_samples"],
        num_chains=nuts["num_chains"],
        chain_method=_chain_method(nuts["num_chains"]),
        progress_bar=nuts["progress"],
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There are not enough devices")
        mcmc.run(
            jax.random.PRNGKey(nuts["seed"]),
            *model_args,
            init_params=init_params,
            extra_fields=("diverging", "num_steps", "energy", "accept_prob", "potential_energy"),
            **model_kwargs,
        )
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    return samples, extra, time.perf_counter() - t0


def _fit_volume(gv, kernel, base, parameterization, priors, nuts, *, calibrate: bool,
                num_bootstrap: int) -> Fit:
    """The whole-volume route: debiased Whittle likelihood, moment start, Newton steps,
    NUTS, curvature adjustment. ``wall_time_s`` is the sampler's (for ESS per second),
    ``total_time_s`` everything from the data to the adjusted draws."""
    t_start = time.perf_counter()
    std = Standardizer.from_grid(gv)
    user_priors = Priors.from_user(priors)
    spec = _spec(kernel, base, parameterization, "whittle", user_priors, std)
    grid, data, g = gridded.fourier_data(gv, std.x_scale, std.y_mean, std.y_sd)
    model_args, model_kwargs = (None, data), {"spec": spec, "grid": grid}
    ys = np.where(gv.mask, (gv.values - std.y_mean) / std.y_sd, 0.0)
    start = unconstrained_start(spec, *gridded.moment_start(
        ys, g, np.asarray(gv.spacing) / std.x_scale))
    z, inverse_mass = _warmup_start(model_args, model_kwargs, start, newton_steps=_NEWTON_STEPS)
    keys = jax.random.split(jax.random.PRNGKey(nuts["seed"] + 1), len(z))
    init = {k: jnp.asarray(z[k]) + 0.05 * jax.random.normal(kk, (nuts["num_chains"],)
                                                            + jnp.shape(z[k]))
            for kk, k in zip(keys, sorted(z), strict=True)}
    if nuts["num_chains"] == 1:
        init = {k: v[0] for k, v in init.items()}
    samples, extra, wall = _run_nuts(model_args, model_kwargs, init, inverse_mass, nuts)
    settings = _settings(kernel, base, spec, "whittle", nuts, user_priors, std, wall)
    _, _, ptp = gv.coordinate_moments()
    settings["grid"] = {"shape": list(gv.shape), "spacing": list(gv.spacing),
                        "origin": list(gv.origin), "taper": gv.taper,
                        "observed_voxels": gv.num_observed,
                        "masked_fraction": 1.0 - gv.num_observed / gv.values.size,
                        "extent": ptp.tolist()}
    raw = samples
    if calibrate:
        C, D = raw["A"].shape[:2]
        flat = {k: v.reshape((C * D,) + v.shape[2:]) for k, v in samples.items()}
        adj, adjusted = calibration.whittle_adjustment(
            spec, grid, data, g, flat, num_bootstrap=num_bootstrap, seed=nuts["seed"])
        samples = {k: v.reshape((C, D) + v.shape[1:]) for k, v in adjusted.items()}
        settings["calibration"] = {"adjusted": True, **adj.as_dict()}
    else:
        settings["calibration"] = {"adjusted": False}
    settings["calibration"]["lengthscale_over_extent"] = _long_against_grid(samples, std, gv)
    settings["total_time_s"] = time.perf_counter() - t_start
    idata = _build_grid_idata(samples, raw, extra, gv, std, spec, grid, data, settings)
    return Fit(idata, settings)


def _long_against_grid(samples, std, gv) -> list[float]:
    """Posterior medians of each sorted length-scale over the grid's extent along its
    axis; warns when one exceeds :data:`calibration.LONG_AGAINST_GRID`."""
    _, l, _, axes = (np.asarray(v) for v in _canonical(jnp.asarray(samples["A"]), std.x_scale))
    sides = np.asarray(gv.shape) * np.asarray(gv.spacing)
    ratios = np.median(calibration.extent_ratios(l, axes, sides).reshape(-1, 3), axis=0)
    if ratios.max() > calibration.LONG_AGAINST_GRID:
        k = int(np.argmax(ratios))
        warnings.warn(
            f"length-scale {k + 1} (posterior median {np.median(l[..., k]):.3g}) is "
            f"{ratios[k]:.2f} of the volume's extent along its axis: above "
            f"{calibration.LONG_AGAINST_GRID} the 90% intervals of such a length-scale "
            "were measured to under-cover (a larger crop resolves it)",
            UserWarning, stacklevel=4)  # the caller of `fit`
    return [float(r) for r in ratios]


def _choose_landmarks(Xs, m, method, spec, seed):
    """Landmarks chosen once in the prior-median transformed coordinates."""
    from aniso_gp.linalg.nystrom import select_landmarks

    n = Xs.shape[0]
    m = check.integer(m, "num_landmarks", maximum=n)
    Z = Xs / spec.priors.lengthscale_median

    def kernel_fn(Z1, Z2):
        return kernels.gram_transformed(Z1, Z2, 1.0, spec.base)

    idx = select_landmarks(Z, int(m), method=method, seed=seed, kernel_fn=kernel_fn)
    return Xs[np.asarray(idx)]


def _pilot_start(Xs, ys, spec, Xm, seed, num_chains, num_starts=8, steps=300,
                 max_points=_PILOT_MAX_POINTS):
    """Chain starts for the identifiable parameterisation, at a pilot MAP.

    Maximises the axis-angle posterior (signal and noise in log space with their
    Jacobians, so neither collapses to 0) from ``num_starts`` Haar-random
    orientations with Adam, keeps the best, and converts it to
    ``log_metric = vech(R diag(-2 log l) R^T)``. Returns per-chain unconstrained
    starts, jittered so R-hat can see chains that fail to mix. Everything is
    traced inside ``jit``: running the model eagerly would compile op by op.

    Above ``max_points`` observations the MAP is taken on a random subset of that
    size with the exact likelihood: it only places the starts, Newton steps on all
    the data (:func:`_warmup_start`) move them the rest of the way, and the
    ``num_starts x steps`` gradients on all the data would dominate a large fit
    (about 40 minutes on 2 cores at N = 20,000 with FITC, m = 256, against under a
    minute on 500 points).
    """
    if Xs.shape[0] > max_points:
        sub = np.random.default_rng(seed).choice(Xs.shape[0], max_points, replace=False)
        Xs, ys, Xm = Xs[sub], ys[sub], None
        spec = dataclasses.replace(spec, likelihood="exact")
    aa_kw = {"spec": dataclasses.replace(spec, parameterization="axis-angle"), "landmarks": Xm}

    def neg_log_post(u):
        params = {"mean": u["mean"], "signal": jnp.exp(u["log_signal"]),
                  "noise": jnp.exp(u["log_noise"]), "log_l": u["log_l"],
                  "axis_angle": u["axis_angle"]}
        lp, _ = log_density(gp_model, (Xs, ys), aa_kw, params)
        return -(lp + u["log_signal"] + u["log_noise"])

    key_a, key_j = jax.random.split(jax.random.PRNGKey(seed + 1))
    p = spec.priors
    starts = {
        "mean": jnp.zeros(num_starts),
        "log_signal": jnp.full(num_starts, math.log(p.signal_scale)),
        "log_noise": jnp.full(num_starts, math.log(0.5 * p.noise_scale)),
        "log_l": jnp.full((num_starts, 3), math.log(p.lengthscale_median)),
        "axis_angle": so3.log(so3.from_quaternion(jax.random.normal(key_a, (num_starts, 4)))),
    }
    opt = optax.adam(0.05)

    @jax.jit
    def optimise(starts):
        def run(u):
            def step(carry, _):
                u, state = carry
                upd, state = opt.update(jax.grad(neg_log_post)(u), state)
                return (optax.apply_updates(u, upd), state), None

            (u, _), _ = jax.lax.scan(step, (u, opt.init(u)), None, length=steps)
            return u, neg_log_post(u)

        # One start after another: batched, the likelihood's reverse pass loops
        # anyway (linalg.dense._one_at_a_time), and memory stays at one start's.
        u, loss = jax.lax.map(run, starts)
        loss = jnp.where(jnp.isfinite(loss), loss, jnp.inf)
        best = jax.tree_util.tree_map(lambda v: v[jnp.argmin(loss)], u)
        R = so3.exp(best["axis_angle"])
        return {
            "mean": best["mean"],
            "signal": best["log_signal"],
            "noise": best["log_noise"],
            "log_metric": vech((R * (-2.0 * best["log_l"])) @ R.T),
        }

    z = optimise(starts)
    keys = jax.random.split(key_j, len(z))
    chains = {
        k: z[k] + 0.05 * jax.random.normal(kk, (num_chains,) + jnp.shape(z[k]))
        for kk, k in zip(keys, sorted(z), strict=True)
    }
    if num_chains == 1:
        chains = {k: v[0] for k, v in chains.items()}
    return chains


def _warmup_start(model_args, model_kwargs, z, newton_steps=0, h=1e-4, floor=1e-2,
                  max_step=1.0):
    """Refine the pilot point ``z`` by Newton steps on the full potential and return
    ``(z, inverse_mass)``: the point and the inverse Hessian there, a dense inverse
    mass matrix for the start of warm-up.

    With NumPyro's default identity, the first warm-up window explores a badly
    scaled posterior with tiny steps and deep trees. The Hessian ``H`` comes from
    central differences of 2 x dim gradients (the exact likelihood's custom VJP
    has no second derivative). Its eigenvalues are replaced by their absolute
    values, floored at ``floor``, so ``|H|`` is SPD whatever the point and
    ``-|H|^{-1} grad`` is a descent direction that also leaves saddles (away from
    a mode some curvatures are negative). Each Newton step is capped at
    ``max_step`` in every coordinate (unconstrained units are logs), backtracks
    (halving, at most 5 times) until the potential decreases, and the loop stops
    when the step is below 1e-3 in every coordinate. Newton steps pay when the
    pilot saw a subset of a large N: the full posterior is then narrow, nearly
    Gaussian (one step from a quadratic's mode), and the subset MAP lies many of
    its standard deviations away. NumPyro replaces the mass matrix with sample
    covariances after its first slow window.

    Returns the point as a pytree like ``z`` and a (dim, dim) array in NumPyro's
    order (sorted site names, raveled), or ``None`` for the mass matrix where the
    Hessian is not finite (NumPyro's identity start).
    """
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(z)
    flat = np.asarray(flat)

    def potential(v):
        return potential_energy(gp_model, model_args, model_kwargs, unravel(v))

    value = jax.jit(potential)
    grad = jax.jit(jax.grad(potential))

    def floored_hessian(v):
        eye = np.eye(v.size)
        H = np.stack([(np.asarray(grad(v + h * e)) - np.asarray(grad(v - h * e))) / (2 * h)
                      for e in eye])
        if not np.all(np.isfinite(H)):
            return None
        lam, V = np.linalg.eigh(0.5 * (H + H.T))
        return V, np.maximum(np.abs(lam), floor)

    for _ in range(newton_steps):
        eig = floored_hessian(flat)
        g = np.asarray(grad(flat))
        if eig is None or not np.all(np.isfinite(g)):
            break
        V, lam = eig
        step = -(V / lam) @ (V.T @ g)
        step *= min(1.0, max_step / np.max(np.abs(step)))
        u0, t = float(value(flat)), 1.0
        for _ in range(6):
            if float(value(flat + t * step)) < u0:
                break
            t *= 0.5
        else:
            break
        flat = flat + t * step
        if np.max(np.abs(t * step)) < 1e-3:
            break
    eig = floored_hessian(flat)
    inverse_mass = None if eig is None else (eig[0] / eig[1]) @ eig[0].T
    return unravel(jnp.asarray(flat)), inverse_mass


# --------------------------------------------------------------------------- #
# Per-draw computations (standardised units)
# --------------------------------------------------------------------------- #
def _flat(samples, name):
    v = samples[name]
    return v.reshape((-1,) + v.shape[2:])


def _loo_draws(A, signal, noise, mean, Xs, ys, base, lowrank):
    """Pointwise LOO log density (S, N) in standardised units."""
    if lowrank is not None:
        Xm, fitc = lowrank

        def one(args):
            A_, s_, e_, m_ = args
            U, d = lowrank_parts(Xs @ A_, Xm @ A_, s_, e_, base, fitc)
            return lowrank_loo_pointwise(U, d, ys - m_)[0]

    else:

        def one(args):
            A_, s_, e_, m_ = args
            return loo_pointwise(dense_covariance(Xs @ A_, s_, e_, base), ys - m_)[0]

    return jax.lax.map(jax.jit(one), (A, signal, noise, mean), batch_size=8)


@jax.jit
def _canonical(A, x_scale):
    """Metric in user units, canonical length-scales / axis-angles and axes, per draw."""
    M = A @ jnp.swapaxes(A, -1, -2) / x_scale**2
    l, V = so3.principal_axes(M)
    l, a = so3.canonicalize(l, so3.log(V))
    return M, l, a, so3.exp(a)


def _posterior(samples, std, spec) -> dict:
    """Draws in the user's units: canonical length-scales, axes, metric, signal, noise,
    mean, and the standardised ``A``."""
    A = samples["A"]  # (C, D, 3, 3) standardised
    M, l_can, a_can, axes = (np.asarray(v) for v in _canonical(jnp.asarray(A), std.x_scale))
    posterior = {
        "lengthscales": l_can,
        "axis_angle": a_can,
        "axes": axes,
        "metric": M,
        "signal": samples["signal"] * std.y_sd,
        "noise": samples["noise"] * std.y_sd,
        "mean": samples["mean"] * std.y_sd + std.y_mean,
        "A_std": A,
    }
    # The sampler's own labelling, before canonicalisation; the identifiable
    # parameterisation has none (each point is one metric).
    if "log_l" in samples and spec.kernel != "full":
        posterior["lengthscales_raw"] = np.exp(samples["log_l"]) * std.x_scale
    if "axis_angle" in samples:
        posterior["axis_angle_raw"] = samples["axis_angle"]
    return posterior


def _sample_stats(extra) -> dict:
    return {
        "diverging": extra["diverging"],
        "n_steps": extra["num_steps"],
        "energy": extra["energy"],
        "acceptance_rate": extra["accept_prob"],
        "lp": -extra["potential_energy"],
    }


_DIMS = {
    "lengthscales": ["axis"],
    "lengthscales_raw": ["axis"],
    "axis_angle": ["component"],
    "axis_angle_raw": ["component"],
    "axes": ["component", "axis"],
    "metric": ["row", "col"],
    "A_std": ["row", "col"],
    "A_std_unadjusted": ["row", "col"],
}
_COORDS = {"axis": [1, 2, 3], "component": ["x", "y", "z"], "row": ["x", "y", "z"],
           "col": ["x", "y", "z"], "coord": ["x", "y", "z"]}


def _build_idata(samples, extra, data, standardised, std, spec, Xm, settings):
    """ArviZ data of a point fit; ``data`` = (X, y) in user units, ``standardised`` =
    the same (Xs, ys) that the sampler saw."""
    (X, y), (Xs, ys) = data, standardised
    C, D = samples["A"].shape[:2]
    lowrank = None if Xm is None else (jnp.asarray(Xm), spec.likelihood == "fitc")
    ll = _loo_draws(
        jnp.asarray(_flat(samples, "A")),
        jnp.asarray(_flat(samples, "signal")),
        jnp.asarray(_flat(samples, "noise")),
        jnp.asarray(_flat(samples, "mean")),
        Xs, ys, spec.base, lowrank,
    )
    ll = np.asarray(ll).reshape(C, D, -1) - math.log(std.y_sd)
    return diagnostics.inference_data(
        posterior=_posterior(samples, std, spec),
        sample_stats=_sample_stats(extra),
        log_likelihood={"y": ll},
        observed={"y": y},
        constant={"X": X},
        coords={**_COORDS, "obs": np.arange(X.shape[0])},
        dims={**_DIMS, "y": ["obs"], "X": ["obs", "coord"]},
        attrs={"aniso_gp_settings": json.dumps(settings)},
    )


def _whittle_group_loglik(samples, spec, grid, data, std):
    """Pointwise log pseudo-likelihood (S, G) of the groups of frequencies
    (:func:`~aniso_gp.gridded.loo_groups`), in the user's units of the values."""
    groups = gridded.loo_groups(grid.shape)
    num = int(groups.max()) + 1
    seg = jnp.asarray(groups.ravel())
    # Each real Fourier coordinate carries the values' unit: -log(sd) per coordinate.
    per_group = jax.ops.segment_sum(grid.weights.ravel(), seg, num_segments=num)

    @jax.jit
    def one(args):
        A, s, e, m = args
        terms = whittle_site(grid, m, s, e, A, spec.base).pointwise(data)
        return jax.ops.segment_sum(terms.ravel(), seg, num_segments=num)

    ll = jax.lax.map(one, tuple(jnp.asarray(_flat(samples, k))
                                for k in ("A", "signal", "noise", "mean")), batch_size=4)
    return np.asarray(ll) - math.log(std.y_sd) * np.asarray(per_group)


def _build_grid_idata(samples, raw, extra, gv, std, spec, grid, data, settings):
    """InferenceData of a whole-volume fit. The pointwise log-likelihood (for LOO)
    is that of the *unadjusted* draws: PSIS needs draws from prior x the product of
    the group likelihoods, which the curvature-adjusted draws are not."""
    C, D = samples["A"].shape[:2]
    ll = _whittle_group_loglik(raw, spec, grid, data, std).reshape(C, D, -1)
    posterior = _posterior(samples, std, spec)
    if settings["calibration"]["adjusted"]:
        posterior["A_std_unadjusted"] = raw["A"]
    return diagnostics.inference_data(
        posterior=posterior,
        sample_stats=_sample_stats(extra),
        log_likelihood={"y": ll},
        observed={"volume": gv.values},
        constant={},
        coords={**_COORDS, "frequency_group": np.arange(ll.shape[-1])},
        dims={**_DIMS, "y": ["frequency_group"], "volume": ["i", "j", "k"]},
        attrs={"aniso_gp_settings": json.dumps(settings)},
    )


def compare(fits, X_test=None, y_test=None, truth=None, num_draws: int = 200) -> pd.DataFrame:
    """Compare fits: LOO elpd (ArviZ) and, given held-out data, RMSE / NLPD / 90% coverage;
    given a known ``truth`` (:class:`aniso_gp.datasets.Truth`), metric distances and
    per-axis axial angle errors.

    Args:
        fits: dict name -> :class:`Fit` (or a list, named by kernel).
    """
    fits = _named_fits(fits)
    if (X_test is None) != (y_test is None):
        raise ValueError("give both `X_test` and `y_test`, or neither")
    num_draws = check.positive_int(num_draws, "num_draws")
    if X_test is not None:
        X_test = check.coordinates(X_test, "X_test")
        y_test = check.values(y_test, n=X_test.shape[0], name="y_test")
    cmp = diagnostics.compare({k: f.idata for k, f in fits.items()})
    rows = {}
    for name, f in fits.items():
        lo = f.loo()
        row = {"elpd_loo": lo["elpd_loo"], "elpd_se": lo["se"], "p_loo": lo["p_loo"],
               "max_pareto_k": lo["max_pareto_k"], "loo_rank": int(cmp.loc[name, "rank"]),
               "elpd_diff": float(cmp.loc[name, "elpd_diff"])}
        if X_test is not None:
            row.update(f.score(X_test, y_test, num_draws))
        if truth is not None:
            row.update(orientation.metric_errors(f.metric_draws(), np.asarray(truth.metric)))
            err = orientation.axis_errors(f.axes_draws(), np.asarray(truth.axes))
            row.update({f"axis{i + 1}_err_deg": float(e) for i, e in enumerate(err)})
        rep = f.diagnostics()
        row.update({"max_r_hat": rep["max_r_hat"], "min_ess_bulk": rep["min_ess_bulk"],
                    "divergences": rep["divergences"]})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").sort_values("loo_rank")


def _named_fits(fits) -> dict:
    """``{name: Fit}`` of fits to the same data; a list is named by kernel (and chart)."""
    if isinstance(fits, Fit):
        raise ValueError("`fits` must be several fits (a dict {name: Fit} or a list); got one "
                         "Fit")
    if not isinstance(fits, dict):
        try:
            fits = list(fits)
        except TypeError as err:
            raise ValueError(f"`fits` must be a dict {{name: Fit}} or a list of Fit; got "
                             f"{type(fits).__name__}") from err
        bad = [type(f).__name__ for f in fits if not isinstance(f, Fit)]
        if bad:
            raise ValueError(f"`fits` must hold Fit objects; got {', '.join(bad)}")
        names = [f.kernel + (f"-{f.settings['parameterization']}" if f.kernel == "rotated"
                             else "") for f in fits]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"`fits` has two fits both named {twice[0]!r} (same kernel); pass "
                             "a dict {name: Fit} to name them")
        fits = dict(zip(names, fits, strict=True))
    if not fits:
        raise ValueError("`fits` is empty")
    bad = {k: type(f).__name__ for k, f in fits.items() if not isinstance(f, Fit)}
    if bad:
        raise ValueError(f"`fits` must map names to Fit objects; got {bad}")
    if len({f.is_volume for f in fits.values()}) > 1:
        raise ValueError("`fits` mixes whole-volume (whittle) and point fits: their LOO is "
                         "over different data (groups of frequencies against points) and "
                         "cannot be ranked")
    first, *rest = fits.items()
    for name, f in rest:
        a, b = (np.hstack(dataclasses.astuple(g.std)) for g in (first[1], f))
        if not np.allclose(a, b, rtol=1e-9, atol=0.0):
            raise ValueError(f"`fits` {first[0]!r} and {name!r} were fitted to different data "
                             "(their centring and scaling differ); only fits to the same data "
                             "can be compared")
    return fits


def predict(fit: Fit, X_new=None, **kwargs):
    """Predict from a fit: at points ``X_new`` (P, 3) for a fit on points
    (:meth:`Fit.predict`: mean and sd in the user's units), or on the fitted grid
    for a whole-volume fit (:meth:`Fit.predict_grid`; ``X_new`` must be omitted)."""
    if not isinstance(fit, Fit):
        raise ValueError(f"`fit` must be a Fit (from aniso_gp.fit or Fit.load); got "
                         f"{type(fit).__name__}")
    if fit.is_volume:
        if X_new is not None:
            raise ValueError("`X_new` must be omitted for a whole-volume fit: it predicts at "
                             "every voxel of its grid")
        return fit.predict_grid(**kwargs)
    if X_new is None:
        raise ValueError("`X_new` is required for a fit on points: the (P, 3) coordinates "
                         "to predict at")
    return fit.predict(X_new, **kwargs)
