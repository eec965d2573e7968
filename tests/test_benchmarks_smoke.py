"""Smoke run of the benchmark scripts at toy sizes (the real runs are manual)."""

import subprocess
import sys
from pathlib import Path

from conftest import fast_compile_env

ROOT = Path(__file__).resolve().parent.parent


def _quick(script: str, timeout: int, *extra: str) -> str:
    """Run ``benchmarks/<script> --quick --no-append``; return its stdout."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--no-append", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=fast_compile_env(JAX_ENABLE_X64="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "appended to" not in proc.stdout
    return proc.stdout


def test_linalg_scaling_quick():
    out = _quick("linalg_scaling.py", timeout=180)
    for title in ("### 1. FITC", "### 2. Accuracy", "### 3. CG"):
        assert title in out


def test_large_fit_quick():
    out = _quick("large_fit.py", timeout=300)
    assert "| steps/draw" in out and "| rel. Frobenius" in out


def test_volume_scaling_quick():
    # Sections 2 (a peer environment from PyPI) and 4-7 (many fits) are manual.
    out = _quick("volume_scaling.py", 300, "--sections", "1,3")
    assert "### 1. Value and gradient time" in out and "| rel. Frobenius" in out


def test_streaming_campaign_quick():
    out = _quick("streaming_campaign.py", timeout=300)
    assert "| kernel evals update" in out and "Short axis after each batch" in out
