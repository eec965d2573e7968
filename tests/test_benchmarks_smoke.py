"""Smoke run of the benchmark scripts at toy sizes (the real runs are manual)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_linalg_scaling_quick():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "linalg_scaling.py"), "--quick", "--no-append"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "JAX_ENABLE_X64": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ("### 1. FITC", "### 2. Accuracy", "### 3. CG"):
        assert title in proc.stdout
    assert "appended to" not in proc.stdout


def test_large_fit_quick():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "large_fit.py"), "--quick", "--no-append"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| steps/draw" in proc.stdout and "| rel. Frobenius" in proc.stdout
    assert "appended to" not in proc.stdout
