"""The bad-input table of issue 18: every case is one call with one bad (or one
edge-but-valid) argument, and what a user must get back.

A case names the argument its error message must name (``names``) and the error type
(a ``ValueError`` subclass unless stated); ``names=None`` marks a valid edge input
that must be accepted (reach sampling, or return). Calls that would sample are
stopped at the sampler by :func:`sampling_guard`, so the table runs in seconds.
``tests/test_bad_input.py`` runs it; ``scripts/reliability_report.py`` writes the
outcomes to ``reports/reliability.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io as _io
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

SAVED_FIT = Path(__file__).parent / "data" / "saved_fits" / "arviz1"


class ReachedSampling(Exception):  # noqa: N818 - a signal, not an error
    """Raised by the guard where a fit would start its (slow) sampler."""


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Path], object]  # gets a fresh temporary directory
    names: str | None  # text the message must contain (the argument); None: must succeed
    error: type | tuple = ValueError  # a Warning class: the call must warn instead
    area: str = "api"


@contextlib.contextmanager
def sampling_guard():
    """Stop every fit where its compiled work would start."""
    from aniso_gp import inference

    def stop(*a, **k):
        raise ReachedSampling

    saved = {n: getattr(inference, n) for n in ("_run_nuts", "_pilot_start", "_warmup_start")}
    for n in saved:
        setattr(inference, n, stop)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(inference, n, f)


def classify(case: Case, tmp: Path) -> tuple[str, str]:
    """``("A", msg)`` a clear error naming the argument (or, for a valid input, accepted);
    ``("B", what)`` an unclear error; ``("C", what)`` silently accepted (or, for a valid
    input, refused)."""
    warns = isinstance(case.error, type) and issubclass(case.error, Warning)
    try:
        with sampling_guard(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            case.call(tmp)
    except ReachedSampling:
        return ("A", "accepted") if case.names is None else ("C", "accepted: reached sampling")
    except SystemExit as err:  # argparse: exit 2 with usage
        if case.names is not None and err.code == 2:
            return "A", "argparse usage error"
        return "B", f"SystemExit({err.code})"
    except Exception as err:
        msg = " ".join(str(err).split())
        if case.names is None:
            return "C", f"refused a valid input: {type(err).__name__}: {msg[:300]}"
        if isinstance(err, case.error) and case.names in msg and len(msg) < 700:
            return "A", f"{type(err).__name__}: {msg}"
        return "B", f"{type(err).__name__}: {msg[:300]}"
    if warns:
        said = [" ".join(str(w.message).split()) for w in caught
                if issubclass(w.category, case.error) and case.names in str(w.message)]
        return ("A", f"{case.error.__name__}: {said[0]}") if said else \
            ("C", "returned without the warning")
    return ("A", "accepted") if case.names is None else ("C", "accepted: returned")


# --------------------------------------------------------------------------- #
# Data used by the cases
# --------------------------------------------------------------------------- #
_rng = np.random.default_rng(0)
X = _rng.uniform(0, 10, (30, 3))
Y = np.sin(X[:, 0]) + 0.1 * _rng.standard_normal(30)
VOL = _rng.standard_normal((8, 8, 8))


def _fit(**kw):
    from aniso_gp import fit

    args = {"X": X, "y": Y, "kernel": "ard", "num_chains": 1, "num_warmup": 5,
            "num_samples": 5, "progress": False, **kw}
    return lambda tmp: fit(**args)


def _vfit(**kw):
    from aniso_gp import fit

    args = {"X": VOL, "kernel": "ard", "num_chains": 1, "num_warmup": 5, "num_samples": 5,
            "progress": False, **kw}
    return lambda tmp: fit(**args)


def _saved():
    from aniso_gp import Fit

    return Fit.load(SAVED_FIT)


def _cli(*argv):
    """The command line in-process; exit 1 becomes a _CliError carrying its one stderr line,
    anything else but success a RuntimeError with the whole stderr."""
    from aniso_gp import cli

    def run(tmp):
        args = [str(a).format(tmp=tmp) for a in argv]
        err = _io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(_io.StringIO()):
            code = cli.main(args)
        text = err.getvalue()
        errors = [ln for ln in text.splitlines() if ln.startswith("aniso-gp: error: ")]
        if code == 1 and len(errors) == 1 and "Traceback" not in text:
            raise _CliError(errors[0])
        if code != 0:
            raise RuntimeError(f"exit status {code}: {text}")

    return run


class _CliError(ValueError):
    """The CLI exited 1 with one error line."""


BAD_COUNTS = [0, -1, 2.5, None, math.nan, math.inf, "2", True, 2 ** 70]
BAD_SEEDS = ["abc", 1.5, 2 ** 70, -1, None, math.nan]
BAD_FRACTIONS = [-0.2, 0.0, 1.0, 1.5, math.nan, "a", None]


def _cases() -> list[Case]:
    c: list[Case] = []
    add = c.append

    # ---- fit: coordinates ---------------------------------------------------
    for label, bad in [("none", None), ("string", "abc"), ("strings", [["a", "b", "c"]] * 30),
                       ("dict", {"x": 1}), ("complex", X + 1j), ("2cols", X[:, :2]),
                       ("4cols", np.c_[X, X[:, 0]]), ("1d", X[:, 0]),
                       ("4d", X.reshape(30, 3, 1, 1)), ("empty", np.zeros((0, 3))),
                       ("nan", np.where(np.arange(90).reshape(30, 3) == 4, np.nan, X)),
                       ("inf", np.where(np.arange(90).reshape(30, 3) == 4, np.inf, X)),
                       ("two_points", X[:2]), ("identical", np.ones((30, 3))),
                       ("plane", np.c_[X[:, :2], np.zeros(30)]),
                       ("line", np.c_[X[:, 0], 2 * X[:, 0], np.zeros(30)]),
                       ("object", np.array([[1, "a", None]] * 30, dtype=object)),
                       ("df_named_wrong", pd.DataFrame(X, columns=["a", "b", "c"]))]:
        y = Y[: len(bad)] if isinstance(bad, np.ndarray) and bad.ndim == 2 and \
            bad.shape[0] < 30 else Y
        add(Case(f"fit-X-{label}", _fit(X=bad, y=y), "`X`"))
    for label, scale in [("tiny", 1e-200), ("huge", 1e200), ("offset", 1e6)]:
        add(Case(f"fit-X-valid-{label}", _fit(X=X * scale if label != "offset" else X + scale),
                 None))
    add(Case("fit-X-valid-df-xyz", _fit(X=pd.DataFrame(X[:, ::-1], columns=["z", "y", "x"])),
             None))
    add(Case("fit-X-valid-list", _fit(X=X.tolist()), None))
    add(Case("fit-X-valid-df-extra-column", _fit(X=pd.DataFrame(np.c_[X, Y],
                                                               columns=["x", "y", "z", "v"])),
             None))
    add(Case("fit-X-valid-float32", _fit(X=X.astype(np.float32)), None))

    # ---- fit: values --------------------------------------------------------
    for label, bad in [("missing", None), ("short", Y[:10]), ("nan", np.r_[np.nan, Y[1:]]),
                       ("inf", np.r_[np.inf, Y[1:]]), ("complex", Y + 1j),
                       ("string", "abc"), ("2d", np.c_[Y, Y]), ("constant", np.ones(30)),
                       ("constant_roundoff", 1.0 + 1e-17 * np.arange(30)),
                       ("strings", ["a"] * 30)]:
        add(Case(f"fit-y-{label}", _fit(y=bad), "`y`"))
    for label, scale in [("tiny", 1e-200), ("huge", 1e200)]:
        add(Case(f"fit-y-valid-{label}", _fit(y=Y * scale), None))
    add(Case("fit-y-valid-series", _fit(y=pd.Series(Y)), None))
    add(Case("fit-y-valid-int", _fit(y=np.arange(30)), None))

    # ---- fit: settings ------------------------------------------------------
    for bad in ["gaussian", None, 3, "ROTATED"]:
        add(Case(f"fit-kernel-{bad!r}", _fit(kernel=bad), "`kernel`"))
    for bad in ["rbf2", None, 1]:
        add(Case(f"fit-base-{bad!r}", _fit(base=bad), "`base`"))
    add(Case("fit-parameterization-ard", _fit(parameterization="identifiable"),
             "`parameterization`"))
    add(Case("fit-parameterization-foo", _fit(kernel="rotated", parameterization="foo"),
             "`parameterization`"))
    for bad in ["foo", "whittle", 1]:
        add(Case(f"fit-likelihood-{bad!r}", _fit(likelihood=bad), "likelihood"))
    for name in ("num_chains", "num_warmup", "num_samples"):
        for bad in BAD_COUNTS:
            add(Case(f"fit-{name}-{bad!r}", _fit(**{name: bad}), f"`{name}`"))
    for bad in BAD_SEEDS:
        add(Case(f"fit-seed-{bad!r}", _fit(seed=bad), "`seed`"))
    add(Case("fit-seed-valid-np-int", _fit(seed=np.int64(3)), None))
    for bad in BAD_FRACTIONS:
        add(Case(f"fit-target_accept_prob-{bad!r}", _fit(target_accept_prob=bad),
                 "`target_accept_prob`"))
    for bad in ["yes", None, 2]:
        add(Case(f"fit-progress-{bad!r}", _fit(progress=bad), "`progress`"))
    for label, bad, names in [("unknown", {"foo": 1.0}, "foo"), ("string", "abc", "`priors`"),
                              ("negative", {"lengthscale_median": -1.0}, "lengthscale_median"),
                              ("nan", {"noise_scale": math.nan}, "noise_scale"),
                              ("list", [1.0], "`priors`"),
                              ("zero_sd", {"log_lengthscale_sd": 0.0}, "log_lengthscale_sd"),
                              ("string_value", {"signal_scale": "big"}, "signal_scale")]:
        add(Case(f"fit-priors-{label}", _fit(priors=bad), names))
    add(Case("fit-priors-valid-numpy", _fit(priors={"lengthscale_median": np.float64(2.0),
                                                    "noise_scale": np.float32(0.1)}), None))
    for bad in [0, -1, 2.5, "abc", 10 ** 9, None]:
        add(Case(f"fit-num_landmarks-{bad!r}", _fit(likelihood="dtc", num_landmarks=bad),
                 "`num_landmarks`"))
    for bad in ["kmeans", None, 3]:
        add(Case(f"fit-landmarks-{bad!r}", _fit(likelihood="fitc", num_landmarks=10,
                                                landmarks=bad), "`landmarks`"))
    for name, val in [("spacing", 1.0), ("mask", np.ones((8, 8, 8), bool)), ("taper", "hann")]:
        add(Case(f"fit-{name}-with-points", _fit(**{name: val}), f"`{name}`"))
    for bad in ["yes", None]:
        add(Case(f"fit-calibrate-{bad!r}", _vfit(calibrate=bad), "`calibrate`"))

    # ---- fit: volumes -------------------------------------------------------
    vnan = VOL.copy()
    vnan[:] = np.nan
    for label, bad, names in [("2d", VOL[0], "`X`"), ("4d", VOL[..., None], "`X`"),
                              ("all_nan", vnan, "`X`"), ("complex", VOL + 1j, "`X`"),
                              ("small_axis", VOL[:3], "`X`"), ("constant", np.ones((8, 8, 8)),
                                                               "volume is constant"),
                              ("inf", np.where(VOL > 2, np.inf, VOL), "`X`"),
                              ("bool", VOL > 0, None)]:
        add(Case(f"fit-volume-{label}", _vfit(X=bad), names))
    for bad in [0, -1, math.nan, math.inf, [1, 2], "a", [1, 1, 0]]:
        add(Case(f"fit-volume-spacing-{bad!r}", _vfit(spacing=bad), "`spacing`"))
    for label, bad in [("shape", np.ones((8, 8, 7), bool)), ("none_true", np.zeros((8, 8, 8),
                                                                                  bool)),
                       ("int", np.ones((8, 8, 8), int)), ("string", "abc")]:
        add(Case(f"fit-volume-mask-{label}", _vfit(mask=bad), "`mask`"))
    for bad in ["foo", 1, "HANN"]:
        add(Case(f"fit-volume-taper-{bad!r}", _vfit(taper=bad), "`taper`"))
    add(Case("fit-volume-taper-dtc", _vfit(taper="hann", likelihood="dtc"), "`taper`"))
    add(Case("fit-volume-y-given", _vfit(y=np.ones(512)), "`y`"))
    for bad in [5, 2.5, "many", None]:
        add(Case(f"fit-volume-num_bootstrap-{bad!r}", _vfit(num_bootstrap=bad),
                 "`num_bootstrap`"))

    # ---- a saved fit: predict, score, compare --------------------------------
    from aniso_gp import Fit, compare, predict

    for bad in [-5, 2.5, 0, "a", None, math.nan]:
        add(Case(f"predict-num_draws-{bad!r}", lambda t, b=bad: predict(_saved(), X[:4],
                                                                        num_draws=b),
                 "`num_draws`"))
    for label, bad in [("none", None), ("2cols", X[:, :2]), ("nan", np.full((2, 3), np.nan)),
                       ("complex", X[:4] + 1j), ("string", "abc")]:
        add(Case(f"predict-X_new-{label}", lambda t, b=bad: predict(_saved(), b), "`X_new`"))
    add(Case("predict-fit-none", lambda t: predict(None, X), "`fit`"))
    add(Case("predict-fit-dict", lambda t: predict({"kernel": "ard"}, X), "`fit`"))
    add(Case("predict-unknown-keyword", lambda t: predict(_saved(), X[:4], draws=3),
             "draws", TypeError))
    add(Case("compare-empty", lambda t: compare({}), "`fits`"))
    add(Case("compare-not-fits", lambda t: compare({"a": 1}), "`fits`"))
    add(Case("compare-same-name", lambda t: compare([_saved(), _saved()]), "`fits`"))
    def other_data(t):
        f = _saved()
        std = {**f.settings["standardizer"], "y_mean": f.std.y_mean + 1.0}
        return compare({"a": f, "b": Fit(f.idata, {**f.settings, "standardizer": std})})

    add(Case("compare-different-data", other_data, "different data"))
    add(Case("compare-one-fit", lambda t: compare(_saved()), "`fits`"))
    add(Case("compare-X_test-only", lambda t: compare({"a": _saved()}, X_test=X), "`y_test`"))
    add(Case("compare-num_draws", lambda t: compare({"a": _saved()}, X_test=X, y_test=Y,
                                                    num_draws=-1), "`num_draws`"))
    add(Case("compare-y_test-short", lambda t: compare({"a": _saved()}, X_test=X,
                                                       y_test=Y[:3]), "`y_test`"))
    for name in ("interval", "cone_level"):
        for bad in [0.0, 1.0, -1, "a", None]:
            add(Case(f"orientation-{name}-{bad!r}", lambda t, n=name, b=bad: _saved().orientation(
                **{n: b}), f"`{name}`"))
    for name in ("return_std", "include_noise"):
        add(Case(f"predict-{name}", lambda t, n=name: _saved().predict(X[:3], **{n: "yes"}),
                 f"`{name}`"))

    from aniso_gp import hypergrad as hg
    from aniso_gp import influence

    n_saved = len(_saved().y)
    for label, call, names in [
        ("case-not-fit", lambda t: influence.case_deletion("run/"), "`fit`"),
        ("groups-short", lambda t: influence.group_deletion(_saved(), np.arange(3)),
         "`groups`"),
        ("groups-one", lambda t: influence.group_deletion(_saved(), np.zeros(n_saved)),
         "`groups`"),
        ("num_draws", lambda t: influence.group_deletion(_saved(), np.arange(n_saved) % 4,
                                                         num_draws=-1), "`num_draws`"),
        ("block-size", lambda t: influence.block_groups(X, -1.0), "`size`"),
        ("first_order-num_draws", lambda t: influence.first_order(_saved(), num_draws=2.5),
         "`num_draws`"),
        ("first_order-probes", lambda t: influence.first_order(_saved(), solver=hg.CG(),
                                                               probes=-1), "`probes`"),
        ("first_order-solver", lambda t: influence.first_order(_saved(), solver="cg"),
         "`solver`"),
        ("vertical-X", lambda t: influence.vertical_groups(X[:, :2]), "`X`"),
    ]:
        add(Case(f"influence-{label}", call, names))

    # ---- saved files --------------------------------------------------------
    def garbage(name, content):
        def call(tmp):
            d = tmp / "fit"
            d.mkdir()
            for f in ("posterior.nc", "settings.json"):
                (d / f).write_bytes((SAVED_FIT / f).read_bytes())
            (d / name).write_bytes(content)
            Fit.load(d)
        return call

    add(Case("load-missing", lambda t: Fit.load(t / "nope"), "nope", FileNotFoundError))
    add(Case("load-posterior-garbage", garbage("posterior.nc", b"\x89HDF\r\n garbage"),
             "posterior.nc"))
    add(Case("load-posterior-truncated", garbage(
        "posterior.nc", (SAVED_FIT / "posterior.nc").read_bytes()[:2000]), "posterior.nc"))
    add(Case("load-settings-garbage", garbage("settings.json", b"{not json"),
             "settings.json"))
    add(Case("load-settings-list", garbage("settings.json", b"[1, 2]"), "settings.json"))
    add(Case("load-settings-version", garbage("settings.json", json.dumps(
        {**json.loads((SAVED_FIT / "settings.json").read_text()), "format_version": 99}
    ).encode()), "format_version"))
    add(Case("load-settings-missing-key", garbage("settings.json", json.dumps(
        {"format_version": json.loads((SAVED_FIT / "settings.json").read_text())[
            "format_version"]}).encode()), "saved fit"))

    # ---- readers ------------------------------------------------------------
    from aniso_gp import io, open_volume, read_table, read_volume

    def table(tmp, text, **kw):
        p = tmp / "t.csv"
        p.write_text(text)
        return read_table(p, **kw)

    good = "x,y,z,value\n0,0,0,1\n1,0,0,2\n0,1,0,3\n0,0,1,4\n"
    add(Case("read_table-missing", lambda t: read_table(t / "no.csv"), "no.csv",
             FileNotFoundError))
    add(Case("read_table-column", lambda t: table(t, good, value="grade"), "value='grade'"))
    add(Case("read_table-nonnumeric", lambda t: table(t, good.replace("1,0,0,2", "1,0,0,b")),
             "value"))
    add(Case("read_table-nan", lambda t: table(t, good.replace("1,0,0,2", "1,0,0,")),
             "dropna"))
    add(Case("read_table-empty", lambda t: table(t, ""), "t.csv"))
    add(Case("read_table-binary", lambda t: (t / "t.csv").write_bytes(b"\xff\xfe\x00\x01" * 50)
             and read_table(t / "t.csv"), "t.csv"))
    add(Case("read_table-same-column", lambda t: table(t, good, y="x"), "`y`"))
    add(Case("read_table-dropna", lambda t: table(t, good, dropna="yes"), "`dropna`"))
    add(Case("read_table-df-not-df", lambda t: read_table(42), "path_or_dataframe",
             (ValueError, FileNotFoundError)))
    add(Case("read_table-complex-df", lambda t: read_table(pd.DataFrame(
        {"x": [1j, 2], "y": [0, 1], "z": [0, 1], "value": [1, 2]})), "x"))

    def vol_file(tmp, suffix, content=None, arr=None):
        p = tmp / f"v{suffix}"
        if arr is not None:
            np.save(p, arr)
        else:
            p.write_bytes(content)
        return p

    add(Case("read_volume-missing", lambda t: read_volume(t / "no.npy"), "no.npy",
             FileNotFoundError))
    add(Case("read_volume-suffix", lambda t: read_volume(vol_file(t, ".xyz", b"1")), ".xyz"))
    add(Case("read_volume-garbage-npy", lambda t: read_volume(vol_file(t, ".npy", b"nope")),
             "v.npy"))
    add(Case("read_volume-garbage-tif", lambda t: read_volume(vol_file(t, ".tif", b"nope")),
             "v.tif"))
    add(Case("read_volume-2d", lambda t: read_volume(vol_file(t, ".npy", arr=np.ones((4, 4))))
             , "v.npy"))
    add(Case("read_volume-object", lambda t: read_volume(vol_file(
        t, ".npy", arr=np.array([[[None]]], dtype=object))), "v.npy"))
    add(Case("read_volume-raw-noshape", lambda t: read_volume(vol_file(t, ".raw", b"\0" * 64)),
             "shape"))
    add(Case("read_volume-raw-size", lambda t: read_volume(vol_file(t, ".raw", b"\0" * 63),
                                                           shape=(4, 4, 4), dtype="u1"),
             "shape"))
    add(Case("read_volume-raw-dtype", lambda t: read_volume(vol_file(t, ".raw", b"\0" * 64),
                                                            shape=(4, 4, 4), dtype="foo"),
             "dtype"))
    for bad in [0, -1, math.nan, [1, 2]]:
        add(Case(f"read_volume-spacing-{bad!r}", lambda t, b=bad: read_volume(
            vol_file(t, ".npy", arr=np.ones((4, 4, 4))), spacing=b), "spacing"))
    add(Case("open_volume-missing", lambda t: open_volume(t / "no.npy"), "no.npy",
             FileNotFoundError))
    add(Case("open_volume-box", lambda t: open_volume(vol_file(t, ".npy", arr=np.ones(
        (8, 8, 8))), box=(slice(0, 20), slice(None), slice(None))), "box"))
    add(Case("open_volume-threshold", lambda t: open_volume(vol_file(t, ".npy", arr=np.ones(
        (8, 8, 8))), threshold="x"), "threshold"))
    add(Case("open_volume-mask-shape", lambda t: open_volume(vol_file(t, ".npy", arr=np.ones(
        (8, 8, 8))), mask=np.ones((8, 8, 7), bool)), "mask"))
    _ = io

    # ---- data helpers and kernels ---------------------------------------------
    from aniso_gp import (
        ARD,
        FullSPD,
        Priors,
        RotatedAnisotropic,
        nano_brick,
        subsample,
        synthetic_field,
        volume_to_points,
    )

    add(Case("subsample-valid-n-above-N", lambda t: subsample(X, Y, 31), None))
    for bad in [0, -1, 2.5, None, "a"]:
        add(Case(f"subsample-n-{bad!r}", lambda t, b=bad: subsample(X, Y, b), "`n`"))
    add(Case("subsample-method", lambda t: subsample(X, Y, 5, method="foo"), "`method`"))
    add(Case("subsample-seed", lambda t: subsample(X, Y, 5, seed="a"), "`seed`"))
    add(Case("subsample-y-short", lambda t: subsample(X, Y[:3], 2), "`y`"))
    for name, bad in [("n", 0), ("lengthscales", [-1, 1, 1]), ("lengthscales", [1, 1]),
                      ("axis_angle", [1, 2]), ("axis_angle", [np.nan, 0, 0]),
                      ("base", "foo"), ("design", "foo"), ("noise_sd", -1.0),
                      ("variance", 0.0), ("extent", -1.0), ("seed", "a")]:
        kw = {"n": 10, "lengthscales": [1, 2, 3], "axis_angle": [0, 0, 0], name: bad}
        add(Case(f"synthetic_field-{name}-{bad!r}", lambda t, k=kw: synthetic_field(**k),
                 f"`{name}`"))
    for name, bad in [("shape", (1, 8, 8)), ("shape", (8, 8)), ("spacing", 0.0),
                      ("texture", "foo"), ("noise_sd", -1.0), ("lengthscales", [1, 1]),
                      ("axis_angle", "a"), ("seed", 1.5)]:
        add(Case(f"nano_brick-{name}-{bad!r}", lambda t, n=name, b=bad: nano_brick(
            **{"shape": (8, 8, 8), n: b}), f"`{name}`"))
    for label, kw, names in [("2d", {"volume": np.ones((4, 4))}, "`volume`"),
                             ("spacing", {"volume": VOL, "spacing": 0}, "`spacing`"),
                             ("mask", {"volume": VOL, "mask": np.ones((8, 8, 7), bool)},
                              "`mask`"),
                             ("origin", {"volume": VOL, "origin": (0, 0)}, "`origin`")]:
        add(Case(f"volume_to_points-{label}", lambda t, k=kw: volume_to_points(**k), names))
    for label, call, names in [
        ("rotated-l-negative", lambda t: RotatedAnisotropic([-1, 1, 1], [0, 0, 0]),
         "`lengthscales`"),
        ("rotated-l-shape", lambda t: RotatedAnisotropic([1, 1], [0, 0, 0]), "`lengthscales`"),
        ("rotated-a-shape", lambda t: RotatedAnisotropic([1, 1, 1], [0, 0]), "`axis_angle`"),
        ("rotated-a-nan", lambda t: RotatedAnisotropic([1, 1, 1], [np.nan, 0, 0]),
         "`axis_angle`"),
        ("rotated-variance", lambda t: RotatedAnisotropic([1, 1, 1], [0, 0, 0], variance=-1),
         "`variance`"),
        ("rotated-base", lambda t: RotatedAnisotropic([1, 1, 1], [0, 0, 0], base="foo"),
         "`base`"),
        ("ard-l", lambda t: ARD([0, 1, 1]), "`lengthscales`"),
        ("ard-l-string", lambda t: ARD("abc"), "`lengthscales`"),
        ("full-none", lambda t: FullSPD(), "metric"),
        ("full-both", lambda t: FullSPD(cholesky=np.eye(3), metric=np.eye(3)), "metric"),
        ("full-metric-not-spd", lambda t: FullSPD(metric=-np.eye(3)), "`metric`"),
        ("full-metric-asym", lambda t: FullSPD(metric=np.array([[1, 2, 0], [0, 1, 0],
                                                                [0, 0, 1.0]])), "`metric`"),
        ("full-cholesky-shape", lambda t: FullSPD(cholesky=np.eye(2)), "`cholesky`"),
        ("full-cholesky-singular", lambda t: FullSPD(cholesky=np.diag([1.0, 0.0, 1.0])),
         "`cholesky`"),
        ("priors-median", lambda t: Priors(lengthscale_median=-1.0), "lengthscale_median"),
        ("priors-sd", lambda t: Priors(log_lengthscale_sd=0.0), "log_lengthscale_sd"),
        ("priors-axis-sd", lambda t: Priors(axis_angle_sd=-1.0), "axis_angle_sd"),
        ("priors-lkj", lambda t: Priors(lkj_concentration=0.0), "lkj_concentration"),
        ("priors-mean-sd", lambda t: Priors(mean_sd=math.nan), "mean_sd"),
    ]:
        add(Case(f"kernel-{label}", call, names))

    # ---- report --------------------------------------------------------------
    from aniso_gp import write_report

    add(Case("write_report-empty", lambda t: write_report(t / "r", {}, {}), "`fits`"))
    add(Case("write_report-not-fit", lambda t: write_report(t / "r", {"a": 1}, {}), "fits"))
    add(Case("write_report-main", lambda t: write_report(t / "r", {"a": _saved()}, {},
                                                         main="b"), "`main`"))
    add(Case("write_report-summary", lambda t: write_report(t / "r", {"a": _saved()}, "x"),
             "`data_summary`"))
    add(Case("write_report-title", lambda t: write_report(t / "r", {"a": _saved()}, {},
                                                          title=None), "`title`"))
    add(Case("write_report-volume", lambda t: write_report(t / "r", {"a": _saved()}, {},
                                                           volume=np.ones((4, 4, 4))),
             "`volume`"))
    add(Case("write_report-run_dir-file", lambda t: (t / "f").write_text("x") and write_report(
        t / "f", {"a": _saved()}, {}), "f", (ValueError, OSError)))

    # ---- hypergradients and the Laplace GP -----------------------------------
    c.extend(_hypergrad_cases())
    # ---- command line --------------------------------------------------------
    c.extend(_cli_cases())
    return c


def _hypergrad_cases() -> list[Case]:
    import jax.numpy as jnp

    from aniso_gp import hypergrad as hg

    c: list[Case] = []
    add = c.append
    theta = {"log_lengthscales": jnp.zeros(3), "log_signal": jnp.array(0.0),
             "log_noise": jnp.array(-2.0)}
    Xs, ys = jnp.asarray(X[:12] / 10), jnp.asarray(Y[:12])
    counts = jnp.asarray(np.round(np.exp(Y[:12])))
    A = jnp.eye(5) * 2.0
    b = jnp.ones(5)

    def mv(v):
        return A @ v

    for label, solver, names in [("cg-tol", lambda: hg.CG(tol=-1), "`tol`"),
                                 ("cg-maxiter", lambda: hg.CG(maxiter=0), "`maxiter`"),
                                 ("neumann-steps", lambda: hg.Neumann(steps=-1, lr=0.1),
                                  "`steps`"),
                                 ("neumann-lr", lambda: hg.Neumann(steps=5, lr=-1.0), "`lr`"),
                                 ("nystrom-rank", lambda: hg.Nystrom(rank=0, rho=0.1), "`rank`"),
                                 ("nystrom-rho", lambda: hg.Nystrom(rank=2, rho=-1.0), "`rho`"),
                                 ("nystrom-sketch", lambda: hg.Nystrom(rank=2, rho=0.1,
                                                                       sketch="foo"), "`sketch`"),
                                 ("pcg-rank", lambda: hg.NystromPCG(rank=2.5), "`rank`"),
                                 ("pcg-tol", lambda: hg.NystromPCG(rank=2, tol=2.0), "`tol`"),
                                 ("richardson-lr", lambda: hg.NystromRichardson(rank=2, lr=-1.0),
                                  "`lr`"),
                                 ("reuse-tau", lambda: hg.SpectralReuse(rank=2, tau=-1.0),
                                  "`tau`"),
                                 ("amortized-steps", lambda: hg.AmortizedEigenbasis(
                                     rank=2, steps=0), "`steps`"),
                                 ("amortized-lr", lambda: hg.AmortizedEigenbasis(
                                     rank=2, lr=0.0), "`lr`"),
                                 ("reuse-seeded-basis", lambda: hg.SpectralReuse(
                                     rank=2).seeded(jnp.ones((5, 3)), jnp.ones(2)), "`basis`"),
                                 ("reuse-seeded-eigenvalues", lambda: hg.SpectralReuse(
                                     rank=2).seeded(jnp.ones((5, 2)), -jnp.ones(2)),
                                  "`eigenvalues`"),
                                 ("auto-tol", lambda: hg.Auto(tol=math.nan), "`tol`"),
                                 ("as_solver-string", lambda: hg.as_solver("cg"), "`solver`"),
                                 ("as_solver-none", lambda: hg.as_solver(None), "`solver`")]:
        add(Case(f"solver-{label}", lambda t, s=solver: s(), names, area="hypergrad"))
    add(Case("solve_ihvp-b-shape", lambda t: hg.solve_ihvp(hg.CG(), mv, jnp.ones(4)), "`b`",
             area="hypergrad"))
    add(Case("solve_ihvp-b-nan", lambda t: hg.solve_ihvp(hg.CG(), mv, b * jnp.nan), "`b`",
             area="hypergrad"))
    add(Case("solve_ihvp-matvec", lambda t: hg.solve_ihvp(hg.CG(), "A", b), "`matvec`",
             area="hypergrad"))
    add(Case("solve_ihvp-shift", lambda t: hg.solve_ihvp(hg.CG(), mv, b, shift=-5.0),
             "`shift`", area="hypergrad"))
    add(Case("solve_ihvp-neumann-diverges", lambda t: hg.solve_ihvp(
        hg.Neumann(steps=50, lr=10.0), mv, b), "residual", (ArithmeticError, ValueError,
                                                           RuntimeError), area="hypergrad"))
    add(Case("solve_ihvp-singular", lambda t: hg.solve_ihvp(
        hg.CG(maxiter=50), lambda v: jnp.zeros_like(v), b), "residual",
        (ArithmeticError, ValueError, RuntimeError), area="hypergrad"))
    add(Case("implicit_grad-concave", lambda t: hg.implicit_grad(
        lambda w, h: -jnp.sum(w ** 2) + h * jnp.sum(w), lambda w, h: jnp.sum(w),
        jnp.zeros(3), jnp.array(1.0), solver=hg.CG(maxiter=20)), "residual",
        (ArithmeticError, ValueError, RuntimeError), area="hypergrad"))
    add(Case("implicit_grad-w-list", lambda t: hg.implicit_grad(
        lambda w, h: jnp.sum(w ** 2), lambda w, h: jnp.sum(w), [1.0, 2.0], jnp.array(1.0)),
        "`w_star`", area="hypergrad"))
    add(Case("implicit_grad-loss", lambda t: hg.implicit_grad(
        "loss", lambda w, h: jnp.sum(w), jnp.zeros(3), jnp.array(1.0)), "`inner_loss`",
        area="hypergrad"))
    for label, th, names in [("missing-key", {"log_lengthscales": jnp.zeros(3)}, "log_noise"),
                             ("shape", {**theta, "log_lengthscales": jnp.zeros(2)},
                              "log_lengthscales"),
                             ("list", {**theta, "log_lengthscales": [0.0, 0.0, 0.0]}, None),
                             ("not-dict", [0.0], "`theta`")]:
        add(Case(f"validation_hypergradient-theta-{label}", lambda t, th=th: (
            hg.validation_hypergradient(th, Xs, ys, Xs, ys, kernel="ard")), names,
            area="hypergrad"))
    for label, kw, names in [
        ("X-shape", {"X_train": Xs[:, :2]}, "`X_train`"),
        ("y-short", {"y_train": ys[:5]}, "`y_train`"),
        ("val-nan", {"y_val": ys * jnp.nan}, "`y_val`"),
        ("kernel", {"kernel": "foo"}, "`kernel`"),
        ("objective", {"objective": "foo"}, "`objective`"),
        ("steps", {"steps": 0}, "`steps`"),
        ("learning_rate", {"learning_rate": -1.0}, "`learning_rate`"),
        ("solver", {"solver": "cg"}, "`solver`"),
        ("neumann-diverges", {"solver": hg.Neumann(steps=30, lr=10.0)}, "diverged"),
        ("init-missing", {"init": {"log_noise": 0.0}}, "`init`"),
        ("init-not-dict", {"init": [1.0]}, "`init`"),
        ("init-shape", {"init": {"lengthscales": [1.0, 1.0], "variance": 1.0,
                                 "noise_variance": 0.1}}, "init['lengthscales']"),
        ("init-negative", {"init": {"lengthscales": [1.0, 1.0, 1.0], "variance": -1.0,
                                    "noise_variance": 0.1}}, "init['variance']"),
    ]:
        args = {"X_train": Xs, "y_train": ys, "X_val": Xs, "y_val": ys, "kernel": "ard",
                "steps": 2, **kw}
        add(Case(f"optimize_hyperparameters-{label}", lambda t, a=args: (
            hg.optimize_hyperparameters(**a)), names, hg.SolveError if label.endswith(
                "diverges") else ValueError, area="hypergrad"))
    tuned = {"lengthscales": np.ones(3), "variance": 1.0, "noise_variance": 0.1}
    for label, kw, names in [
        ("params-missing", {"params": {"variance": 1.0}}, "`params`"),
        ("params-negative", {"params": {**tuned, "variance": -1.0}}, "params['variance']"),
        ("newton_steps", {"newton_steps": -1}, "`newton_steps`"),
        ("eps", {"eps": 0.0}, "`eps`"),
        ("objective", {"objective": "foo"}, "`objective`"),
        ("X-shape", {"X_train": Xs[:, :2]}, "`X_train`"),
        ("seed", {"seed": -1}, "`seed`"),
    ]:
        args = {"X_train": Xs, "y_train": ys, "X_val": Xs, "y_val": ys, "params": tuned,
                "kernel": "ard", **kw}
        add(Case(f"hyperparameter_influence-{label}", lambda t, a=args: (
            hg.hyperparameter_influence(**a)), names, area="hypergrad"))
    lap = {"kernel": {"lengthscales": jnp.ones(3), "axis_angle": jnp.zeros(3),
                      "variance": jnp.asarray(1.0)}, "mean": jnp.asarray(0.0),
           "likelihood": {}}
    for label, call, names in [
        ("likelihood", lambda: hg.laplace_mode(lap, Xs, counts, likelihood="foo"),
         "`likelihood`"),
        ("theta-missing", lambda: hg.laplace_mode({"mean": 0.0}, Xs, counts), "`theta`"),
        ("theta-kernel-keys", lambda: hg.laplace_mode({**lap, "kernel": {"variance": 1.0}},
                                                      Xs, counts), "lengthscales"),
        ("kernel-nan", lambda: hg.laplace_mode({**lap, "kernel": {**lap["kernel"],
                                                                  "variance": jnp.nan}},
                                               Xs, counts), "not positive definite"),
        ("student_t-df", lambda: hg.laplace_mode({**lap, "likelihood": {"df": -1.0,
                                                                         "scale": 1.0}},
                                                 Xs, ys, likelihood="student_t"), "df"),
        ("y-negative", lambda: hg.laplace_mode(lap, Xs, -counts), "`y`"),
        ("y-fractional", lambda: hg.laplace_mode(lap, Xs, counts + 0.5), "`y`"),
        ("X-shape", lambda: hg.laplace_mode(lap, Xs[:, :2], counts), "`X`"),
        ("tol", lambda: hg.laplace_mode(lap, Xs, counts, tol=-1.0), "`tol`"),
        ("max_iter", lambda: hg.laplace_mode(lap, Xs, counts, max_iter=0), "`max_iter`"),
    ]:
        add(Case(f"laplace-{label}", lambda t, f=call: f(), names, area="hypergrad"))
    add(Case("laplace-unconverged", lambda t: hg.laplace_log_marginal(lap, Xs, counts,
                                                                      max_iter=1),
             "not converged", RuntimeWarning, area="hypergrad"))
    add(Case("laplace-mode-unconverged", lambda t: hg.laplace_mode(lap, Xs, counts,
                                                                   max_iter=1),
             "not converged", RuntimeWarning, area="hypergrad"))
    from aniso_gp.linalg import streaming

    def rbf(P, Q):
        return jnp.exp(-0.5 * jnp.sum((P[:, None] - Q[None]) ** 2, -1))

    state = streaming.nystrom_eigen(rbf, X[:20], X[:5])
    for label, call, names in [
        ("X_new-columns", lambda: streaming.add_points(state, rbf, X[:4, :2]), "`X_new`"),
        ("X_new-nan", lambda: streaming.update(state, rbf, X[:4] * np.nan), "`X_new`"),
        ("landmarks-1d", lambda: streaming.add_landmarks(state, rbf, X[0]), "`new_landmarks`"),
        ("num_landmarks", lambda: streaming.update(state, rbf, X[:4], num_landmarks=-2),
         "`num_landmarks`"),
        ("rank", lambda: streaming.nystrom_eigen(rbf, X, X[:5], rank=0), "`rank`"),
        ("tol", lambda: streaming.needs_refresh(state, tol=0.0), "`tol`"),
    ]:
        add(Case(f"streaming-{label}", lambda t, f=call: f(), names, area="hypergrad"))
    add(Case("solve_ihvp-cg-maxiter", lambda t: hg.solve_ihvp(
        hg.CG(maxiter=1), lambda v: jnp.diag(jnp.arange(1.0, 6.0)) @ v, b), "approximate",
        RuntimeWarning, area="hypergrad"))
    return c


def _cli_cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    vol = "{tmp}/v.npy"

    def with_volume(*argv):
        run = _cli(*argv)

        def call(tmp):
            np.save(tmp / "v.npy", VOL.astype(np.float32))
            pd.DataFrame({"x": X[:, 0], "y": X[:, 1], "z": X[:, 2], "value": Y}).to_csv(
                tmp / "t.csv", index=False)
            return run(tmp)
        return call

    out = ["--out", "{tmp}/o", "--quiet"]
    for opt, bad in [("--subsample", "0"), ("--subsample", "-3"), ("--chains", "0"),
                     ("--warmup", "-1"), ("--samples", "0"), ("--landmarks", "0"),
                     ("--holdout", "1.5"), ("--holdout", "-0.1"), ("--spacing", "0"),
                     ("--spacing", "nan"), ("--spacing", "-1"), ("--crop", "0:99,:,:"),
                     ("--crop", "a"), ("--mask", "{tmp}/missing.npy"),
                     ("--seed", "-1"), ("--subsample", "5")]:
        argv = ["fit", vol, *opt.split(), *bad.split(), *out]
        names = opt if opt not in ("--mask",) else "missing.npy"
        add(Case(f"cli-fit{opt}-{bad}", with_volume(*argv), names, area="cli"))
    for opt, bad in [("--subsample", "2"), ("--holdout", "0.99")]:
        add(Case(f"cli-table{opt}-{bad}", with_volume("fit", "{tmp}/t.csv", opt, bad, *out),
                 opt, area="cli"))
    add(Case("cli-table-value", with_volume("fit", "{tmp}/t.csv", "--value", "grade", *out),
             "--value", area="cli"))
    add(Case("cli-table-x-same", with_volume("fit", "{tmp}/t.csv", "--y", "x", *out),
             "--y", area="cli"))
    add(Case("cli-fit-nodata", _cli("fit", *out), "DATA", area="cli"))
    add(Case("cli-fit-missing", _cli("fit", "{tmp}/no.npy", *out), "no.npy", area="cli"))
    add(Case("cli-fit-directory", _cli("fit", "{tmp}", *out), "is not a regular file",
             area="cli"))
    add(Case("cli-fit-out-is-file", with_volume("fit", vol, "--out", "{tmp}/v.npy"), "v.npy",
             area="cli"))
    add(Case("cli-fit-resume-not-partial", _cli("fit", "--resume", "{tmp}"), "--resume",
             area="cli"))
    add(Case("cli-fit-resume-and-data", with_volume("fit", vol, "--resume", "{tmp}/x.partial"),
             "--resume", area="cli"))
    add(Case("cli-compare-kernels", with_volume("compare", vol, "--kernels", "ard,ard", *out),
             "--kernels", area="cli"))
    add(Case("cli-report-missing", _cli("report", "{tmp}/none"), "none", area="cli"))
    add(Case("cli-report-not-run", _cli("report", "{tmp}"), "not a run directory", area="cli"))

    def report_json(meta):
        run = _cli("report", "{tmp}/run")

        def call(tmp):
            (tmp / "run").mkdir()
            (tmp / "run" / "report.json").write_text(meta)
            return run(tmp)
        return call

    for label, meta, names in [("garbage", "{", "report.json"), ("list", "[]", "report.json"),
                               ("no-fits", "{}", "'fits'"),
                               ("traversal", '{"fits": ["../../../x"]}', "fit name"),
                               ("absolute", '{"fits": ["/etc"]}', "fit name"),
                               ("missing-fit", '{"fits": ["ard"]}', "posterior.nc not found"),
                               ("main", '{"fits": ["ard"], "main": "full"}', "'main'"),
                               ("title", '{"fits": ["ard"], "title": 3}', "'title'")]:
        add(Case(f"cli-report-json-{label}", report_json(meta), names, area="cli"))
    for opt, bad in [("--tile", "4"), ("--tile", "0"), ("--stride", "0"), ("--workers", "0"),
                     ("--min-observed", "2"), ("--min-observed", "nan"),
                     ("--threshold", "nan"), ("--spacing", "0"), ("--crop", "0:99,:,:"),
                     ("--seed", "-2")]:
        add(Case(f"cli-map{opt}-{bad}", with_volume("map", vol, opt, bad, "--out",
                                                    "{tmp}/m.zarr", "--quiet"), opt,
                 area="cli"))
    add(Case("cli-map-tile-larger-than-crop", with_volume(
        "map", vol, "--crop", "0:6,:,:", "--tile", "8", "--out", "{tmp}/m.zarr", "--quiet"),
        "--tile", area="cli"))
    for argv in (["fit", vol, "--kernel", "foo"], ["fit", vol, "--chains", "x"],
                 ["fit", vol, "--likelihood", "foo"], ["map", vol, "--method", "foo"],
                 ["fit", vol, "--seed", "1.5"]):
        add(Case(f"cli-argparse-{'-'.join(argv[2:])}", with_volume(*argv), argv[2],
                 area="cli"))
    return c


CASES = _cases()
