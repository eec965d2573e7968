r"""The result of a fit: :class:`Fit` (posterior draws in the user's units, summaries,
prediction, saving) and the :class:`Standardizer` that maps data to the units the
model is fitted in. :func:`aniso_gp.inference.fit` makes both; ``Fit.load`` reads a
saved one back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm

from aniso_gp import _validation as check
from aniso_gp import diagnostics, gridded, kernels, orientation
from aniso_gp.likelihoods import exact_predict, lowrank_predict
from aniso_gp.models import dense_covariance, lowrank_parts
from aniso_gp.run_dir import write_file

FORMAT_VERSION = 1  # of the saved settings.json


#: A spread below this fraction of the data's magnitude is round-off, not variation.
RELATIVE_SPREAD = 1e-10


def _robust_mean_sd(v: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation without overflow or underflow (scaled first)."""
    mag = float(np.max(np.abs(v)))
    if not mag > 0:
        return 0.0, 0.0
    u = v / mag
    m = float(np.mean(u))
    return m * mag, float(np.sqrt(np.mean((u - m) ** 2))) * mag


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """``x_std = (x - center) / x_scale`` (one scale, all axes); ``y_std = (y - y_mean) / y_sd``."""

    center: tuple[float, float, float]
    x_scale: float
    y_mean: float
    y_sd: float
    extent: float

    @classmethod
    def from_data(cls, X: np.ndarray, y: np.ndarray) -> Standardizer:
        """Centre and scale of points ``X`` (N, 3) and values ``y`` (N,).

        Each is divided by its largest magnitude before anything is squared, so data
        scaled by 1e-200 or 1e200 standardise as well as data near 1. "Constant" and
        "one location" are decided relative to that magnitude (a spread below
        :data:`RELATIVE_SPREAD` of it is round-off), and points must span three
        dimensions: along a direction they do not extend in, no length-scale is
        identified.
        """
        y_mean, y_sd = _robust_mean_sd(y)
        if not y_sd > RELATIVE_SPREAD * float(np.max(np.abs(y))):
            raise ValueError("`y` is constant (its spread is below 1e-10 of its magnitude): "
                             "there is no spatial variation to model")
        mag = float(np.max(np.abs(X)))
        Xu = X / mag if mag > 0 else X
        center = Xu.mean(axis=0)
        spread = np.sqrt(np.mean((Xu - center) ** 2, axis=0))
        if not np.max(spread) > RELATIVE_SPREAD:  # Xu's largest magnitude is 1 (or all 0)
            raise ValueError("`X` has all points at one location (their spread is below "
                             "1e-10 of their magnitude)")
        sv = np.linalg.svd((Xu - center) / np.max(spread), compute_uv=False)
        rank = int(np.sum(sv > 1e-8 * sv[0]))
        if rank < 3:
            what = "a plane (2-D)" if rank == 2 else "a line (1-D)"
            raise ValueError(f"`X` spans only {what}: the points do not extend in every "
                             "direction, so the correlation length across it cannot be "
                             "estimated; 3-D anisotropy needs points spread in 3-D")
        x_scale = float(np.sqrt(np.mean(spread ** 2))) * mag
        extent = float(np.max(np.ptp(Xu, axis=0))) * mag
        return cls(tuple(float(c) * mag for c in center), x_scale, y_mean, y_sd, extent)

    @classmethod
    def from_grid(cls, gv) -> Standardizer:
        """The same statistics for the observed voxels of a
        :class:`~aniso_gp.gridded.GriddedVolume`, without forming their coordinates."""
        vals = gv.values[gv.mask]
        y_mean, y_sd = _robust_mean_sd(vals)
        if not y_sd > RELATIVE_SPREAD * float(np.max(np.abs(vals))):
            raise ValueError("the volume is constant over its observed voxels: there is no "
                             "spatial variation to model")
        mean, var, ptp = gv.coordinate_moments()
        return cls(tuple(map(float, mean)), float(np.sqrt(np.mean(var))), y_mean, y_sd,
                   float(np.max(ptp)))

    def x(self, X):
        return (jnp.asarray(X) - jnp.asarray(self.center)) / self.x_scale

    def y(self, y):
        return (jnp.asarray(y) - self.y_mean) / self.y_sd


class Fit:
    """Posterior of an anisotropic GP fit; every number is in the user's units."""

    def __init__(self, idata, settings: dict):
        self.idata = idata
        self.settings = settings
        self.std = Standardizer(**{k: (tuple(v) if k == "center" else v)
                                   for k, v in settings["standardizer"].items()})
        self._summary = None

    # -- draws --------------------------------------------------------------- #
    def _draws(self, name) -> np.ndarray:
        v = np.asarray(self.idata.posterior[name])
        return v.reshape((-1,) + v.shape[2:])

    @property
    def kernel(self) -> str:
        return self.settings["kernel"]

    @property
    def is_volume(self) -> bool:
        """True for a whole-volume (``likelihood="whittle"``) fit."""
        return "grid" in self.settings

    def gridded(self) -> gridded.GriddedVolume:
        """The fitted volume (NaN off the mask), for a whole-volume fit."""
        if not self.is_volume:
            raise ValueError("this fit was made on points, not on a volume")
        g = self.settings["grid"]
        vals = np.asarray(self.idata.observed_data["volume"])
        return gridded.GriddedVolume(vals, ~np.isnan(vals), tuple(g["spacing"]),
                                     tuple(g["origin"]), g["taper"])

    @property
    def X(self) -> np.ndarray:
        """Coordinates (N, 3) of the fitted points (of the observed voxels of a volume)."""
        if self.is_volume:
            return self.gridded().points()[0]
        return np.asarray(self.idata.constant_data["X"])

    @property
    def y(self) -> np.ndarray:
        """Values (N,) of the fitted points (of the observed voxels of a volume)."""
        if self.is_volume:
            return self.gridded().points()[1]
        return np.asarray(self.idata.observed_data["y"])

    def _extent(self) -> np.ndarray:
        if self.is_volume:
            return np.asarray(self.settings["grid"]["extent"])
        return np.ptp(self.X, axis=0)

    def metric_draws(self) -> np.ndarray:
        """Metric draws ``M`` (S, 3, 3) in the user's units (inverse squared length)."""
        return self._draws("metric")

    def axes_draws(self) -> np.ndarray:
        """Principal axes (S, 3, 3), one per column, canonical order (longest first)."""
        return self._draws("axes")

    def lengthscale_draws(self) -> np.ndarray:
        """Sorted length-scales (S, 3), longest first, in the user's units."""
        return self._draws("lengthscales")

    def canonical_draws(self) -> pd.DataFrame:
        """One row per draw: chain, draw, canonical length-scales and axis-angle, signal,
        noise, mean."""
        post = self.idata.posterior
        C, D = post.sizes["chain"], post.sizes["draw"]
        l = self._draws("lengthscales")
        a = self._draws("axis_angle")
        return pd.DataFrame({
            "chain": np.repeat(np.arange(C), D),
            "draw": np.tile(np.arange(D), C),
            "l1": l[:, 0], "l2": l[:, 1], "l3": l[:, 2],
            "a_x": a[:, 0], "a_y": a[:, 1], "a_z": a[:, 2],
            "signal": self._draws("signal"),
            "noise": self._draws("noise"),
            "mean": self._draws("mean"),
        })

    def _invariants(self) -> dict[str, np.ndarray]:
        post = self.idata.posterior
        l = np.asarray(post["lengthscales"])
        M = np.asarray(post["metric"])
        inv = {f"l{i + 1}": l[..., i] for i in range(3)}
        names = "xyz"
        for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
            inv[f"M_{names[i]}{names[j]}"] = M[..., i, j]
        for k in ("signal", "noise", "mean"):
            inv[k] = np.asarray(post[k])
        return inv

    # -- summaries ------------------------------------------------------------ #
    def summary(self) -> pd.DataFrame:
        """Invariants (sorted length-scales, metric entries, signal, noise, mean):
        mean, sd, 5/50/95% quantiles, R-hat and bulk/tail ESS."""
        if self._summary is None:
            self._summary = diagnostics.invariant_summary(self._invariants())
        return self._summary.copy()

    def diagnostics(self) -> dict:
        """Divergences, max R-hat / min ESS on invariants, E-BFMI, steps per draw, flags."""
        return diagnostics.sampler_report(
            self.idata, self.summary(), self.settings.get("wall_time_s")
        )

    def orientation(self, interval: float = 0.9, cone_level: float = 0.95) -> pd.DataFrame:
        """One row per principal axis: length-scale median and interval, mean axial direction,
        trend/plunge, credible-cone half-angle and a plain-words identifiability note."""
        interval = check.open_unit(interval, "interval")
        cone_level = check.open_unit(cone_level, "cone_level")
        return orientation.orientation_table(
            self._draws("lengthscales"), self.axes_draws(),
            interval=interval, cone_level=cone_level, extent=self._extent(),
            fixed_axes=self.kernel == "ard",
        )

    def loo(self) -> dict:
        return diagnostics.loo(self.idata)

    # -- prediction ------------------------------------------------------------ #
    def standardised_draws(self, num_draws: int) -> dict:
        """``num_draws`` evenly thinned draws of ``A_std``, ``signal``, ``noise``, ``mean``
        in the standardised units the model was fitted in (for predictors)."""
        num_draws = check.positive_int(num_draws, "num_draws")
        S = self._draws("signal").shape[0]
        idx = np.unique(np.linspace(0, S - 1, min(num_draws, S)).round().astype(int))
        pick = {k: jnp.asarray(self._draws(k)[idx]) for k in ("A_std", "signal", "noise", "mean")}
        pick["signal"] = pick["signal"] / self.std.y_sd
        pick["noise"] = pick["noise"] / self.std.y_sd
        pick["mean"] = (pick["mean"] - self.std.y_mean) / self.std.y_sd
        return pick

    def predict_grid(self, num_draws: int = 20, num_simulations: int = 1, **kwargs):
        """Posterior mean and sd at every voxel of a whole-volume fit's grid (FFT kriging and
        conditional simulation): see :func:`aniso_gp.grid_prediction.predict_grid`."""
        from aniso_gp.grid_prediction import predict_grid

        return predict_grid(self, num_draws, num_simulations, **kwargs)

    def predict_draws(self, X_new, num_draws: int = 200):
        """Per-draw Gaussian predictives at ``X_new`` in standardised units.

        Returns ``(mu, var, noise_var)``: (S, P), (S, P) latent, (S,) noise variance.
        """
        if self.is_volume:
            raise ValueError("a whole-volume fit predicts on its grid: use Fit.predict_grid "
                             "(mean and sd at every voxel)")
        X_new = check.coordinates(X_new, "X_new")
        d = self.standardised_draws(num_draws)
        Xs, ys = self.std.x(self.X), self.std.y(self.y)
        Xn = self.std.x(X_new)
        base = self.settings["base"]
        lm = self.settings.get("landmarks")

        if lm is None:
            def one(args):
                A, s, e, m = args
                Cov = dense_covariance(Xs @ A, s, e, base)
                Kx = kernels.gram_transformed(Xs @ A, Xn @ A, s**2, base)
                mu, var = exact_predict(Cov, ys - m, Kx, jnp.full(Xn.shape[0], s**2))
                return mu + m, var
        else:
            Xm = jnp.asarray(lm)
            fitc = self.settings["likelihood"] == "fitc"

            def one(args):
                A, s, e, m = args
                U, diag, Un = lowrank_parts(Xs @ A, Xm @ A, s, e, base, fitc, Xn @ A)
                mu, var = lowrank_predict(U, diag, ys - m, Un, jnp.full(Xn.shape[0], s**2))
                return mu + m, var

        mu, var = jax.lax.map(jax.jit(one), (d["A_std"], d["signal"], d["noise"], d["mean"]),
                              batch_size=8)
        return mu, var, d["noise"] ** 2

    def predict(self, X_new, return_std: bool = True, include_noise: bool = False,
                num_draws: int = 200):
        """Posterior predictive mean (and sd) at ``X_new`` (P, 3), mixing over thinned draws.

        ``include_noise`` adds the observation noise (predicting new measurements
        rather than the latent field).
        """
        return_std = check.flag(return_std, "return_std")
        include_noise = check.flag(include_noise, "include_noise")
        mu, var, nv = self.predict_draws(X_new, num_draws)
        if include_noise:
            var = var + nv[:, None]
        mean = jnp.mean(mu, axis=0)
        total = jnp.mean(var + mu**2, axis=0) - mean**2
        mean_u = np.asarray(mean) * self.std.y_sd + self.std.y_mean
        if not return_std:
            return mean_u
        return mean_u, np.sqrt(np.maximum(np.asarray(total), 0.0)) * self.std.y_sd

    def score(self, X_test, y_test, num_draws: int = 200) -> dict:
        """Held-out RMSE, mean NLPD and 90% interval coverage of the predictive mixture."""
        y_test = np.asarray(check.values(y_test, name="y_test"))
        mu, var, nv = self.predict_draws(X_test, num_draws)
        if y_test.shape[0] != mu.shape[1]:
            raise ValueError("`y_test` and `X_test` have different numbers of points")
        yt = self.std.y(y_test)
        sd = jnp.sqrt(var + nv[:, None])
        S = mu.shape[0]
        logp = logsumexp(norm.logpdf(yt[None, :], mu, sd), axis=0) - math.log(S)
        cdf = jnp.mean(norm.cdf((yt[None, :] - mu) / sd), axis=0)
        mean_u = np.asarray(jnp.mean(mu, axis=0)) * self.std.y_sd + self.std.y_mean
        return {
            "rmse": float(np.sqrt(np.mean((mean_u - y_test) ** 2))),
            "nlpd": float(-np.mean(np.asarray(logp)) + math.log(self.std.y_sd)),
            "coverage90": float(np.mean((np.asarray(cdf) > 0.05) & (np.asarray(cdf) < 0.95))),
        }

    # -- persistence ------------------------------------------------------------ #
    def save(self, path, overwrite: bool = False) -> Path:
        """Write ``path/posterior.nc`` and ``path/settings.json``; never overwrites unless asked."""
        path = Path(path)
        files = (path / "posterior.nc", path / "settings.json")
        if not overwrite and any(f.exists() for f in files):
            raise FileExistsError(
                f"{path} already holds a saved fit; pass overwrite=True to replace it"
            )
        path.mkdir(parents=True, exist_ok=True)
        # A fresh temporary directory of our own, so a link planted at any fixed
        # temporary name is never written through; settings.json last marks it complete.
        tmp = Path(tempfile.mkdtemp(dir=path, prefix=".posterior."))
        try:
            diagnostics.to_netcdf(self.idata, tmp / "posterior.nc")
            os.replace(tmp / "posterior.nc", files[0])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        write_file(files[1], json.dumps(self.settings, indent=2))
        return path

    @classmethod
    def load(cls, path) -> Fit:
        path = Path(path)
        nc, js = path / "posterior.nc", path / "settings.json"
        for f in (nc, js):
            if not f.exists():
                raise FileNotFoundError(
                    f"{f} not found: is {path} a directory written by Fit.save?")
        try:
            settings = json.loads(js.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{js} is not a saved fit's settings (not JSON: {err})") from err
        if not isinstance(settings, dict) or settings.get("format_version") != FORMAT_VERSION:
            found = settings.get("format_version") if isinstance(settings, dict) else settings
            raise ValueError(f"{js}: unsupported format_version {found!r}")
        try:
            idata = diagnostics.from_netcdf(nc)
        except Exception as err:  # netCDF4/h5py/xarray each raise their own on a bad file
            raise ValueError(f"{nc} cannot be read as a saved posterior "
                             f"({type(err).__name__}: {err})") from err
        try:
            return cls(idata, settings)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} does not hold a consistent saved fit "
                             f"({type(err).__name__}: {err})") from err

    def __repr__(self) -> str:
        s = self.settings
        n = s["grid"]["observed_voxels"] if self.is_volume else self.X.shape[0]
        return (f"Fit(kernel={s['kernel']!r}, base={s['base']!r}, "
                f"parameterization={s['parameterization']!r}, likelihood={s['likelihood']!r}, "
                f"N={n}, chains={s['num_chains']}, draws={s['num_samples']})")
