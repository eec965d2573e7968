"""Smoke test: both hypergradient benchmark scripts run end to end in --quick mode.

The two scripts run side by side (one process each, single-threaded XLA), with
--no-append so that reports/benchmark-log.md is left alone.
"""

import subprocess
import sys
from pathlib import Path

from conftest import fast_compile_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("hypergrad_solvers.py", "weight_decay_bilevel.py")


def test_hypergrad_benchmarks_quick():
    env = fast_compile_env()
    report = ROOT / "reports" / "benchmark-log.md"
    before = report.read_text() if report.exists() else None
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / name), "--quick", "--no-append"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in SCRIPTS
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for name, proc, out in zip(SCRIPTS, procs, outputs, strict=True):
        assert proc.returncode == 0, f"{name} failed:\n{out[-3000:]}"
    solvers_out, decay_out = outputs
    for heading in ("A. Equal HVP budgets", "B. Convergence", "C. Neumann", "D. 3-step",
                    "E. ASTRA-style"):
        assert heading in solvers_out
    assert "nystrom-pcg" in solvers_out and "spectral reuse" in solvers_out
    assert "nystrom-richardson" in solvers_out
    assert "1. Hypergradient at h0" in decay_out and "2. Outer optimisation" in decay_out
    after = report.read_text() if report.exists() else None
    assert after == before  # --no-append wrote nothing
