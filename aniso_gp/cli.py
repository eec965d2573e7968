"""The ``aniso-gp`` command: ``demo``, ``fit``, ``compare``, ``report``, ``influence`` and
``map``.

Each analysis writes a *run directory* (layout in :mod:`aniso_gp.report`):
saved fits under ``fits/<kernel>``, ``points.csv`` (the points used, with their
train/test split), summary / orientation / comparison tables, diagnostics,
figures and the HTML + Markdown report.

Safety rules, in one place (:func:`staged_output`):

* an existing output directory is never replaced without ``--force``;
* the run is written into a sibling ``OUT.partial`` and renamed to ``OUT`` only
  when everything is done, so ``OUT`` is always complete;
* every artefact is written as soon as it exists (each fit is saved when its
  sampler finishes), so an interrupted or failed run leaves what it finished in
  ``OUT.partial``;
* a user error (missing file, bad column, unreadable format, existing output,
  a kernel matrix that cannot be factorised) exits with status 1 and one line
  on stderr, without a traceback; Ctrl-C exits with 130.

Heavy imports (JAX, NumPyro, ArviZ, matplotlib) happen inside the commands, so
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from aniso_gp import _validation as check

PROG = "aniso-gp"
KERNEL_CHOICES = check.KERNELS
BASE_CHOICES = check.BASES
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
TABLE_SUBSAMPLE = 400
USER_ERRORS = (ValueError, OSError, np.linalg.LinAlgError)


@dataclasses.dataclass(frozen=True)
class DemoSize:
    """Sizes of the embedded nano-brick demo (fitted whole, every voxel)."""

    shape: tuple[int, int, int]
    chains: int
    warmup: int
    samples: int


# Full demo: a 40^3 nano-brick (64,000 voxels), every voxel through the Whittle likelihood,
# one chain per core of 300 + 300 draws for each kernel. Quick: a smoke run of the same
# pipeline.
DEMO_FULL = DemoSize(shape=(40, 40, 40), chains=2, warmup=300, samples=300)
DEMO_QUICK = DemoSize(shape=(12, 12, 12), chains=2, warmup=40, samples=40)


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #
class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: what is finished is kept and can be resumed."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 on success)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        with _as_options():
            args.handler(args)
    except KeyboardInterrupt as err:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(err, Terminated) else \
            ("interrupted", 130)
        where = " ".join(getattr(err, "__notes__", []))
        print(f"{PROG}: {what} {where}".rstrip(), file=sys.stderr)
        return code
    except USER_ERRORS as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 1
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return 0


#: API argument -> the option (or operand) that sets it, for error messages: a user of the
#: command line should read the names they typed. ``y`` is DATA's values, except around
#: read_table, where it is the --y column (see load_data).
_OPTION_OF = {
    "X": "DATA", "volume": "DATA", "path": "DATA", "path_or_dataframe": "DATA",
    "y": "the values of DATA", "spacing": "--spacing", "origin": "--spacing",
    "shape": "--shape", "dtype": "--dtype", "offset": "--offset", "dataset": "--dataset",
    "mask": "--mask", "threshold": "--threshold", "taper": "--taper", "box": "--crop",
    "n": "--subsample", "method": "--subsample-method", "test_fraction": "--holdout",
    "x": "--x", "z": "--z", "value": "--value", "tile": "--tile", "stride": "--stride",
    "min_observed": "--min-observed", "workers": "--workers", "n_workers": "--workers",
    "scheduler": "--scheduler", "num_chains": "--chains", "num_warmup": "--warmup",
    "num_samples": "--samples", "num_landmarks": "--landmarks", "seed": "--seed",
    "base": "--base", "kernel": "--kernel", "likelihood": "--likelihood",
    "size": "--block", "num_draws": "--draws",
}


@contextlib.contextmanager
def _as_options(**extra):
    """Rewrite the API argument names in a ValueError's message (`spacing`, value='g')
    as the command line's options (--spacing, --value 'g')."""
    names = {**_OPTION_OF, **extra}
    try:
        yield
    except ValueError as err:
        text = str(err)
        new = re.sub(r"`(\w+)`", lambda m: names.get(m.group(1), m.group(0)), text)
        new = re.sub(r"\b(x|y|z|value)=(?=')",
                     lambda m: names.get(m.group(1), m.group(1)) + " ", new)
        if new == text:
            raise
        out = ValueError(new)
        for note in getattr(err, "__notes__", []):
            out.add_note(note)
        raise out from err


def one_line(err: BaseException) -> str:
    """The exception's message (and notes) on one line."""
    parts = [str(err) or type(err).__name__, *getattr(err, "__notes__", [])]
    return " ".join(" ".join(parts).split())


# --------------------------------------------------------------------------- #
# Parser
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Bayesian inference of rotated 3-D anisotropy with Gaussian processes: "
        "which way a density volume or a table of samples is anisotropic, how strongly, "
        "with uncertainty, compared with axis-aligned (ARD) and free (full SPD) kernels.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of each command.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="fit the embedded nano-brick volume (known truth) and write a report",
        description="Fit the rotated, ARD and full-SPD kernels to every voxel of the embedded "
        "synthetic nano-brick (a laminated texture at a known orientation; debiased Whittle "
        "likelihood), compare them by LOO, and write an HTML + Markdown report.",
    )
    demo.add_argument("--out", type=Path, default=None,
                      help="output directory (default: a new demo_out/run-<time>)")
    demo.add_argument("--force", action="store_true", help="replace OUT if it exists")
    demo.add_argument("--quick", action="store_true",
                      help="seconds-scale smoke version (tiny volume, few draws)")
    demo.add_argument("--kernels", default="rotated,ard,full",
                      help="comma-separated kernels to fit (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_resume_option(demo)
    demo.set_defaults(handler=_cmd_demo)

    fit = sub.add_parser(
        "fit", help="fit one kernel to a volume or a table",
        description="Fit one kernel to DATA and write the posterior (fits/<kernel>), "
        "summary.csv, orientation.csv, diagnostics.json, figures and a report into OUT.",
    )
    _add_data_options(fit)
    fit.add_argument("--kernel", choices=KERNEL_CHOICES, default="rotated",
                     help="rotated: R diag(l^-2) R^T; ard: axis-aligned; full: free SPD metric "
                     "(default: %(default)s)")
    _add_model_options(fit, holdout=0.0)
    fit.set_defaults(handler=_cmd_fit)

    cmp = sub.add_parser(
        "compare", help="fit several kernels to the same data and compare them",
        description="Fit each kernel in --kernels to the same training points, score them by "
        "LOO and on held-out points, and write comparison.csv and a report into OUT.",
    )
    _add_data_options(cmp)
    cmp.add_argument("--kernels", default="rotated,ard,full",
                     help="comma-separated kernels (default: %(default)s)")
    _add_model_options(cmp, holdout=0.2)
    cmp.set_defaults(handler=_cmd_compare)

    rep = sub.add_parser(
        "report", help="rebuild the report of a saved run",
        description="Reload the saved fits of RUN_DIR and write report.html, report.md and "
        "the figures again (no refitting).",
    )
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a directory written by "
                     f"'{PROG} fit', 'compare' or 'demo'")
    rep.set_defaults(handler=_cmd_report)

    inf = sub.add_parser(
        "influence", help="which observations (or drill holes, blocks) drive the orientation",
        description="For the main fit of RUN_DIR (a fit on points), the change of the short "
        "axis and the length-scales when each observation or group is left out, by "
        "Pareto-smoothed importance sampling over the saved draws (no refits). Writes "
        "influence.csv and adds an Influence section, with a map, to the report.",
    )
    inf.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                     help=f"a directory written by '{PROG} fit' or 'compare' on points")
    inf.add_argument("--groups", choices=("none", "vertical", "blocks"), default="none",
                     help="none: each observation; vertical: observations sharing (x, y), "
                     "i.e. vertical drill holes; blocks: cubes of side --block "
                     "(default: %(default)s)")
    inf.add_argument("--block", type=float, default=None, metavar="SIZE",
                     help="block side in the data's units, for --groups blocks")
    inf.add_argument("--draws", type=int, default=None, metavar="N",
                     help="use N thinned posterior draws for groups or --first-order "
                     "(default: all)")
    inf.add_argument("--first-order", action="store_true",
                     help="each observation's first-order influence (the posterior "
                     "covariance of each summary with its leave-one-out log density) "
                     "instead of case deletion: no Pareto k, but it scales with --rank")
    inf.add_argument("--rank", type=int, default=None, metavar="K",
                     help="with --first-order: iterative solves (ASTRA-style Richardson "
                     "preconditioned by a rank-K Nystrom factor) and a stochastic diagonal "
                     "instead of one Cholesky per draw")
    inf.set_defaults(handler=_cmd_influence)

    mp = sub.add_parser(
        "map", help="map orientation over a large volume, tile by tile, on Dask",
        description="Cut VOLUME into tiles, fit each with the whole-volume likelihood as a "
        "task on a Dask cluster (a local one by default), and write the map as a Zarr store "
        "(lengthscales, axes, credible cones, structure-tensor agreement per tile) plus "
        "map.csv. Run the same command again to resume an interrupted map.",
    )
    mp.add_argument("data", type=Path, metavar="VOLUME",
                    help="a volume read lazily: .npy, .tif/.tiff, .zarr (or OME-Zarr), .h5, "
                    "a folder of 2-D slices, or raw binary with --shape and --dtype")
    g = mp.add_argument_group("volume")
    g.add_argument("--spacing", type=float, nargs="+", metavar="S",
                   help="voxel size: one number or one per array axis (default: 1 voxel)")
    g.add_argument("--units", default=None, help="length unit of --spacing, for labels")
    g.add_argument("--shape", type=int, nargs=3, metavar=("N0", "N1", "N2"),
                   help="array shape of a raw volume")
    g.add_argument("--dtype", help="element type of a raw volume, e.g. '<u2'")
    g.add_argument("--offset", type=int, default=0, help="header bytes of a raw volume")
    g.add_argument("--dataset", default=None, help="the array inside an HDF5 file or Zarr group")
    g.add_argument("--crop", metavar="I0:I1,J0:J1,K0:K1", help="map this box only")
    g.add_argument("--mask", type=Path, metavar="MASK",
                   help="a volume of the same shape; nonzero voxels are observed")
    g.add_argument("--threshold", type=float, default=None,
                   help="voxels below this value (air, pores) are masked")
    g = mp.add_argument_group("tiles")
    g.add_argument("--tile", type=int, default=32, help="tile side in voxels (default: "
                   "%(default)s)")
    g.add_argument("--stride", type=int, default=None,
                   help="distance between tiles in voxels (default: --tile, no overlap)")
    g.add_argument("--method", choices=("laplace", "nuts"), default="laplace",
                   help="laplace: MAP + calibrated Gaussian; nuts: short chains per tile "
                   "(default: %(default)s)")
    g.add_argument("--base", choices=BASE_CHOICES, default="rbf",
                   help="stationary base correlation (default: %(default)s)")
    g.add_argument("--taper", choices=("none", "hann", "tukey"), default="none",
                   help="data taper of each tile (default: %(default)s)")
    g.add_argument("--min-observed", type=float, default=0.5,
                   help="tiles with a smaller observed fraction are skipped as failed "
                   "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    g = mp.add_argument_group("cluster")
    g.add_argument("--workers", type=int, default=None,
                   help="local Dask workers, one process and one thread each, each on its "
                   "own share of the cores (default: the number of cores, at most 8)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="use a running dask.distributed scheduler, e.g. tcp://host:8786")
    g = mp.add_argument_group("output")
    g.add_argument("--out", type=Path, default=None,
                   help="the map's Zarr store (default: maps/<volume>.zarr); an existing map "
                   "with the same settings is resumed")
    g.add_argument("--force", action="store_true",
                   help="replace an existing map made with other settings")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    mp.set_defaults(handler=_cmd_map)
    return parser


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, metavar="DATA", nargs="?",
                   help="a table (.csv/.tsv with coordinate and value columns) or a volume "
                   "(.npy, .tif/.tiff stack, or raw binary with --shape and --dtype)")
    g = p.add_argument_group("tables")
    g.add_argument("--x", default="x", help="x coordinate column (default: %(default)s)")
    g.add_argument("--y", default="y", help="y coordinate column (default: %(default)s)")
    g.add_argument("--z", default="z", help="z coordinate column (default: %(default)s)")
    g.add_argument("--value", default="value", help="value column (default: %(default)s)")
    g = p.add_argument_group("volumes")
    g.add_argument("--spacing", type=float, nargs="+", metavar="S",
                   help="voxel size: one number or one per array axis (default: 1 voxel)")
    g.add_argument("--shape", type=int, nargs=3, metavar=("N0", "N1", "N2"),
                   help="array shape of a raw volume")
    g.add_argument("--dtype", help="element type of a raw volume, e.g. '<u2', 'float32'")
    g.add_argument("--crop", metavar="I0:I1,J0:J1,K0:K1",
                   help="fit this box of the volume only (Python slices per array axis, "
                   "e.g. '0:64,:,10:74')")
    g.add_argument("--mask", type=Path, metavar="MASK",
                   help="a volume of the same shape (.npy, .tif or raw with --shape/--dtype): "
                   "nonzero voxels are observed, zero ones are ignored")
    g.add_argument("--taper", choices=("none", "hann", "tukey"), default="none",
                   help="data taper of the whole-volume (whittle) likelihood "
                   "(default: %(default)s)")
    g = p.add_argument_group("points")
    g.add_argument("--units", default=None,
                   help="length unit of the coordinates, for labels (default: 'voxel' for "
                   "volumes without --spacing, else none)")
    g.add_argument("--subsample", type=int, default=None, metavar="N",
                   help="keep at most N points so exact inference stays tractable (default: "
                   f"{TABLE_SUBSAMPLE} for tables; volumes are fitted whole, with the whittle "
                   "likelihood, unless this is given)")
    g.add_argument("--subsample-method", choices=("stratified", "random"), default="stratified",
                   help="stratified covers space first (default: %(default)s)")


def _add_model_options(p: argparse.ArgumentParser, holdout: float) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--base", choices=BASE_CHOICES, default="rbf",
                   help="stationary base correlation (default: %(default)s)")
    g.add_argument("--parameterization", choices=("identifiable", "axis-angle"),
                   default="identifiable",
                   help="of the rotated kernel: the paper's free axis-angle, or the "
                   "matrix logarithm of the metric (default: %(default)s)")
    g.add_argument("--likelihood", choices=("exact", "dtc", "fitc", "whittle"), default=None,
                   help="exact (dense Cholesky), a Nystrom low-rank approximation (dtc, "
                   "fitc), or the debiased spatial Whittle likelihood of a whole volume "
                   "(default: whittle for volumes, exact for tables and subsamples)")
    g.add_argument("--landmarks", type=int, default=256, metavar="N",
                   help="inducing points of the dtc/fitc likelihoods (default: %(default)s)")
    g.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="fraction of points held out for RMSE / NLPD / coverage; 0 for none "
                   f"(default: {holdout} for points; whole volumes are compared by LOO)")
    g.add_argument("--predict", choices=("npy", "tif"), default=None,
                   help="whole volumes: also write the posterior mean and sd at every voxel "
                   "(prediction_mean, prediction_sd) in this format")
    g = p.add_argument_group("sampler")
    g.add_argument("--chains", type=int, default=4, help="NUTS chains (default: %(default)s)")
    g.add_argument("--warmup", type=int, default=500, help="warm-up steps (default: %(default)s)")
    g.add_argument("--samples", type=int, default=500,
                   help="draws per chain (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=None,
                   help="output directory (default: a new runs/<data>-<time>)")
    g.add_argument("--force", action="store_true", help="replace OUT if it exists")
    g.add_argument("--title", default=None, help="report title")
    _add_resume_option(p)


def _add_resume_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", type=Path, default=None, metavar="OUT.partial",
                   help="finish an interrupted run (Ctrl-C, SIGTERM, a failure) with the "
                   "settings it was started with, reusing the fits it finished; only --quiet "
                   "may be given with it")


# --------------------------------------------------------------------------- #
# Commands
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class Dataset:
    """Points ready to fit, with what the report says about them."""

    X: np.ndarray
    y: np.ndarray
    summary: dict
    units: str = ""
    volume: object = None  # datasets.Volume, for the slice figure
    truth: object = None  # datasets.Truth, for synthetic data
    grid: object = None  # gridded.GriddedVolume: fit the whole volume (whittle)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to fit and how."""

    kernels: tuple[str, ...]
    base: str = "rbf"
    parameterization: str = "identifiable"
    likelihood: str = "exact"
    landmarks: int = 256
    chains: int = 4
    warmup: int = 500
    samples: int = 500
    seed: int = 0
    holdout: float = 0.0
    progress: bool = True
    predict: str | None = None


def _cmd_fit(args) -> None:
    if args.resume is not None:
        return _resume(args)
    _analyse_file(args, (args.kernel,), default_holdout=0.0)


def _cmd_compare(args) -> None:
    if args.resume is not None:
        return _resume(args)
    _analyse_file(args, parse_kernels(args.kernels), default_holdout=0.2)


def _cmd_report(args) -> None:
    from aniso_gp.report import rebuild_report

    t0 = time.perf_counter()
    html, md = rebuild_report(args.run_dir)
    print(f"report rebuilt in {time.perf_counter() - t0:.1f} s: {html} (and {md.name})")


def _cmd_influence(args) -> None:
    from aniso_gp import influence, run_dir
    from aniso_gp.inference import Fit
    from aniso_gp.report import FITS_DIR, INFLUENCE_CSV, META_JSON, read_meta, rebuild_report

    if (args.block is not None) != (args.groups == "blocks"):
        raise ValueError("--block SIZE goes with --groups blocks (and only with it)")
    if args.draws is not None and args.groups == "none" and not args.first_order:
        raise ValueError("--draws thins the draws of a group deletion (--groups vertical or "
                         "blocks) or of --first-order; case deletion uses every draw")
    if args.first_order and args.groups != "none":
        raise ValueError("--first-order weighs single observations; it does not go with "
                         f"--groups {args.groups}")
    if args.rank is not None and not args.first_order:
        raise ValueError("--rank K sets the solver of --first-order (and only of it)")
    if args.rank is not None and args.rank < 1:
        raise ValueError(f"--rank must be at least 1; got {args.rank}")
    if not (args.run_dir / META_JSON).is_file():
        raise FileNotFoundError(f"{str(args.run_dir)!r} is not a run directory written by "
                                f"{PROG} (no {META_JSON})")
    meta = read_meta(args.run_dir / META_JSON)
    main = meta.get("main") or meta["fits"][0]
    fit = Fit.load(args.run_dir / FITS_DIR / main)
    if fit.is_volume:
        raise ValueError(f"the '{main}' fit of {str(args.run_dir)!r} is a whole-volume fit; "
                         "influence needs a fit on points (fit --subsample N)")
    t0 = time.perf_counter()
    if args.first_order:
        from aniso_gp.hypergrad import NystromRichardson

        solver = None if args.rank is None else NystromRichardson(
            rank=min(args.rank, len(fit.y) - 1), tol=1e-8, maxiter=5000)
        table = influence.first_order(fit, num_draws=args.draws, solver=solver)
    elif args.groups == "none":
        table = influence.case_deletion(fit)
    else:
        labels = (influence.vertical_groups(fit.X) if args.groups == "vertical"
                  else influence.block_groups(fit.X, args.block))
        table = influence.group_deletion(fit, labels, num_draws=args.draws)
    run_dir.write_file(args.run_dir / INFLUENCE_CSV, table.to_csv())
    kind = table.index.name
    print(f"influence of each {kind} on the '{main}' fit ({len(table)} {kind}s, "
          f"{time.perf_counter() - t0:.1f} s); largest short-axis changes:")
    for label, r in table.head(5).iterrows():
        if "pareto_k" not in table:
            print(f"  {kind} {label}: {r.short_axis_change_deg:.2f} deg (first order)")
            continue
        flag = "  (Pareto k > 0.7: refit to check)" if r.unreliable else ""
        print(f"  {kind} {label}: {r.short_axis_change_deg:.2f} deg, Pareto k "
              f"{r.pareto_k:.2f}{flag}")
    html, _ = rebuild_report(args.run_dir)
    print(f"written to {args.run_dir / INFLUENCE_CSV}; report section added to {html}")


def _cmd_map(args) -> None:
    from aniso_gp import chunked
    from aniso_gp.map_report import write_map_report
    from aniso_gp.orientation_map import orientation_map, tile_table

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1; got {args.workers}")
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("--workers sets up a local cluster; with --scheduler the cluster "
                         "has its own workers")
    mask = None
    if args.mask is not None:
        mask = chunked.open_volume(args.mask, shape=args.shape, dtype=args.dtype,
                                   offset=args.offset, dataset=args.dataset).reader
    vol = chunked.open_volume(args.data, _spacing(args.spacing), shape=args.shape,
                              dtype=args.dtype, offset=args.offset, dataset=args.dataset,
                              mask=mask, threshold=args.threshold, units=args.units or "")
    if args.crop:
        box = parse_crop(args.crop, vol.shape)
        vol = vol.crop([sl.indices(n)[:2] for sl, n in zip(box, vol.shape, strict=True)])
    out = args.out or Path("maps") / f"{args.data.stem}.zarr"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds = orientation_map(vol, tile=args.tile, stride=args.stride, method=args.method,
                             base=args.base, taper=None if args.taper == "none" else args.taper,
                             min_observed=args.min_observed, store=out, overwrite=args.force,
                             scheduler=args.scheduler, n_workers=args.workers, seed=args.seed,
                             progress=not args.quiet)
    except KeyboardInterrupt as err:
        err.add_note(f"(finished tiles are kept in {out}; run the same command to resume)")
        raise
    table = tile_table(ds)
    table.to_csv(out.with_suffix(".csv"), index=False)
    html = write_map_report(ds, out.with_name(f"{out.stem}_report"),
                            title=f"Orientation map of {args.data.name}", volume=vol)
    ok = int((ds["status"].values == 1).sum())
    print(f"map: {ok} of {ds['status'].size} tiles fitted ({ds.attrs['tiles_fitted']} in this "
          f"run), written to {out}, {out.with_suffix('.csv')} and {html}")
    if ok:
        fitted = table[table["status"] == "ok"]
        print(f"short axis vs structure tensor: median {fitted['st_angle_deg'].median():.1f} "
              f"deg; median 95% cone of the short axis {fitted['cone3_deg'].median():.1f} deg")


def _cmd_demo(args) -> None:
    if args.resume is not None:
        return _resume(args)
    size = DEMO_QUICK if args.quick else DEMO_FULL
    plan = Plan(kernels=parse_kernels(args.kernels), likelihood="whittle", chains=size.chains,
                warmup=size.warmup, samples=size.samples, seed=args.seed,
                progress=not args.quiet)
    out, resume = _output(args, Path("demo_out") / f"run-{_stamp()}")
    t0 = time.perf_counter()
    data = _demo_data(size, args.seed)
    title = "aniso-gp demo: laminated nano-brick at a known orientation"
    run = analyse(data, plan, out, force=args.force, title=title, resume=resume,
                  record=_run_record(args, out, ()))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s "
          f"({len(plan.kernels)} kernels, {size.chains} chains x {size.warmup}+{size.samples}, "
          f"{math.prod(size.shape):,} voxels)")
    print(f"open {run / 'report.html'}")


def parse_kernels(text: str) -> tuple[str, ...]:
    """'rotated,ard' -> ('rotated', 'ard'); unknown or repeated names are a ValueError."""
    names = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in names if k not in KERNEL_CHOICES]
    if not names or bad:
        raise ValueError(f"--kernels must list some of {', '.join(KERNEL_CHOICES)}; got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--kernels lists a kernel twice: {text!r}")
    return names


def _analyse_file(args, kernels: tuple[str, ...], default_holdout: float) -> None:
    if args.data is None:
        raise ValueError("DATA is required (a table or a volume), or --resume OUT.partial to "
                         "finish an interrupted run")
    whole = _whole_volume(args)
    holdout = args.holdout
    if whole and holdout:
        raise ValueError("--holdout applies to points; a whole volume (whittle likelihood) "
                         "is compared by LOO over frequency groups (pass --subsample N to fit "
                         "points instead)")
    if holdout is None:
        holdout = 0.0 if whole else default_holdout
    if args.subsample is not None:
        from aniso_gp.inference import MIN_POINTS

        check.integer(args.subsample, "--subsample", minimum=MIN_POINTS)
    if args.predict and not whole:
        raise ValueError("--predict writes grid predictions of a whole-volume fit; it does "
                         "not apply to tables or --subsample")
    likelihood = args.likelihood or ("whittle" if whole else "exact")
    plan = Plan(kernels=kernels, base=args.base, parameterization=args.parameterization,
                likelihood=likelihood, landmarks=args.landmarks, chains=args.chains,
                warmup=args.warmup, samples=args.samples, seed=args.seed,
                holdout=holdout, progress=not args.quiet, predict=args.predict)
    _check_plan(plan)
    # Refuse an existing OUT before reading data or compiling anything.
    out, resume = _output(args, Path("runs") / f"{args.data.stem}-{'-'.join(kernels)}-{_stamp()}")
    t0 = time.perf_counter()
    record = _run_record(args, out, (args.data, args.mask))
    data = load_data(args, whole)
    title = args.title or f"Anisotropy of {args.data.name}"
    run = analyse(data, plan, out, force=args.force, title=title, resume=resume, record=record)
    print(f"done in {time.perf_counter() - t0:.0f} s; open {run / 'report.html'}")


def _output(args, default: Path) -> tuple[Path, bool]:
    """OUT, checked before any work, and whether an interrupted run is being resumed."""
    stage = getattr(args, "resume_stage", None)
    if stage is not None:
        out = stage.with_name(stage.name.removesuffix(".partial"))
        _check_output(out, args.force, resume=True)
        return out, True
    out = args.out or default
    _check_output(out, args.force)
    return out, False


def _run_record(args, out: Path, inputs) -> dict:
    """What ``--resume`` needs: the command line, where it ran, and the inputs' checksums
    (a resumed run refuses inputs that changed since)."""
    from aniso_gp import __version__

    if getattr(args, "resume_stage", None) is not None:
        return {}  # the marker written when the run started stays
    return {"aniso_gp_version": __version__, "argv": args.argv, "cwd": os.getcwd(),
            "inputs": {str(Path(p).resolve()): _sha256(p) for p in inputs
                       if p is not None and Path(p).is_file()}}


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resume(args) -> None:
    """``--resume OUT.partial``: run the recorded command again in that directory; fits it
    finished are loaded, not refitted."""
    from aniso_gp import run_dir

    stage: Path = args.resume
    if not stage.name.endswith(".partial"):
        raise ValueError(f"--resume needs the OUT.partial directory of an interrupted run; "
                         f"got {str(stage)!r}")
    if not run_dir.is_run(stage):
        raise FileNotFoundError(f"--resume {str(stage)!r} is not an interrupted aniso-gp run "
                                f"(no such directory, or no {run_dir.MARKER} file in it)")
    given = [a for a in args.argv[1:]
             if not a.startswith(("--resume", "--quiet")) and Path(a) != args.resume]
    if given:
        raise ValueError("--resume takes every setting from the interrupted run; only --quiet "
                         f"may be given with it (got: {' '.join(args.argv[1:])})")
    rec = run_dir.record(stage)
    argv, cwd = rec.get("argv"), rec.get("cwd")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
            and isinstance(cwd, str) and isinstance(rec.get("inputs", {}), dict)):
        raise ValueError(f"--resume {str(stage)!r}: its {run_dir.MARKER} does not record the "
                         "command (written by an older aniso-gp?); start the run again")
    if argv[0] not in ("fit", "compare", "demo"):
        raise ValueError(f"--resume {str(stage)!r}: cannot resume a {argv[0]!r} command")
    for path, digest in rec.get("inputs", {}).items():
        if not Path(path).is_file() or _sha256(path) != digest:
            raise ValueError(f"--resume {str(stage)!r}: the input {path!r} is missing or has "
                             "changed since the run started; start the run again")
    saved = build_parser().parse_args(argv)
    for name in ("data", "mask", "out"):
        value = getattr(saved, name, None)
        if value is not None and not value.is_absolute():
            setattr(saved, name, Path(cwd) / value)
    saved.argv, saved.resume_stage = argv, stage
    saved.quiet = saved.quiet or args.quiet
    print(f"resuming the interrupted '{PROG} {' '.join(argv)}' in {stage}", flush=True)
    saved.handler(saved)


def _check_plan(plan: Plan) -> None:
    for name in ("chains", "warmup", "samples", "landmarks"):
        check.positive_int(getattr(plan, name), f"--{name}")
    check.seed(plan.seed, "--seed")
    if not 0.0 <= plan.holdout < 1.0:
        raise ValueError(f"--holdout must be in [0, 1); got {plan.holdout}")


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
def _whole_volume(args) -> bool:
    """Whether DATA is fitted as a whole volume (whittle): a volume file, no --subsample and
    no point likelihood asked for. Options that only fit one route are refused here."""
    table = args.data.suffix.lower() in TABLE_SUFFIXES
    volume_only = [f"--{k}" for k, v in (("crop", args.crop), ("mask", args.mask),
                                         ("taper", args.taper != "none")) if v]
    if table or args.subsample is not None or args.likelihood not in (None, "whittle"):
        if args.likelihood == "whittle":
            why = "DATA is a table" if table else "it fits the whole volume: drop --subsample"
            raise ValueError(f"--likelihood whittle needs a volume ({why})")
        if table and volume_only:
            raise ValueError(f"{', '.join(volume_only)} apply to volumes; DATA is a table")
        if args.taper != "none":
            raise ValueError("--taper applies to whole-volume (whittle) fits, not to points")
        return False
    return True


def load_data(args, whole: bool | None = None) -> Dataset:
    """Read DATA (table or volume): a whole volume to fit on its grid, or points
    (subsampled), as the options say (``whole``: :func:`_whole_volume`)."""
    from aniso_gp import gridded, io

    path: Path = args.data
    whole = _whole_volume(args) if whole is None else whole
    with _notes():
        if path.suffix.lower() in TABLE_SUFFIXES:
            with _as_options(y="--y"):
                X, y = io.read_table(path, x=args.x, y=args.y, z=args.z, value=args.value,
                                     dropna=True)
            volume = None
            kind = f"table, columns x={args.x}, y={args.y}, z={args.z}, value={args.value}"
            units = args.units or ""
        else:
            volume = io.read_volume(path, spacing=_spacing(args.spacing), shape=args.shape,
                                    dtype=args.dtype)
            mask = _read_mask(args, volume.shape)
            if args.crop:
                box = parse_crop(args.crop, volume.shape)
                volume = _crop(volume, box)
                mask = None if mask is None else mask[box]
            kind = (f"volume, shape {volume.shape}, spacing "
                    f"{', '.join(f'{s:g}' for s in volume.spacing)}")
            units = args.units if args.units is not None else volume.units
            if whole:
                grid = gridded.as_gridded(volume, mask=mask,
                                          taper=None if args.taper == "none" else args.taper)
                summary = {"source": str(path), "kind": kind,
                           "voxels fitted": f"{grid.num_observed} of {volume.density.size} "
                           "(whole volume, debiased Whittle likelihood)"}
                return Dataset(X=None, y=None, summary=summary, units=units, volume=volume,
                               grid=grid)
            X, y = io.volume_to_points(volume, mask=mask)
        n_all = len(y)
        n_keep = TABLE_SUBSAMPLE if args.subsample is None else args.subsample
        X, y = io.subsample(X, y, n_keep, method=args.subsample_method, seed=args.seed)
    summary = {"source": str(path), "kind": kind, "points available": n_all,
               "subsample": f"{len(y)} ({args.subsample_method}, seed {args.seed})"}
    return Dataset(X=X, y=y, summary=summary, units=units, volume=volume)


def parse_crop(text: str, shape) -> tuple[slice, slice, slice]:
    """'0:64,:,10:74' -> three slices (steps are not allowed); errors name --crop."""
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"--crop takes three ranges I0:I1,J0:J1,K0:K1; got {text!r}")
    box = []
    for part, n in zip(parts, shape, strict=True):
        bounds = part.strip().split(":")
        try:
            if len(bounds) != 2:
                raise ValueError
            lo, hi = (int(b) if b.strip() else None for b in bounds)
        except ValueError:
            raise ValueError(f"--crop ranges look like 0:64 or : ; got {part!r} in "
                             f"{text!r}") from None
        if any(b is not None and not -n <= b <= n for b in (lo, hi)):
            raise ValueError(f"--crop {part.strip()!r} reaches outside an axis of {n} voxels "
                             f"(the volume's shape is {tuple(shape)})")
        sl = slice(lo, hi)
        start, stop, _ = sl.indices(n)
        if stop - start < 1:
            raise ValueError(f"--crop {part!r} selects no voxel of an axis of {n}")
        box.append(sl)
    return tuple(box)


def _crop(volume, box):
    from aniso_gp.datasets import Volume

    starts = [sl.indices(n)[0] for sl, n in zip(box, volume.shape, strict=True)]
    origin = tuple(o + s * k for o, s, k in zip(volume.origin, volume.spacing, starts,
                                                strict=True))
    return Volume(density=volume.density[box], spacing=volume.spacing, origin=origin,
                  units=volume.units, value_units=volume.value_units)


def _read_mask(args, shape):
    """--mask: a volume file of the data's shape; nonzero voxels are observed."""
    if args.mask is None:
        return None
    from aniso_gp import io

    m = io.read_volume(args.mask, shape=args.shape, dtype=args.dtype).density
    if m.shape != shape:
        raise ValueError(f"--mask {str(args.mask)!r} has shape {m.shape} but DATA has {shape}")
    return m != 0


def _spacing(values):
    """--spacing: None, one number for all axes, or one per array axis."""
    if values is None or len(values) == 3:
        return values
    if len(values) == 1:
        return values[0]
    raise ValueError(f"--spacing takes 1 or 3 numbers; got {len(values)}")


def _demo_data(size: DemoSize, seed: int) -> Dataset:
    from aniso_gp import datasets, gridded

    vol = datasets.nano_brick(shape=size.shape, texture="laminated", seed=seed)
    grid = gridded.as_gridded(vol)
    t = vol.truth
    summary = {
        "source": "datasets.nano_brick (synthetic, embedded)",
        "kind": f"volume, shape {vol.shape}, spacing 1 voxel, laminated texture",
        "voxels fitted": f"{grid.num_observed} of {vol.density.size} "
                         "(whole volume, debiased Whittle likelihood)",
        "true length-scales (voxel)": [float(v) for v in t.lengthscales],
        "true noise sd": float(t.noise_sd),
    }
    return Dataset(X=None, y=None, summary=summary, units="voxel", volume=vol, truth=t,
                   grid=grid)


@contextlib.contextmanager
def _notes():
    """Show library warnings (e.g. 'kept 400 of 13824 points') as one-line notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for w in caught:
        print(f"{PROG}: note: {w.message}", file=sys.stderr)


# --------------------------------------------------------------------------- #
# The analysis
# --------------------------------------------------------------------------- #
def analyse(data: Dataset, plan: Plan, out: Path, force: bool, title: str,
            resume: bool = False, record: dict | None = None) -> Path:
    """Split, fit every kernel, compare, write the run directory ``out``; returns it.

    With ``resume``, ``OUT.partial`` is reused and the fits saved in it are loaded
    instead of refitted; ``record`` goes into the marker of a new run directory.
    """
    from aniso_gp import inference, run_dir
    from aniso_gp.report import FITS_DIR, write_report

    summary = dict(data.summary)
    if data.grid is None:
        train, test = _split(data, plan)
        summary["points fitted"] = len(train.y)
        summary["points held out"] = 0 if test is None else len(test.y)
        summary["extent (x, y, z)"] = [float(v) for v in np.ptp(data.X, axis=0)]
        summary["value mean, sd"] = [float(np.mean(data.y)), float(np.std(data.y))]
        what = f"N={len(train.y)}"
        fit_data = (train.X, train.y)
        point_options = {"num_landmarks": min(plan.landmarks, len(train.y))}
    else:
        gv = data.grid
        observed = gv.values[gv.mask]
        summary["grid (voxels)"] = list(gv.shape)
        summary["masked fraction"] = round(1.0 - gv.num_observed / gv.values.size, 4)
        summary["taper"] = gv.taper or "none"
        summary["value mean, sd"] = [float(np.mean(observed)), float(np.std(observed))]
        what = f"whole volume {'x'.join(map(str, gv.shape))} ({gv.num_observed:,} voxels)"
        fit_data, point_options, test = (gv,), {}, None
    if data.units:
        summary["units"] = data.units

    with staged_output(out, force, record=record, resume=resume) as stage:
        if data.grid is None:
            _write_points(stage, train, test)
        fits = {}
        for i, kernel in enumerate(plan.kernels, start=1):
            saved = stage / FITS_DIR / kernel
            if resume and (saved / "settings.json").is_file():  # written last by Fit.save
                fits[kernel] = inference.Fit.load(saved)
                print(f"[{i}/{len(plan.kernels)}] the {kernel} kernel: reusing the finished "
                      f"fit in {saved}", flush=True)
                continue
            print(f"[{i}/{len(plan.kernels)}] fitting the {kernel} kernel: {what}, "
                  f"{plan.chains} chains x ({plan.warmup} warm-up + {plan.samples} draws)",
                  flush=True)
            t0 = time.perf_counter()
            f = inference.fit(
                *fit_data, kernel=kernel, base=plan.base,
                parameterization=plan.parameterization if kernel == "rotated" else None,
                num_chains=plan.chains,
                num_warmup=plan.warmup, num_samples=plan.samples, seed=plan.seed,
                progress=plan.progress, likelihood=plan.likelihood, **point_options,
            )
            # Saved now, so it is kept if a later kernel fails (overwrite: a save that an
            # interruption cut short).
            f.save(run_dir.subdir(stage, FITS_DIR, kernel), overwrite=True)
            fits[kernel] = f
            print(f"      {kernel}: {time.perf_counter() - t0:.0f} s", flush=True)
        print("comparing and writing the report ...", flush=True)
        t0 = time.perf_counter()
        held = {} if test is None else {"X_test": test.X, "y_test": test.y}
        comparison = inference.compare(fits, truth=data.truth, **held)
        if plan.predict:
            _write_prediction(stage, fits, plan.predict, plan.progress)
        write_report(stage, fits, summary, comparison=comparison, truth=data.truth,
                     title=title, volume=data.volume, units=data.units)
        print(f"      report: {time.perf_counter() - t0:.0f} s", flush=True)
    _print_result(out, fits, comparison, data.truth)
    return out


def _write_prediction(stage: Path, fits: dict, fmt: str, progress: bool) -> None:
    """Posterior mean and sd of the main fit at every voxel, as .npy or float32 TIFF."""
    name = _main_fit(fits)
    print(f"      predicting the {name} fit on the grid ...", flush=True)
    mean, sd, info = fits[name].predict_grid(progress=progress)
    import io as _io

    from aniso_gp.run_dir import write_file

    for stem, arr in (("prediction_mean", mean), ("prediction_sd", sd)):
        buf = _io.BytesIO()
        if fmt == "npy":
            np.save(buf, arr)
        else:
            import tifffile

            tifffile.imwrite(buf, arr.astype(np.float32))
        write_file(stage / f"{stem}.{fmt}", buf.getvalue())
    print(f"      prediction: {info['draws']} draws, largest CG residual "
          f"{info['max_cg_residual']:.1e}", flush=True)


def _main_fit(fits: dict) -> str:
    return next((k for k, f in fits.items() if f.kernel == "rotated"), next(iter(fits)))


def _split(data: Dataset, plan: Plan):
    from aniso_gp.datasets import Field

    field = Field(np.asarray(data.X), np.asarray(data.y))
    if plan.holdout == 0.0:
        return field, None
    return field.split(plan.holdout, seed=plan.seed)


def _write_points(stage: Path, train, test) -> None:
    import pandas as pd

    parts = [("train", train)] + ([] if test is None else [("test", test)])
    frame = pd.concat([
        pd.DataFrame({"x": f.X[:, 0], "y": f.X[:, 1], "z": f.X[:, 2], "value": f.y, "set": s})
        for s, f in parts
    ], ignore_index=True)
    from aniso_gp.run_dir import write_file

    write_file(stage / "points.csv", frame.to_csv(index=False))


def _print_result(out: Path, fits: dict, comparison, truth) -> None:
    """The headline of the report, on the terminal."""
    from aniso_gp import orientation
    from aniso_gp.report import ranking_sentence

    main = _main_fit(fits)
    table = fits[main].orientation()
    print(f"\norientation ({main} kernel):")
    for label, r in table.iterrows():
        print(f"  {label:22s} l = {r.l_median:.3g} [{r.l_lo:.3g}, {r.l_hi:.3g}]  "
              f"trend/plunge {r.trend_deg:5.1f} / {max(r.plunge_deg, 0.0):4.1f} deg")
    for note in table.attrs.get("notes", []):
        print(f"  note: {note}")
    if truth is not None:
        err = orientation.axis_errors(fits[main].axes_draws(), np.asarray(truth.axes))
        print(f"  axis errors vs truth: {', '.join(f'{e:.1f}' for e in err)} deg")
    print("diagnostics (invariants):")
    for name, f in fits.items():
        d = f.diagnostics()
        print(f"  {name:8s} max R-hat {d['max_r_hat']:.3f}, min bulk ESS {d['min_ess_bulk']:.0f}, "
              f"{d['divergences']} divergences, {d['mean_steps_per_draw']:.1f} steps/draw: "
              + "; ".join(d["flags"]))
    print(ranking_sentence(comparison))
    print(f"written to {out}")


# --------------------------------------------------------------------------- #
# Output directories
# --------------------------------------------------------------------------- #
def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _check_output(out: Path, force: bool, resume: bool = False) -> None:
    """Refuse, before any work, an existing OUT (or a stale OUT.partial) without --force,
    and with --force one that aniso-gp did not write."""
    from aniso_gp import run_dir

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{str(out)!r} exists and is not a directory")
    if out.exists() and not force:
        raise FileExistsError(f"output directory {str(out)!r} exists; pass --force to replace "
                              "it or choose another --out")
    if out.exists() and not run_dir.is_run(out):
        run_dir.remove(out, "by --force")  # raises: only aniso-gp's own runs are replaced
    stage = _partial(out)
    if resume or not stage.exists():
        return
    if not force:
        raise FileExistsError(f"{str(stage)!r} (an interrupted earlier run) exists; resume it "
                              f"with '{PROG} fit --resume {stage}', remove it, or pass --force")
    if not run_dir.is_run(stage):
        run_dir.remove(stage, "by --force")


@contextlib.contextmanager
def staged_output(out: Path, force: bool, record: dict | None = None, resume: bool = False):
    """Yield a fresh ``OUT.partial`` run directory; on success it replaces ``OUT``.

    ``OUT`` is replaced only with ``force``, and only if aniso-gp wrote it. On failure,
    interruption or SIGTERM the partial directory stays, with ``record`` (the command
    and its inputs) in its marker, and the exception gets a note saying how to resume.
    With ``resume`` the existing ``OUT.partial`` is reused. A stale ``OUT.partial``
    from an earlier interrupted run is only removed with ``force``.
    """
    from aniso_gp import run_dir

    out = Path(out)
    _check_output(out, force, resume)
    stage = _partial(out)
    if not resume:
        if stage.exists():  # only reached with force, and only an aniso-gp run
            run_dir.remove(stage, "by --force")
        run_dir.create(stage, record)
    try:
        yield stage
    except BaseException as err:
        err.add_note(f"(finished artefacts kept in {str(stage)!r}; resume with "
                     f"'{PROG} fit --resume {stage}')")
        raise
    old = None
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            run_dir.remove(old, "to make room for the previous run")
        out.rename(old)
    stage.rename(out)
    if old is not None:
        run_dir.remove(old, "after replacing it")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
