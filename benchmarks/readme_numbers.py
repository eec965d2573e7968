"""The numbers the README quotes about `make demo`, measured by running it.

    python benchmarks/readme_numbers.py            # runs `aniso-gp demo` (~7 min on 2 cores)
    python benchmarks/readme_numbers.py --from DIR # reads an existing demo run directory

Prints a table and writes ``reports/readme_numbers.json`` (the numbers, each as the
README writes it, with the command and the machine); ``tests/test_readme.py`` fails
while the README does not quote them. ``--quick`` runs ``aniso-gp demo --quick`` and
writes nothing (the smoke test). Appends a dated block to reports/benchmark-log.md
unless --no-append or --quick.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volume_scaling import machine_info, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NUMBERS = ROOT / "reports" / "readme_numbers.json"
LOG = ROOT / "reports" / "benchmark-log.md"


def run_demo(out: Path, quick: bool) -> float:
    """``aniso-gp demo`` into ``out``; its wall time in seconds (the process, start to end)."""
    cmd = [sys.executable, "-m", "aniso_gp", "demo", "--out", str(out), "--force", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True,
                          cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"aniso-gp demo failed:\n{proc.stderr[-3000:]}")
    return wall


def _length(v: float) -> str:
    # voxels: one decimal, two below 3 (where one decimal is a coarse fraction)
    return f"{v:.2f}" if v < 3 else f"{v:.1f}"


def numbers(run: Path, wall_s: float | None) -> dict:
    """What the README says of a demo run, each value as the README writes it."""
    orient = pd.read_csv(run / "orientation.csv")
    comp = pd.read_csv(run / "comparison.csv", index_col=0)
    rot = orient[orient["kernel"] == "rotated"].reset_index(drop=True)
    out = {}
    if wall_s is not None:
        out["demo wall time"] = f"{wall_s:.0f} s"
        out["demo wall time (minutes)"] = f"{wall_s / 60:.1f} minutes"
    intervals = [f"{_length(r.l_median)} [{_length(r.l_lo)}, {_length(r.l_hi)}]"
                 for r in rot.itertuples()]
    out["rotated length-scales, 90% intervals"] = ", ".join(intervals[:2]) + " and " + intervals[2]
    errs = [f"{comp.loc['rotated', f'axis{i}_err_deg']:.1f}" for i in (1, 2, 3)]
    out["rotated axes to the truth, degrees"] = f"{errs[0]}, {errs[1]} and {errs[2]}"
    elpd = comp["elpd_loo"]
    out["LOO rotated vs full, nats"] = f"{abs(elpd['rotated'] - elpd['full']):.1f} nats apart"
    over_ard = round(elpd["rotated"] - elpd["ard"], -2)
    out["LOO rotated over ARD, nats"] = f"about {over_ard:,.0f} nats"
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="run", type=Path, default=None,
                   help="an existing demo run directory (no wall time then)")
    p.add_argument("--quick", action="store_true", help="smoke: `demo --quick`, nothing written")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is None:
            run = Path(tmp) / "demo"
            wall = run_demo(run, args.quick)
            command = "aniso-gp demo" + (" --quick" if args.quick else "")
        else:
            run, wall, command = args.run, None, f"aniso-gp demo (read from {args.run})"
        found = numbers(run, wall)
    text = "\n".join([
        f"## readme_numbers ({info['date']})", "",
        f"`python benchmarks/readme_numbers.py` ({command}); {info['cpu']};"
        f" load at start {info['load average at start']}", "",
        table(["README quotes", "value"], list(found.items())), ""])
    print(text)
    if not args.quick:
        record = {"command": command, "machine": info, "numbers": found}
        NUMBERS.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {os.path.relpath(NUMBERS, ROOT)}")
        if not args.no_append:
            with open(LOG, "a") as f:
                f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
