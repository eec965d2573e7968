"""The jupytext notebooks run top to bottom at smoke sizes (``ANISO_GP_SMOKE=1``).

Each notebook is converted with jupytext and executed with nbclient in a
``python3`` Jupyter kernel, which jupyter_client starts with this interpreter
(a kernelspec whose argv[0] is "python" is mapped to ``sys.executable``), so it
sees the same virtual environment as the tests. Figures go to a temporary
directory through ``ANISO_GP_REPORTS``, so test runs leave nothing in reports/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import fast_compile_env

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory, monkeypatch_module):
    """'python3' when it is registered; otherwise a private kernelspec running this Python."""
    if "python3" in kernelspec.KernelSpecManager().find_kernel_specs():
        return "python3"
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "aniso-gp-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "aniso_gp tests", "language": "python",
    }))
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    return "aniso-gp-test"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("name, figures", [
    ("material_density", ["brick_stereonet", "brick_ellipsoid", "brick_lengthscales",
                          "needle_stereonet", "needle_lengthscales", "needle_data_slices",
                          "fibres_stereonet", "patchwork_map", "patchwork_stereonet"]),
    ("oilsands", ["vertical_trend", "stereonet", "lengthscales", "hole_influence"]),
])
def test_notebook_runs_in_smoke_mode(name, figures, kernel_name, tmp_path, monkeypatch):
    monkeypatch.setenv("ANISO_GP_SMOKE", "1")
    monkeypatch.setenv("ANISO_GP_REPORTS", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Only the notebook kernels see the cheap-compile flags.
    monkeypatch.setenv("XLA_FLAGS", fast_compile_env()["XLA_FLAGS"])
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert nb.metadata["kernelspec"]["name"] == "python3"
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on failure
    for fig in figures:
        png = tmp_path / "figures" / name / f"{fig}.png"
        assert png.is_file() and png.stat().st_size > 5000, png
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
