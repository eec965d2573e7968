"""HTML and Markdown reports of anisotropy fits, with their figures and tables.

:func:`write_report` turns one or more :class:`~aniso_gp.inference.Fit` objects
into a *run directory*::

    RUN_DIR/
      report.html        one self-contained file: CSS inline, figures as base64 PNG
      report.md          the same content; figures link to figures/*.png
      figures/*.png      stereonet, ellipsoid, length-scale densities, trace/rank, slices
      summary.csv        invariants of every fit (one block of rows per kernel)
      orientation.csv    principal axes of every fit (one block of rows per kernel)
      diagnostics.json   sampler diagnostics and flags of every fit
      comparison.csv     the model comparison table, when one was given
      report.json        what the report needs besides the fits (title, data summary, truth)
      report_volume.npz  the (possibly coarsened) data volume behind the slice figure
      fits/<name>/       saved fits (Fit.save); written by the caller, read by rebuild_report

:func:`rebuild_report` reloads ``fits/<name>`` and the files above and writes the
report again (after a plotting change, say) without refitting.

The report is built once as a list of neutral blocks (headings, paragraphs,
lists, tables, figures) and rendered twice, to HTML and to Markdown, so the
two can never disagree. Matplotlib is only reached through :mod:`aniso_gp.plots`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import io as _io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from aniso_gp import __version__, orientation, plots
from aniso_gp.calibration import LONG_AGAINST_GRID
from aniso_gp.datasets import Truth, Volume
from aniso_gp.run_dir import check_name, subdir, write_file

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
META_JSON = "report.json"
FIGURES_DIR = "figures"
INFLUENCE_CSV = "influence.csv"
FITS_DIR = "fits"
VOLUME_NPZ = "report_volume.npz"
COMPARISON_CSV = "comparison.csv"

# The slice figure predicts at every voxel of three planes; coarsening the
# volume to at most this many voxels per axis keeps that to ~3 * 40^2 points,
# a few seconds, whatever the size of the user's volume.
SLICE_MAX_VOXELS = 40
SLICE_PREDICT_DRAWS = 40
# Whole-volume fits: each draw is two grid solves (hundreds of FFT products each at low
# noise: 7 s per solve to 1e-2 at 40^3); the figure is qualitative, so two draws and a
# loose tolerance.
SLICE_GRID_DRAWS = 2
SLICE_GRID_TOL = 1e-2
FIGURE_DPI = 110


# --------------------------------------------------------------------------- #
# Blocks: the report's content, independent of the output format
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # already formatted: every cell a string
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class FigureBlock:
    name: str  # file stem under figures/
    caption: str
    png: bytes


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def write_report(
    run_dir,
    fits: Mapping,
    data_summary: Mapping,
    comparison: pd.DataFrame | None = None,
    truth: Truth | None = None,
    title: str = "Anisotropy report",
    volume: Volume | None = None,
    units: str = "",
    main: str | None = None,
    influence: pd.DataFrame | None = None,
) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ figures) into ``run_dir``.

    Args:
        run_dir: output directory (created if missing). Report files in it are
            replaced; nothing else there is touched.
        fits: ``{name: Fit}``, in the order they should appear. The *main* fit,
            whose orientation is reported and plotted, is ``main`` if given,
            else the first one with ``kernel == "rotated"``, else the first.
        data_summary: ``{label: value}`` shown as the data table (source, number
            of points, extent, ...). Values must be JSON-serialisable.
        comparison: the table of :func:`aniso_gp.inference.compare` (LOO,
            held-out RMSE / NLPD / coverage, errors against a truth), or None.
        truth: a known :class:`~aniso_gp.datasets.Truth` (synthetic data): the
            orientation table then lists the true axes and the angle errors,
            and the figures overlay it.
        volume: the data volume, for the slice figure (data, predictive mean and
            sd of the main fit on three orthogonal planes).
        units: length unit of the coordinates, used in labels.
        main: name of the main fit.
        influence: the table of :func:`aniso_gp.influence.case_deletion` or
            ``group_deletion`` for the main fit (``aniso-gp influence``): adds a section
            with the most influential observations and their map.

    Returns:
        ``(html_path, md_path)``.
    """
    fits = _check_fits(fits)
    main = _main_name(fits, main)
    if not isinstance(data_summary, Mapping):
        raise ValueError(f"`data_summary` must be a dict {{label: value}}; got "
                         f"{type(data_summary).__name__}")
    for name, v in (("title", title), ("units", units)):
        if not isinstance(v, str):
            raise ValueError(f"`{name}` must be a string; got {type(v).__name__}")
    if truth is not None and not isinstance(truth, Truth):
        raise ValueError(f"`truth` must be a datasets.Truth or None; got {type(truth).__name__}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"`run_dir` {str(run_dir)!r} exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    data_summary = dict(data_summary)
    coarsened = False
    if volume is not None:
        shown = _coarsen(volume, SLICE_MAX_VOXELS)
        coarsened, volume = shown is not volume, shown

    blocks = _build_blocks(fits, main, data_summary, comparison, truth, title, volume, units,
                           coarsened)
    if influence is not None:
        blocks += _influence_blocks(influence, main, units)
    _write_tables(run_dir, fits, comparison)
    _write_meta(run_dir, fits, main, data_summary, truth, title, units, volume)
    _write_figures(run_dir, blocks)
    html_path = write_file(run_dir / REPORT_HTML, render_html(blocks, title))
    md_path = write_file(run_dir / REPORT_MD, render_markdown(blocks, title))
    return html_path, md_path


def rebuild_report(run_dir) -> tuple[Path, Path]:
    """Rewrite the report of a run directory from its saved fits, without refitting.

    Reads ``report.json``, the fits under ``fits/<name>`` (``Fit.save``),
    ``comparison.csv`` and ``report_volume.npz`` when present. Raises
    ``FileNotFoundError`` naming what is missing.
    """
    from aniso_gp.inference import Fit  # the report renders fits; loading them needs inference

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run directory: {str(run_dir)!r}")
    meta_path = run_dir / META_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{str(meta_path)!r} not found: {str(run_dir)!r} is not a run directory written by "
            "aniso-gp (write_report)"
        )
    meta = read_meta(meta_path)
    fits = {name: Fit.load(run_dir / FITS_DIR / name) for name in meta["fits"]}
    comparison = None
    if (run_dir / COMPARISON_CSV).is_file():
        comparison = pd.read_csv(run_dir / COMPARISON_CSV, index_col=0)
    volume = None
    if meta.get("volume") and (run_dir / VOLUME_NPZ).is_file():
        with np.load(run_dir / VOLUME_NPZ, allow_pickle=False) as z:
            volume = Volume(density=z["density"], spacing=tuple(z["spacing"]),
                            origin=tuple(z["origin"]))
    try:
        truth = _truth_from_dict(meta.get("truth"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{str(meta_path)!r}: 'truth' is not a saved truth ({err})") from err
    influence = None
    if (run_dir / INFLUENCE_CSV).is_file():
        influence = read_influence(run_dir / INFLUENCE_CSV)
    return write_report(
        run_dir, fits, meta.get("data_summary", {}), comparison=comparison, truth=truth,
        title=meta.get("title", "Anisotropy report"), volume=volume,
        units=meta.get("units", ""), main=meta.get("main"), influence=influence,
    )


def read_influence(path) -> pd.DataFrame:
    """An ``influence.csv`` written by ``aniso-gp influence``, checked."""
    try:
        table = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} cannot be read as a CSV table: {err}") from err
    needed = {"x", "y", "z", "short_axis_change_deg"}  # + pareto_k, unreliable from PSIS
    if not needed <= set(table.columns) or table.index.name not in ("observation", "group"):
        raise ValueError(f"{str(path)!r} is not an influence table (columns "
                         f"{sorted(needed)}, indexed by observation or group)")
    return table


_META_TYPES = {"title": str, "units": str, "main": (str, type(None)), "data_summary": dict,
               "truth": (dict, type(None)), "volume": bool}


def read_meta(path: Path) -> dict:
    """``report.json``, checked before anything in it is used (fit names become paths)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object; got {type(meta).__name__}")
    names = meta.get("fits")
    if not isinstance(names, list) or not names or len(set(map(str, names))) != len(names):
        raise ValueError(f"{str(path)!r}: 'fits' must be a non-empty list of distinct fit "
                         f"names; got {names!r}")
    for name in names:
        check_name(name, f"{str(path)!r}: fit name")
    for key, kind in _META_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise ValueError(f"{str(path)!r}: {key!r} has the wrong type "
                             f"({type(meta[key]).__name__})")
    if meta.get("main") is not None and meta["main"] not in names:
        raise ValueError(f"{str(path)!r}: 'main' {meta['main']!r} is not one of 'fits'")
    return meta


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #
def _check_fits(fits) -> dict:
    if not isinstance(fits, Mapping) or not fits:
        raise ValueError("`fits` must be a non-empty dict {name: Fit}")
    for name, f in fits.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"fit names must be plain non-empty strings; got {name!r}")
        if not hasattr(f, "idata") or not hasattr(f, "orientation"):
            raise ValueError(f"`fits[{name!r}]` is not a Fit (got {type(f).__name__})")
    return dict(fits)


def _main_name(fits: dict, main: str | None) -> str:
    if main is not None:
        if main not in fits:
            raise ValueError(f"`main`={main!r} is not one of the fits {list(fits)}")
        return main
    rotated = [k for k, f in fits.items() if f.kernel == "rotated"]
    return rotated[0] if rotated else next(iter(fits))


def _truth_from_dict(d) -> Truth | None:
    if not d:
        return None
    arrays = {"lengthscales", "axis_angle", "metric", "axes"}
    return Truth(**{k: (np.asarray(v, dtype=np.float64) if k in arrays else v)
                    for k, v in d.items()})


def _coarsen(volume: Volume, max_voxels: int) -> Volume:
    """Every s-th voxel along each axis so no axis exceeds ``max_voxels``; physical frame kept."""
    if not isinstance(volume, Volume):
        raise ValueError(f"`volume` must be a datasets.Volume; got {type(volume).__name__}")
    step = [max(1, math.ceil(n / max_voxels)) for n in volume.shape]
    if step == [1, 1, 1]:
        return volume
    d = volume.density[:: step[0], :: step[1], :: step[2]]
    spacing = tuple(s * k for s, k in zip(volume.spacing, step, strict=True))
    return Volume(density=d, spacing=spacing, origin=volume.origin, units=volume.units,
                  value_units=volume.value_units)


# --------------------------------------------------------------------------- #
# Content
# --------------------------------------------------------------------------- #
def _build_blocks(fits, main, data_summary, comparison, truth, title, volume, units,
                  coarsened=False) -> list:
    f = fits[main]
    table = f.orientation()
    blocks: list = [
        Paragraph(
            f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by aniso_gp "
            f"{__version__}. Main fit: '{main}' ({_describe_settings(f.settings)})."
            + _calibration_sentence(f.settings.get("calibration"))
        ),
        Heading("Data"),
        Table(_key_value_frame(data_summary), "Data used for the fits."),
        Heading(f"Orientation ({main})"),
        Paragraph(_headline(table, units)),
        Table(_orientation_frame(table, f, truth, units),
              "Principal axes of the main fit: median length-scale with its 90% interval, "
              "mean direction (x, y, z), trend (clockwise from +y) and plunge (down from "
              "horizontal), 95% credible cone half-angle."),
    ]
    notes = list(table.attrs.get("notes", []))
    blocks.append(Bullets(tuple(notes)) if notes else Paragraph(
        "Identifiability: every pair of length-scales is resolved, so all three directions "
        "are identified."))
    if truth is not None:
        blocks.append(Paragraph(_truth_sentence(f, truth)))
    blocks += [Heading("Sampler diagnostics"), *_diagnostics_blocks(fits)]
    blocks += [Heading("Model comparison"), *_comparison_blocks(comparison)]
    blocks += [Heading("Figures"),
               *_figure_blocks(fits, main, table, truth, volume, units, coarsened)]
    return blocks


#: Rows of the influence table shown in the report (the CSV holds all).
INFLUENCE_ROWS = 10


def _influence_blocks(table: pd.DataFrame, main: str, units: str) -> list:
    kind = "group" if table.index.name == "group" else "observation"
    shown = table.head(INFLUENCE_ROWS)
    cols = [c for c in ("n_obs", "x", "y", "z", "short_axis_change_deg", "trend_deg",
                        "plunge_deg", "l1_change", "l3_change", "pareto_k") if c in shown]
    largest = (f"The largest change is {table['short_axis_change_deg'].iloc[0]:.2f} deg "
               f"({kind} {table.index[0]})")
    if "unreliable" in table:
        how = "by Pareto-smoothed importance sampling over the posterior draws (no refits)"
        caveat = (f"; {int(table['unreliable'].sum())} of {len(table)} estimates have Pareto"
                  " k > 0.7 and are unreliable: refit without those to check them.")
    else:
        how = ("to first order (the posterior covariance of each summary with the"
               " observation's leave-one-out log density; no refits)")
        caveat = (": a linearisation, reliable for small changes; check large ones by"
                  " case deletion (aniso-gp influence without --first-order) or a refit.")
    return [
        Heading("Influence"),
        Paragraph(
            f"How far the short axis of the '{main}' fit turns when each {kind} is left out, "
            f"{how}. {largest}{caveat}"),
        Table(shown[cols].map(_fmt), f"The {len(shown)} most influential {kind}s (all of "
              f"them in {INFLUENCE_CSV}); length-scale changes in {units or 'data units'}."),
        FigureBlock("influence", f"Where the influential {kind}s are: colour is the short "
                    "axis's change when left out; red rings mark unreliable estimates.",
                    _png(plots.influence_map(table, units))),
    ]


def _describe_settings(s: dict) -> str:
    parts = [f"kernel {s['kernel']}", f"base {s['base']}"]
    if s["kernel"] == "rotated":
        parts.append(f"parameterization {s['parameterization']}")
    parts.append(f"{s['likelihood']} likelihood")
    parts.append(f"{s['num_chains']} chains x {s['num_samples']} draws "
                 f"after {s['num_warmup']} warm-up")
    return ", ".join(parts)


def _calibration_sentence(cal: Mapping | None) -> str:
    """Whether a whole-volume fit's draws were adjusted, and which length-scales are
    too long against the grid for calibrated intervals ("" for other fits)."""
    if cal is None:
        return ""
    if cal["adjusted"]:
        lo, hi = min(cal["width_factors"]), max(cal["width_factors"])
        text = (f" Draws curvature-adjusted for the Whittle pseudo-likelihood (widths "
                f"x{lo:.2g} to x{hi:.2g}; J by {cal['J']}).")
    else:
        text = (" Draws NOT adjusted: the raw Whittle pseudo-posterior, whose intervals "
                "are too narrow.")
    ratios = cal.get("lengthscale_over_extent", [])
    long = [str(i + 1) for i, r in enumerate(ratios) if r > LONG_AGAINST_GRID]
    if long:
        text += (f" Length-scale {', '.join(long)} spans more than {LONG_AGAINST_GRID:g} of "
                 "the volume's extent along its axis, where 90% intervals were measured to "
                 "under-cover.")
    return text


def _headline(table: pd.DataFrame, units: str) -> str:
    """Plain-words summary of the strongest anisotropy and the shortest axis."""
    u = f" {units}" if units else ""
    l = table["l_median"].to_numpy()
    short = table.iloc[2]
    cone = _cone_column(table)
    return (
        f"Length-scales (median) {l[0]:.3g}, {l[1]:.3g} and {l[2]:.3g}{u}: the longest is "
        f"{l[0] / l[2]:.2g} times the shortest. The shortest axis (fastest decorrelation, e.g. "
        f"the normal of laminae or layers) has trend {short['trend_deg']:.0f} deg and plunge "
        f"{max(short['plunge_deg'], 0.0):.0f} deg, within a {cone[4:]}% cone of "
        f"{short[cone + '_deg']:.1f} deg."
    )


def _cone_column(table: pd.DataFrame) -> str:
    # orientation_table names it after the level, e.g. "cone95_deg".
    return next(c for c in table.columns if c.startswith("cone")).removesuffix("_deg")


def _truth_sentence(f, truth: Truth) -> str:
    err = orientation.axis_errors(f.axes_draws(), np.asarray(truth.axes))
    tl = np.asarray(truth.lengthscales)
    return (
        "Against the known truth (length-scales "
        f"{', '.join(f'{v:.3g}' for v in tl)}): the posterior mean axes are off by "
        f"{err[0]:.1f}, {err[1]:.1f} and {err[2]:.1f} degrees (axes 1, 2, 3). An error is only "
        "meaningful for an axis whose note above does not say it is unidentified."
    )


def _orientation_frame(table: pd.DataFrame, f, truth: Truth | None, units: str) -> pd.DataFrame:
    cone = _cone_column(table)
    out = pd.DataFrame(index=table.index)
    out[f"length-scale{f' ({units})' if units else ''}"] = [
        f"{r.l_median:.3g} [{r.l_lo:.3g}, {r.l_hi:.3g}]" for r in table.itertuples()
    ]
    out["direction (x, y, z)"] = [
        f"({r.dir_x:+.2f}, {r.dir_y:+.2f}, {r.dir_z:+.2f})" for r in table.itertuples()
    ]
    out["trend / plunge (deg)"] = [
        # max(): a horizontal axis can come out at plunge -1e-17, printed "-0".
        f"{r.trend_deg:.0f} / {max(r.plunge_deg, 0.0):.0f}" for r in table.itertuples()
    ]
    out[f"{cone[4:]}% cone (deg)"] = [f"{v:.1f}" for v in table[cone + "_deg"]]
    if truth is not None:
        axes = np.asarray(truth.axes)
        tr, pl = orientation.trend_plunge(axes.T)
        err = orientation.axis_errors(f.axes_draws(), axes)
        out["truth: l, trend / plunge"] = [
            f"{l:.3g}, {t:.0f} / {max(p, 0.0):.0f}"
            for l, t, p in zip(np.asarray(truth.lengthscales), tr, pl, strict=True)
        ]
        out["error (deg)"] = [f"{e:.1f}" for e in err]
    out["note"] = [n or "-" for n in table["note"]]
    return out


def _diagnostics_blocks(fits: dict) -> list:
    blocks: list = [Paragraph(
        "R-hat and effective sample sizes are computed on invariants (sorted length-scales, "
        "metric entries, signal, noise, mean), which do not depend on how the principal axes "
        "are labelled; on raw axis-angles they would be meaningless. Targets: R-hat below "
        "1.01, bulk ESS of at least 400, no divergent transitions."
    )]
    for name, f in fits.items():
        d = f.diagnostics()
        blocks.append(Paragraph(f"{name}: {diagnostics_sentence(d)}"))
        blocks.append(Bullets(tuple(d["flags"])))
    return blocks


def diagnostics_sentence(d: Mapping) -> str:
    """One sentence from a :meth:`Fit.diagnostics` dict."""
    wall = d.get("wall_time_s")
    took = f" in {wall:.0f} s" if wall is not None else ""
    return (
        f"{d['chains']} chains, {d['draws']} draws in all{took}; {d['divergences']} divergent "
        f"transitions; largest R-hat {d['max_r_hat']:.3f}; smallest bulk ESS "
        f"{d['min_ess_bulk']:.0f} and tail ESS {d['min_ess_tail']:.0f}; E-BFMI "
        f"{d['min_e_bfmi']:.2f}; {d['mean_steps_per_draw']:.0f} leapfrog steps per draw."
    )


_COMPARISON_LABELS = {
    "loo_rank": "LOO rank (0 = best)",
    "elpd_loo": "elpd LOO",
    "elpd_se": "elpd se",
    "elpd_diff": "elpd diff",
    "elpd_dse": "se of diff",
    "p_loo": "p LOO",
    "max_pareto_k": "max Pareto k",
    "rmse": "held-out RMSE",
    "nlpd": "held-out NLPD",
    "coverage90": "90% coverage",
    "relative_frobenius": "metric rel. Frobenius err",
    "affine_invariant": "metric affine-inv. err",
    "log_euclidean": "metric log-Eucl. err",
    "axis1_err_deg": "axis 1 err (deg)",
    "axis2_err_deg": "axis 2 err (deg)",
    "axis3_err_deg": "axis 3 err (deg)",
    "max_r_hat": "max R-hat",
    "min_ess_bulk": "min bulk ESS",
    "divergences": "divergences",
}


def _comparison_blocks(comparison: pd.DataFrame | None) -> list:
    if comparison is None or len(comparison) == 0:
        return [Paragraph("No model comparison was run.")]
    cols = [c for c in _COMPARISON_LABELS if c in comparison.columns]
    cols += [c for c in comparison.columns if c not in _COMPARISON_LABELS]
    frame = comparison[cols].map(_fmt).rename(columns=_COMPARISON_LABELS)
    blocks = [
        Paragraph(ranking_sentence(comparison)),
        Table(frame, "Higher elpd LOO is better (closed-form GP leave-one-out, PSIS); lower "
              "RMSE and NLPD are better; 90% coverage should be near 0.90. Metric and axis "
              "errors are against the known truth, where there is one."),
    ]
    return blocks


def ranking_sentence(comparison: pd.DataFrame) -> str:
    """The LOO ranking in words, with the elpd gap of each model to the best."""
    if "elpd_loo" not in comparison.columns:
        return "The comparison table has no LOO column."
    ranked = comparison.sort_values("elpd_loo", ascending=False)
    names = list(ranked.index)
    if len(names) == 1:
        return f"Only one model ({names[0]}): elpd LOO {ranked['elpd_loo'].iloc[0]:.1f}."
    best = ranked.iloc[0]
    gaps = []
    for name, row in ranked.iloc[1:].iterrows():
        gap = best["elpd_loo"] - row["elpd_loo"]
        # The standard error of the difference (ArviZ's dse) is the right yardstick;
        # without it, fall back to the model's own elpd se, which overstates it.
        if "elpd_dse" in row and np.isfinite(row["elpd_dse"]):
            gaps.append(f"{name} by {gap:.1f} +- {row['elpd_dse']:.1f}")
        else:
            se = row.get("elpd_se", float("nan"))
            gaps.append(f"{name} by {gap:.1f} (elpd se of {name} {se:.1f})")
    text = (f"By LOO the ranking is {' > '.join(map(str, names))}: {names[0]} leads "
            + "; ".join(gaps) + ".")
    if "rmse" in comparison.columns:
        by_rmse = comparison.sort_values("rmse").index
        text += f" By held-out RMSE: {' < '.join(map(str, by_rmse))}."
    return text


# --------------------------------------------------------------------------- #
# Figures
# --------------------------------------------------------------------------- #
def _figure_blocks(fits, main, table, truth, volume, units, coarsened=False) -> list:
    f = fits[main]
    t_axes = None if truth is None else np.asarray(truth.axes)
    cone = _cone_column(table)
    means = table[["dir_x", "dir_y", "dir_z"]].to_numpy().T  # directions as columns
    out = [
        FigureBlock("stereonet", (
            f"Principal axes of {main}: posterior draws, mean directions and {cone[4:]}% "
            "credible cones on a lower-hemisphere equal-area net (x East, y North, z Up)"
            + ("; stars: truth." if truth is not None else ".")),
            # Cones are left to stereonet: the same quantile of the axial angles to
            # these means as the table's, and the legend then states the level.
            _png(plots.stereonet(f.axes_draws(), mean_axes=means, truth_axes=t_axes,
                                 level=float(cone[4:]) / 100))),
        FigureBlock("ellipsoid", (
            f"Metric ellipsoid of {main}: the log-Euclidean posterior mean metric; its "
            "semi-axes are the length-scales" + ("; wireframe: truth." if truth is not None
                                                   else ".")),
            _png(plots.ellipsoid(orientation.log_euclidean_mean(f.metric_draws()),
                                 truth=None if truth is None else np.asarray(truth.metric),
                                 units=units))),
        FigureBlock("lengthscales", (
            "Posterior densities of the sorted length-scales, one curve per kernel"
            + ("; dashed: truth." if truth is not None else ".")),
            _png(plots.lengthscale_densities(
                {k: v.lengthscale_draws() for k, v in fits.items()},
                truth=None if truth is None else np.asarray(truth.lengthscales),
                units=units))),
        FigureBlock("trace_rank", (
            f"Trace and rank plots of invariants of {main}: flat rank histograms mean the "
            "chains agree."),
            _png(plots.trace_rank(_invariant_chains(f)))),
    ]
    if volume is not None:
        out.append(FigureBlock("slices", (
            f"Orthogonal mid-planes of the data volume and of the predictive mean and sd of "
            f"{main}" + (" (volume thinned to every k-th voxel for display)" if coarsened else "")
            + (f"; for a whole-volume fit the sd is a Monte Carlo estimate from "
               f"{SLICE_GRID_DRAWS} conditional simulations, so its texture is noise "
               "(`Fit.predict_grid` with more draws gives a smooth one)"
               if f.is_volume else "") + "."),
            _png(plots.slices(_slice_volumes(f, volume), units=units))))
    return out


def _invariant_chains(f) -> dict:
    post = f.idata.posterior
    l = np.asarray(post["lengthscales"])  # (chain, draw, 3)
    out = {f"l{i + 1}": l[..., i] for i in range(3)}
    for k in ("signal", "noise"):
        out[k] = np.asarray(post[k])
    return out


def _slice_volumes(f, volume: Volume) -> dict:
    """Data, predictive mean and sd on the three mid-planes (NaN elsewhere: not predicted).

    A whole-volume fit predicts its whole grid (FFT kriging); the three volumes
    are then thinned like the data for display.
    """
    if f.is_volume:
        gv = f.gridded()
        mean, sd, _ = f.predict_grid(num_draws=SLICE_GRID_DRAWS, tol=SLICE_GRID_TOL)
        frame = {"spacing": gv.spacing, "origin": gv.origin}
        full = {"data": Volume(density=gv.values, **frame),
                "predictive mean": Volume(density=mean, **frame),
                "predictive sd": Volume(density=sd, **frame)}
        return {k: _coarsen(v, SLICE_MAX_VOXELS) for k, v in full.items()}
    shape = volume.shape
    mid = tuple(n // 2 for n in shape)
    on_plane = np.zeros(shape, dtype=bool)
    on_plane[mid[0], :, :] = on_plane[:, mid[1], :] = on_plane[:, :, mid[2]] = True
    X = volume.coordinates()[on_plane.ravel()]
    mean, sd = f.predict(X, return_std=True, num_draws=SLICE_PREDICT_DRAWS)
    mu = np.full(shape, np.nan)
    s = np.full(shape, np.nan)
    mu[on_plane], s[on_plane] = mean, sd
    return {
        "data": volume,
        "predictive mean": Volume(density=mu, spacing=volume.spacing, origin=volume.origin),
        "predictive sd": Volume(density=s, spacing=volume.spacing, origin=volume.origin),
    }


def _png(fig) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #
_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 75em; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
caption { caption-side: bottom; font-size: .85em; color: #555; text-align: left; padding: .3em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #444; }
"""


def render_html(blocks: list, title: str) -> str:
    """One self-contained HTML page: inline CSS, figures as base64 data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Bullets):
            items = "".join(f"<li>{html.escape(t)}</li>" for t in b.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(b, Table):
            body.append(_html_table(b))
        elif isinstance(b, FigureBlock):
            data = base64.b64encode(b.png).decode("ascii")
            body.append(
                f'<figure id="fig-{b.name}"><img alt="{html.escape(b.name)}" '
                f'src="data:image/png;base64,{data}"><figcaption>'
                f"{html.escape(b.caption)}</figcaption></figure>"
            )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [t.frame.index.name or ""]
                   + list(t.frame.columns))
    rows = []
    for idx, row in t.frame.iterrows():
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        rows.append(f"<tr><th>{html.escape(str(idx))}</th>{cells}</tr>")
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_markdown(blocks: list, title: str) -> str:
    """Markdown twin of :func:`render_html`; figures link to ``figures/<name>.png``.

    Every text (titles, file and column names, cells) goes through :func:`md_text`,
    so user strings show literally and cannot inject Markdown or HTML.
    """
    out = [f"# {md_text(title)}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + md_text(b.text), ""]
        elif isinstance(b, Paragraph):
            out += [md_text(b.text), ""]
        elif isinstance(b, Bullets):
            out += [f"- {md_text(t)}" for t in b.items] + [""]
        elif isinstance(b, Table):
            out += _markdown_table(b.frame)
            out += ([f"*{md_text(b.caption)}*", ""] if b.caption else [])
        elif isinstance(b, FigureBlock):
            name = check_name(b.name, "figure")
            out += [f"![{name}]({FIGURES_DIR}/{name}.png)", "", f"*{md_text(b.caption)}*", ""]
    return "\n".join(out)


# Characters with a Markdown (or inline HTML) meaning anywhere in a line; the ones that
# only act at the start of a line are handled by _MD_LINE_START.
_MD_INLINE = re.compile(r"([\\`*_\[\]<>|~&])")
_MD_LINE_START = re.compile(r"^([#=+>-]|\d+(?=[.)]))")


def md_text(text) -> str:
    """``text`` on one line, escaped so that Markdown renders it literally."""
    flat = " ".join(str(text).split())
    flat = _MD_INLINE.sub(r"\\\1", flat)
    return _MD_LINE_START.sub(lambda m: (m.group(1) + "\\") if m.group(1)[0].isdigit()
                              else "\\" + m.group(1), flat, count=1)


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    header = [frame.index.name or ""] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(md_text(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join(md_text(v) for v in [idx, *row]) + " |")
    return [*lines, ""]


def _key_value_frame(d: Mapping) -> pd.DataFrame:
    frame = pd.DataFrame({"value": [_fmt(v) for v in d.values()]},
                         index=pd.Index([str(k) for k in d], name="item"))
    return frame


def _fmt(v) -> str:
    """Compact, readable cell text: 4 significant digits for floats, lists joined."""
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        if not np.isfinite(v):
            return "-"
        return f"{v:.4g}"
    if isinstance(v, list | tuple | np.ndarray):
        return ", ".join(_fmt(x) for x in v)
    if v is None:
        return "-"
    return str(v)


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #
def _write_figures(run_dir: Path, blocks: list) -> None:
    fig_dir = subdir(run_dir, FIGURES_DIR)
    for b in blocks:
        if isinstance(b, FigureBlock):
            write_file(fig_dir / f"{b.name}.png", b.png)


def _write_tables(run_dir: Path, fits: dict, comparison: pd.DataFrame | None) -> None:
    summary = pd.concat({k: f.summary() for k, f in fits.items()}, names=["kernel", "quantity"])
    write_file(run_dir / "summary.csv", summary.to_csv())
    orient = pd.concat({k: f.orientation() for k, f in fits.items()}, names=["kernel", "axis"])
    write_file(run_dir / "orientation.csv", orient.to_csv())
    diag = {k: f.diagnostics() for k, f in fits.items()}
    write_file(run_dir / "diagnostics.json", json.dumps(_jsonable(diag), indent=2))
    if comparison is not None:
        write_file(run_dir / COMPARISON_CSV, comparison.to_csv())


def _write_meta(run_dir, fits, main, data_summary, truth, title, units, volume) -> None:
    meta = {
        "title": title,
        "units": units,
        "main": main,
        "fits": list(fits),
        "data_summary": _jsonable(data_summary),
        "truth": None if truth is None else _jsonable(truth.as_dict()),
        "volume": volume is not None,
        "aniso_gp_version": __version__,
    }
    write_file(run_dir / META_JSON, json.dumps(meta, indent=2))
    if volume is not None:
        buf = _io.BytesIO()
        np.savez_compressed(buf, density=volume.density, spacing=np.asarray(volume.spacing),
                            origin=np.asarray(volume.origin))
        write_file(run_dir / VOLUME_NPZ, buf.getvalue())


def _jsonable(v):
    """Numpy scalars/arrays and tuples -> plain JSON types; NaN -> None."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
