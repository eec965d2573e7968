"""The ``aniso-gp`` command end to end: fit -> report on a tiny volume, output-directory
safety, and one-line errors for user mistakes.

The fit runs through ``python -m aniso_gp`` in a child process (the real entry
point and exit status); everything else runs in-process through ``cli.main``.
The demo's smoke run (``demo --quick``) is exercised by tests/test_report.py,
whose report checks use it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import fast_compile_env

from aniso_gp import cli, datasets

TINY = ["--subsample", "50", "--holdout", "0.2", "--chains", "2", "--warmup", "40",
        "--samples", "40", "--quiet"]


def _aniso_gp(*argv, timeout=900) -> subprocess.CompletedProcess:
    """Run ``python -m aniso_gp ARGV`` in a child process.

    The child gets XLA's cheap-compile flags: at test sizes compiling the NUTS
    sampler dominates, and unoptimised code compiles ~40% faster (same results).
    """
    return subprocess.run([sys.executable, "-m", "aniso_gp", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout,
                          env=fast_compile_env())


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    """The one error line of stderr (notes such as 'kept 50 of 1000 points' may precede it)."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if not line.startswith("aniso-gp: note:")]
    assert len(errors) == 1, err
    assert errors[0].startswith("aniso-gp: error: ")
    return errors[0]


@pytest.fixture(scope="module")
def tiny_volume(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    vol = datasets.nano_brick(shape=(10, 10, 10), seed=2)
    path = d / "brick.npy"
    np.save(path, vol.density.astype(np.float32))
    return path


@pytest.fixture(scope="module")
def fitted_run(tiny_volume, tmp_path_factory):
    """``python -m aniso_gp fit`` on the tiny volume, in a child process (the real
    entry point and exit status); returns the run directory."""
    out = tmp_path_factory.mktemp("runs") / "run"
    # ARD: the round trip does not depend on the kernel, and ARD compiles fastest.
    proc = _aniso_gp("fit", tiny_volume, "--kernel", "ard", "--spacing", "0.5",
                     "--units", "um", "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done in" in proc.stdout
    return out


# --------------------------------------------------------------------------- #
# fit -> report round trip
# --------------------------------------------------------------------------- #
def test_fit_writes_the_run_directory(fitted_run):
    d = fitted_run
    for name in ("report.html", "report.md", "summary.csv", "orientation.csv",
                 "diagnostics.json", "comparison.csv", "points.csv", "report.json",
                 "fits/ard/posterior.nc", "fits/ard/settings.json",
                 "figures/stereonet.png", "figures/slices.png"):
        assert (d / name).is_file(), name
    assert not d.with_name(d.name + ".partial").exists()
    points = pd.read_csv(d / "points.csv")
    assert len(points) == 50 and set(points["set"]) == {"train", "test"}
    # --spacing 0.5: coordinates are physical, a 10-voxel axis spans 4.5 um.
    assert points[["x", "y", "z"]].max().max() <= 4.5 + 1e-9
    orient = pd.read_csv(d / "orientation.csv", index_col=[0, 1])
    assert len(orient) == 3
    assert "um" in (d / "report.html").read_text()


def test_fit_whole_volume_with_crop_mask_and_prediction(tiny_volume, tmp_path, capsys):
    """A volume without --subsample is fitted whole (whittle), cropped and masked, and its
    grid prediction written; the report says how the data were used."""
    mask = np.ones((10, 10, 10), np.uint8)
    mask[:, :2, :] = 0
    np.save(tmp_path / "mask.npy", mask)
    code, out, err = _run(capsys, "fit", tiny_volume, "--kernel", "ard", "--crop", "1:9,:,:",
                          "--mask", tmp_path / "mask.npy", "--taper", "tukey", "--predict",
                          "npy", "--chains", "1", "--warmup", "40", "--samples", "40",
                          "--quiet", "--out", tmp_path / "run")
    assert code == 0, err
    assert "whole volume 8x10x10 (640 voxels)" in out
    run = tmp_path / "run"
    mean, sd = np.load(run / "prediction_mean.npy"), np.load(run / "prediction_sd.npy")
    assert mean.shape == sd.shape == (8, 10, 10) and np.all(sd > 0)
    settings = json.loads((run / "fits" / "ard" / "settings.json").read_text())
    assert settings["likelihood"] == "whittle" and settings["grid"]["taper"] == "tukey"
    assert settings["grid"]["origin"] == [1.0, 0.0, 0.0]
    assert settings["grid"]["masked_fraction"] == pytest.approx(0.2)
    assert "debiased Whittle" in (run / "report.md").read_text()


def test_report_rebuilds_a_saved_run(fitted_run, capsys):
    (fitted_run / "report.html").unlink()
    (fitted_run / "figures" / "stereonet.png").unlink()
    code, out, err = _run(capsys, "report", fitted_run)
    assert code == 0, err
    assert "report rebuilt" in out
    assert (fitted_run / "report.html").is_file()
    assert (fitted_run / "figures" / "stereonet.png").is_file()


def test_report_does_not_write_through_links_or_trust_report_json(fitted_run, tmp_path,
                                                                   capsys):
    """A received run directory with planted links and hostile names: the report refuses
    or replaces the links, never writes outside, and validates fit names first."""
    import shutil

    run = tmp_path / "received"
    shutil.copytree(fitted_run, run)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.html").write_text("precious")
    (run / "report.html").unlink()
    (run / "report.html").symlink_to(outside / "victim.html")
    (run / "report.html.tmp").symlink_to(outside / "victim.html")
    code, _, err = _run(capsys, "report", run)
    assert code == 0, err
    assert (outside / "victim.html").read_text() == "precious"
    assert not (run / "report.html").is_symlink()

    shutil.rmtree(run / "figures")
    (run / "figures").symlink_to(outside)
    code, _, err = _run(capsys, "report", run)
    assert code == 1 and "figures' is a symbolic link" in _error_line(err)
    assert sorted(p.name for p in outside.iterdir()) == ["victim.html"]

    meta = json.loads((run / "report.json").read_text())
    for bad, message in ((["../../../x"], "fit name '../../../x' is not a valid name"),
                         ([], "'fits' must be a non-empty list"),
                         ("ard", "'fits' must be a non-empty list")):
        (run / "report.json").write_text(json.dumps({**meta, "fits": bad}))
        code, _, err = _run(capsys, "report", run)
        assert code == 1 and message in _error_line(err)
    (run / "report.json").write_text(json.dumps({**meta, "title": ["x"]}))
    code, _, err = _run(capsys, "report", run)
    assert code == 1 and "'title' has the wrong type" in _error_line(err)
    (run / "report.json").write_text(json.dumps(meta))
    (run / "fits" / "ard" / "posterior.nc").write_bytes(b"\x89HDF garbage")
    code, _, err = _run(capsys, "report", run)
    assert code == 1 and "posterior.nc cannot be read as a saved posterior" in _error_line(err)


def test_influence_command_writes_a_table_and_a_report_section(fitted_run, tmp_path,
                                                               capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    code, out, err = _run(capsys, "influence", run)
    assert code == 0, err
    assert "largest short-axis changes" in out
    table = pd.read_csv(run / "influence.csv", index_col=0)
    assert table.index.name == "observation" and len(table) == 40  # 50 points, 20% held out
    html = (run / "report.html").read_text()
    assert ">Influence</h2>" in html and 'id="fig-influence"' in html
    assert (run / "figures" / "influence.png").is_file()
    assert "## Influence" in (run / "report.md").read_text()

    code, out, err = _run(capsys, "influence", run, "--groups", "blocks", "--block", "2")
    assert code == 0, err
    table = pd.read_csv(run / "influence.csv", index_col=0)
    assert table.index.name == "group" and table["n_obs"].sum() == 40 and len(table) > 2
    code, _, err = _run(capsys, "report", run)  # a rebuilt report keeps the section
    assert code == 0 and ">Influence</h2>" in (run / "report.html").read_text()

    # First order, by iterative solves with a Nystrom-preconditioned Richardson iteration.
    code, out, err = _run(capsys, "influence", run, "--first-order", "--rank", "20",
                          "--draws", "20")
    assert code == 0, err
    assert "(first order)" in out
    table = pd.read_csv(run / "influence.csv", index_col=0)
    assert len(table) == 40 and "pareto_k" not in table and "l3_change" in table
    html = (run / "report.html").read_text()
    assert "to first order" in html and 'id="fig-influence"' in html

    for argv, message in ((["--block", "2"], "--block SIZE goes with --groups blocks"),
                          (["--groups", "blocks", "--block", "-1"], "--block must be finite"),
                          (["--groups", "vertical", "--draws", "0"], "--draws must be"),
                          (["--draws", "50"], "--draws thins the draws of a group"),
                          (["--rank", "5"], "--rank K sets the solver of --first-order"),
                          (["--first-order", "--rank", "0"], "--rank must be at least 1"),
                          (["--first-order", "--groups", "vertical"], "does not go with")):
        code, _, err = _run(capsys, "influence", run, *argv)
        assert code == 1 and message in _error_line(err), err
    code, _, err = _run(capsys, "influence", tmp_path)
    assert code == 1 and "is not a run directory" in _error_line(err)


def test_an_interrupted_fit_resumes_reusing_finished_fits(tiny_volume, tmp_path, capsys,
                                                         monkeypatch):
    """Interrupted after its fit was saved: 'fit --resume OUT.partial' loads that fit instead
    of sampling again, finishes the report and renames the directory."""
    from aniso_gp import inference

    real_compare = inference.compare

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "compare", interrupted)
    out = tmp_path / "run"
    code, _, err = _run(capsys, "fit", tiny_volume, "--kernel", "ard", "--out", out, *TINY)
    assert code == 130 and f"fit --resume {out}.partial" in err
    stage = tmp_path / "run.partial"
    assert (stage / "fits" / "ard" / "settings.json").is_file() and not out.exists()

    code, _, err = _run(capsys, "fit", "--resume", stage, "--chains", "3")
    assert code == 1 and "only --quiet may be given" in _error_line(err)
    code, _, err = _run(capsys, "fit", "--resume", tmp_path / "elsewhere.partial")
    assert code == 1 and "not an interrupted aniso-gp run" in _error_line(err)

    monkeypatch.setattr(inference, "compare", real_compare)
    monkeypatch.setattr(inference, "fit", lambda *a, **k: pytest.fail("refitted"))
    code, out_text, err = _run(capsys, "fit", "--resume", stage, "--quiet")
    assert code == 0, err
    assert "reusing the finished fit" in out_text
    assert (out / "report.html").is_file() and not stage.exists()


def test_resume_refuses_changed_inputs(tiny_volume, tmp_path, capsys, monkeypatch):
    from aniso_gp import inference

    data = tmp_path / "copy.npy"
    data.write_bytes(tiny_volume.read_bytes())
    monkeypatch.setattr(inference, "fit", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    code, _, _ = _run(capsys, "fit", data, "--out", tmp_path / "r", *TINY)
    assert code == 130
    np.save(data, np.zeros((10, 10, 10), np.float32))
    code, _, err = _run(capsys, "fit", "--resume", tmp_path / "r.partial")
    assert code == 1 and "has changed since the run started" in _error_line(err)


def test_sigterm_is_handled_like_ctrl_c(tiny_volume, tmp_path):
    """SIGTERM while sampling: exit 143, one message naming the kept directory."""
    import signal
    import time

    out = tmp_path / "run"
    # Long chains: with compilation cached, TINY's sampling could end before the signal.
    long = [*TINY[:6], "--warmup", "5000", "--samples", "5000", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "aniso_gp", "fit", str(tiny_volume),
                             "--kernel", "ard", "--out", str(out), *long],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=fast_compile_env())
    for line in proc.stdout:  # the fit has started: signal handlers are installed
        if "fitting the ard kernel" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err and "Traceback" not in err
    assert (tmp_path / "run.partial").is_dir() and not out.exists()


def test_existing_output_is_not_replaced_without_force(fitted_run, tiny_volume, capsys):
    before = (fitted_run / "report.json").read_text()
    code, _, err = _run(capsys, "fit", tiny_volume, "--out", fitted_run, *TINY)
    assert code == 1
    assert "exists; pass --force" in _error_line(err)
    assert (fitted_run / "report.json").read_text() == before


# --------------------------------------------------------------------------- #
# Output directory safety (no sampling; the rest is in tests/test_run_dir.py)
# --------------------------------------------------------------------------- #
def test_failed_run_keeps_finished_artefacts(tmp_path, tiny_volume, capsys, monkeypatch):
    """The second kernel fails: the first kernel's saved fit survives in OUT.partial."""
    from aniso_gp import inference

    class FakeFit:
        kernel = "rotated"

        def save(self, path, overwrite=False):
            (path / "settings.json").write_text("{}")

    def fake_fit(X, y, kernel="rotated", **kw):
        if kernel == "ard":
            raise np.linalg.LinAlgError("the kernel matrix is not positive definite")
        return FakeFit()

    monkeypatch.setattr(inference, "fit", fake_fit)
    out = tmp_path / "run"
    code, _, err = _run(capsys, "compare", tiny_volume, "--kernels", "rotated,ard",
                        "--out", out, *TINY)
    assert code == 1
    line = _error_line(err)
    assert "not positive definite" in line and "run.partial" in line
    assert not out.exists()
    assert (tmp_path / "run.partial" / "fits" / "rotated" / "settings.json").is_file()
    # A stale partial run is not silently deleted either.
    code, _, err = _run(capsys, "compare", tiny_volume, "--out", out, *TINY)
    assert code == 1 and "interrupted earlier run" in _error_line(err)


# --------------------------------------------------------------------------- #
# User errors: exit 1, one line on stderr, no traceback
# --------------------------------------------------------------------------- #
def test_missing_file_exits_nonzero_with_one_line(tmp_path):
    proc = _aniso_gp("fit", tmp_path / "missing.npy", "--out", tmp_path / "o", timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("aniso-gp: error: no such file")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_bad_column_names_the_available_ones(tmp_path, capsys):
    table = tmp_path / "samples.csv"
    pd.DataFrame({"east": [0.0, 1.0], "north": [0.0, 1.0], "up": [0.0, 1.0],
                  "grade": [1.0, 2.0]}).to_csv(table, index=False)
    code, _, err = _run(capsys, "fit", table, "--x", "east", "--y", "north", "--z", "up",
                        "--value", "bitumen", "--out", tmp_path / "o")
    assert code == 1
    line = _error_line(err)
    assert "--value 'bitumen'" in line and "'grade'" in line


@pytest.mark.parametrize("argv, message", [
    (["compare", "{data}", "--kernels", "rotated,gaussian"], "--kernels must list"),
    (["fit", "{data}", "--subsample", "50", "--holdout", "1.5"], "--holdout must be in"),
    (["fit", "{data}", "--holdout", "0.2"], "--holdout applies to points"),
    (["fit", "{data}", "--subsample", "50", "--predict", "npy"], "--predict writes grid"),
    (["fit", "{data}", "--subsample", "50", "--likelihood", "whittle"],
     "--likelihood whittle needs a volume"),
    (["fit", "{data}", "--subsample", "50", "--taper", "hann"], "--taper applies to"),
    (["fit", "{data}", "--crop", "0:5,0:5"], "--crop takes three ranges"),
    (["fit", "{data}", "--crop", "0:5,a:b,:"], "--crop ranges look like"),
    (["fit", "{data}", "--crop", "5:5,:,:"], "selects no voxel"),
    (["fit", "{data}", "--crop", "0:3,:,:"], "at least 4 voxels"),
    (["fit", "{data}", "--mask", "{data}", "--crop", ":,:,:"], "--mask has no True voxel"),
    (["fit", "{data}", "--chains", "0"], "`--chains` must be a positive"),
    (["fit", "{data}", "--spacing", "1", "2"], "--spacing takes 1 or 3"),
    (["report", "{tmp}"], "not a run directory"),
])
def test_user_errors_are_one_line(argv, message, tiny_volume, tmp_path, capsys):
    argv = [a.format(data=tiny_volume, tmp=tmp_path) for a in argv]
    if "--mask" in argv:  # a mask file of zeros
        zeros = tmp_path / "zeros.npy"
        np.save(zeros, np.zeros(np.load(tiny_volume).shape, np.uint8))
        argv[argv.index("--mask") + 1] = str(zeros)
    if argv[0] != "report":
        argv += ["--out", str(tmp_path / "o")]
    code, _, err = _run(capsys, *argv)
    assert code == 1
    assert message in _error_line(err)


def test_help_everywhere(capsys):
    for argv in ([], ["demo"], ["fit"], ["compare"], ["report"], ["influence"]):
        with pytest.raises(SystemExit) as exc:
            cli.main([*argv, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: aniso-gp")
    assert cli.main([]) == 2  # no command: usage on stderr


# --------------------------------------------------------------------------- #
# The demo (its smoke run, `demo --quick`, is the fixture of test_report.py)
# --------------------------------------------------------------------------- #
def test_demo_refuses_an_existing_output_before_any_work(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    code, _, err = _run(capsys, "demo", "--quick", "--out", tmp_path / "demo")
    assert code == 1 and "--force" in _error_line(err)
    code, _, err = _run(capsys, "demo", "--quick", "--kernels", "rotated,rbf")
    assert code == 1 and "--kernels must list" in _error_line(err)
