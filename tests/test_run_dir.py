"""Run directories received from someone else cannot redirect aniso-gp's writes
(:mod:`aniso_gp.run_dir`): planted links, hostile names, ``--force`` on a foreign
directory, and Markdown/HTML in user strings."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from aniso_gp import cli, report, run_dir
from aniso_gp.run_dir import UnsafeRunDirectoryError

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")


@pytest.fixture
def outside(tmp_path):
    """A file outside the run directory that nothing may touch."""
    target = tmp_path / "outside.txt"
    target.write_text("precious")
    return target


def test_write_file_replaces_a_planted_link_instead_of_following_it(tmp_path, outside):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.html").symlink_to(outside)
    (run / "report.html.tmp").symlink_to(outside)  # the old fixed temporary name
    run_dir.write_file(run / "report.html", "<p>new</p>")
    assert outside.read_text() == "precious"
    assert not (run / "report.html").is_symlink()
    assert (run / "report.html").read_text() == "<p>new</p>"
    assert sorted(p.name for p in run.iterdir()) == ["report.html", "report.html.tmp"]


def test_subdir_and_write_file_refuse_a_linked_directory(tmp_path, outside):
    run = tmp_path / "run"
    run.mkdir()
    (run / "figures").symlink_to(tmp_path)
    with pytest.raises(UnsafeRunDirectoryError, match="figures.*symbolic link"):
        run_dir.subdir(run, "figures")
    with pytest.raises(UnsafeRunDirectoryError, match="symbolic link"):
        run_dir.write_file(run / "figures" / "outside.txt", b"x")
    assert outside.read_text() == "precious"
    assert run_dir.subdir(run, "fits", "rotated").is_dir()


@pytest.mark.parametrize("name", ["../../../x", "..", ".hidden", "a/b", "a\\b", "", "x" * 65,
                                  "fit name", 5, None, ["rotated"]])
def test_check_name_refuses_what_could_leave_the_directory(name):
    with pytest.raises(UnsafeRunDirectoryError, match="fit name"):
        run_dir.check_name(name, "fit name")
    assert issubclass(UnsafeRunDirectoryError, PermissionError)


@pytest.mark.parametrize("name", ["rotated", "ard-2", "full_spd.v1", "A1"])
def test_check_name_accepts_plain_names(name):
    assert run_dir.check_name(name, "fit name") == name


def test_force_replaces_only_aniso_gp_runs(tmp_path):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not written by aniso-gp"):
        cli._check_output(foreign, force=True)
    with pytest.raises(FileExistsError, match="not written by aniso-gp"), \
            cli.staged_output(foreign, force=True):
        pass
    assert (foreign / "chapter1.tex").read_text() == "years of work"
    # A foreign OUT.partial is not deleted by --force either.
    (tmp_path / "run.partial").mkdir()
    with pytest.raises(FileExistsError, match="not written by aniso-gp"):
        cli._check_output(tmp_path / "run", force=True)
    # A linked run directory is not a run either, even with the marker behind the link.
    real = run_dir.create(tmp_path / "real", {})
    (tmp_path / "linked").symlink_to(real)
    assert run_dir.is_run(real) and not run_dir.is_run(tmp_path / "linked")


def test_staged_output_replaces_a_marked_run_only_when_complete(tmp_path):
    out = run_dir.create(tmp_path / "out", {})
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError), cli.staged_output(out, force=False):
        pass
    with cli.staged_output(out, force=True, record={"argv": ["demo"]}) as stage:
        assert stage.name == "out.partial" and run_dir.record(stage) == {"argv": ["demo"]}
        (stage / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # untouched until the run is complete
    assert sorted(p.name for p in out.iterdir()) == [run_dir.MARKER, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupted_stage_says_how_to_resume(tmp_path):
    with pytest.raises(KeyboardInterrupt) as exc, cli.staged_output(tmp_path / "r", False):
        raise KeyboardInterrupt
    assert "aniso-gp fit --resume" in " ".join(exc.value.__notes__)
    assert run_dir.is_run(tmp_path / "r.partial")


def test_markdown_shows_user_strings_literally():
    title = "<script>alert(1)</script> **bold** [link](http://x) # not | a table"
    frame = pd.DataFrame({"col|<b>": ["_x_", "1. a"]}, index=pd.Index(["# r", "`c`"], name="k"))
    md = report.render_markdown([report.Heading("- heading"), report.Paragraph("1) list"),
                                 report.Table(frame, "cap *x*")], title)
    assert "<script>" not in md and "<b>" not in md and "**bold**" not in md
    assert "\\<script\\>" in md and "\\[link\\]" in md and "x\\|y" not in md
    assert "## \\- heading" in md and "1\\) list" in md and "| \\# r | \\_x\\_ |" in md
    assert "| \\`c\\` | 1\\. a |" in md and "*cap \\*x\\**" in md
