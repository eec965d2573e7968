"""Make ``aniso_gp/data/polymer_fibres.npy`` from the quanfima polymer-fibre micro-CT.

The source is ``data/polymer3d_8bit_128x128x128.raw`` of the GitHub repository
rshkarin/quanfima at commit da6b4109cb944a1a4861544a87b49d0f712fa8b9 (MIT licence),
a 128^3 uint8 X-ray micro-CT of a polymer fibre scaffold, raw C order, no header;
the development copy lives at ``../shared/data/`` with its licence. Standard
library and NumPy only::

    python data/scripts/make_polymer_fibres.py [--raw PATH] [--licence PATH]

Steps:

1. Check the raw file's sha256 and read it as ``(128, 128, 128)`` uint8.
2. Crop the 48^3 block ``[40:88, 0:48, 40:88]``. Its fibres run mostly along array
   axis 1 (moment estimate of the metric from the autocovariance at lags <= 2
   voxels: length-scales about 4.6, 2.0 and 1.4 voxels, the longest within 10 deg
   of axis 1), where other blocks of the scan point elsewhere: one block is close to
   stationary, the whole scan is not.
3. Save it as ``.npy`` in its own dtype (uint8, 110,720 bytes) and copy the licence
   text next to it as ``LICENSE-quanfima.txt``.

Voxel size: not documented upstream, so the data are in voxel units.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT.parent / "shared" / "data" / "polymer3d_8bit_128x128x128.raw"
LICENCE = ROOT.parent / "shared" / "data" / "polymer3d.LICENSE"
RAW_SHA256 = "3806417b3e876e909f6f08d5b0b33248cd5e8ddb81596abc86b212ec186470c9"
CROP = (slice(40, 88), slice(0, 48), slice(40, 88))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--raw", type=Path, default=RAW)
    p.add_argument("--licence", type=Path, default=LICENCE)
    args = p.parse_args(argv)
    data = args.raw.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RAW_SHA256:
        raise SystemExit(f"{args.raw}: sha256 {digest} is not the quanfima file's {RAW_SHA256}")
    vol = np.frombuffer(data, dtype=np.uint8).reshape(128, 128, 128)
    crop = np.ascontiguousarray(vol[CROP])
    out = ROOT / "aniso_gp" / "data"
    np.save(out / "polymer_fibres.npy", crop, allow_pickle=False)
    shutil.copyfile(args.licence, out / "LICENSE-quanfima.txt")
    print(f"wrote {out / 'polymer_fibres.npy'} {crop.shape} {crop.dtype} and the licence")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
