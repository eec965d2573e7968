"""Run the bad-input table (tests/bad_input_cases.py) and write reports/reliability.md.

    python scripts/reliability_report.py

Outcome classes: A, a clear error of the expected type naming the argument (or, for
a valid edge input, accepted); B, an unclear error; C, silently accepted (or a valid
input refused). tests/test_bad_input.py asserts A for every case and that this
report lists every case.
"""

from __future__ import annotations

import collections
import datetime as dt
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bad_input_cases import CASES, classify  # noqa: E402

AREAS = {"api": "Python API", "hypergrad": "hypergradients and Laplace GP",
         "cli": "command line"}


def main() -> int:
    t0 = time.perf_counter()
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome, detail = classify(case, Path(tmp))
        rows.append((case, outcome, detail))
    wall = time.perf_counter() - t0
    counts = collections.Counter(o for _, o, _ in rows)
    by_area = collections.Counter((c.area, o) for c, o, _ in rows)
    valid = sum(c.names is None for c, _, _ in rows)
    lines = [
        "# Reliability: bad input, faults and untrusted run directories",
        "",
        f"Written by `python scripts/reliability_report.py` on {dt.date.today()} "
        f"({platform.python_version()}, {platform.machine()}; {wall:.0f} s). The cases are "
        "`tests/bad_input_cases.py`; `tests/test_bad_input.py` asserts that each is "
        "class A and that this file lists them all.",
        "",
        "Classes: **A** a clear error of the expected type whose message names the argument "
        "(on the command line: the option), raised before any compilation or sampling; for "
        "a valid edge input (`expect` = accept), accepted. **B** an unclear error (a bare "
        "traceback from a library, a message naming an internal argument). **C** silently "
        "accepted bad input, or a valid input refused.",
        "",
        f"**{len(rows)} cases** ({valid} valid edge inputs): "
        + ", ".join(f"{k} {counts.get(k, 0)}" for k in "ABC") + ".",
        "",
        "| area | cases | A | B | C |",
        "|---|---|---|---|---|",
    ]
    for area, label in AREAS.items():
        n = sum(c.area == area for c, _, _ in rows)
        lines.append(f"| {label} | {n} | " + " | ".join(
            str(by_area.get((area, k), 0)) for k in "ABC") + " |")
    lines += [
        "",
        "Fault and security tests beside the table: `tests/test_run_dir.py` (writes never "
        "follow a planted link, hostile names, `--force` only on aniso-gp's own runs, "
        "Markdown/HTML in user strings) and, in `tests/test_cli.py`, a received run "
        "directory with planted links and a forged `report.json`, a garbage "
        "`posterior.nc`, interrupt + `--resume` reusing the finished fit, a resume refused "
        "after the input changed, and SIGTERM handled like Ctrl-C (exit 143).",
        "",
        "## Every case",
        "",
        "| case | area | expect | outcome | what the user gets |",
        "|---|---|---|---|---|",
    ]
    for case, outcome, detail in rows:
        expect = "accept" if case.names is None else (
            case.error.__name__ if isinstance(case.error, type) else
            " or ".join(e.__name__ for e in case.error))
        text = detail.replace("|", "\\|").replace("`", "'")
        if len(text) > 220:
            text = text[:217] + "..."
        lines.append(f"| `{case.id}` | {case.area} | {expect} | {outcome} | {text} |")
    out = ROOT / "reports" / "reliability.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} cases: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in "ABC")
          + f" ({wall:.0f} s); written to {out.relative_to(ROOT)}")
    return 0 if counts.get("A", 0) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
