"""The report of an orientation map: what was fitted, how well, and pictures.

:func:`write_map_report` writes ``report.html`` (self-contained), its Markdown
twin ``report.md`` and ``figures/*.png`` for a map from
:func:`aniso_gp.orientation_map.orientation_map`, with the blocks and renderers
of :mod:`aniso_gp.report`: map slices with glyphs through the middle of the
lattice along each axis (over the volume's section when the volume is given),
stereonets of the tiles' short and long axes, the histogram of cone widths, the
agreement with the structure tensor, and the failed tiles with their reasons.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from aniso_gp import plots, report
from aniso_gp.report import Bullets, FigureBlock, Heading, Paragraph, Table
from aniso_gp.run_dir import write_file

MAX_FAILURE_ROWS = 20


def _section(volume, ds, axis):
    """The volume's plane through the middle lattice slice along ``axis`` and its
    physical extent (x along the higher in-plane axis)."""
    n = ds["status"].shape[axis]
    start = int(ds[f"start{axis}"].values[n // 2])
    tile = json.loads(ds.attrs["aniso_gp_map"])["tile"][axis]
    at = [0, 0, 0]
    size = list(volume.shape)
    at[axis], size[axis] = min(start + tile // 2, volume.shape[axis] - 1), 1
    values, observed = volume.read(at, size)
    img = np.where(observed, values.astype(float), np.nan).squeeze(axis)
    a, b = (d for d in range(3) if d != axis)
    ca, cb = volume.axis_coordinates()[a], volume.axis_coordinates()[b]
    h_a, h_b = volume.spacing[a] / 2, volume.spacing[b] / 2
    return img, (cb[0] - h_b, cb[-1] + h_b, ca[0] - h_a, ca[-1] + h_a)


def summary_items(ds) -> list[str]:
    """The map in sentences: tiles, failures, length-scales, cones, the peer's agreement."""
    settings = json.loads(ds.attrs["aniso_gp_map"])
    status = np.asarray(ds["status"].values)
    ok = status == 1
    units = ds.attrs.get("units", "")
    items = [f"{status.size} tiles of {' x '.join(map(str, settings['tile']))} voxels "
             f"(stride {' x '.join(map(str, settings['stride']))}) on a "
             f"{' x '.join(map(str, status.shape))} lattice; method {settings['method']}, "
             f"{settings['base']} base.",
             f"{int(ok.sum())} fitted, {int((status == 2).sum())} failed, "
             f"{int((status == 0).sum())} not yet fitted."]
    if ok.any():
        ls = np.asarray(ds["lengthscale"].values)[ok]
        cones = np.asarray(ds["cone"].values)[ok]
        med = ", ".join(f"{v:.3g}" for v in np.median(ls, axis=0))
        items.append(f"Median length-scales (long, mid, short): {med} {units}".rstrip() + ".")
        items.append("Median 95% cones (long, mid, short): "
                     + ", ".join(f"{v:.1f}" for v in np.median(cones, axis=0)) + " deg; "
                     f"{int(np.asarray(ds['weakly_identified'].values)[ok].any(axis=-1).sum())} "
                     "tiles have a weakly identified axis, "
                     f"{int(np.asarray(ds['longer_than_tile'].values)[ok].any(axis=-1).sum())} "
                     "a length-scale longer than the tile.")
        st = np.asarray(ds["st_angle"].values)[ok]
        within = np.asarray(ds["st_within_cone"].values)[ok]
        if np.isfinite(st).any():
            items.append(f"Structure tensor (kernel-free peer) vs the GP short axis: median "
                         f"angle {np.nanmedian(st):.1f} deg, 90th percentile "
                         f"{np.nanpercentile(st, 90):.1f} deg; inside the GP's 95% cone in "
                         f"{100 * within.mean():.0f}% of the tiles.")
    return items


def build_blocks(ds, volume=None) -> list:
    status = np.asarray(ds["status"].values)
    units = ds.attrs.get("units", "")
    blocks = [Heading("Summary"), Bullets(tuple(summary_items(ds)))]
    if (status == 1).any():
        blocks.append(Heading("Orientation map"))
        for axis in range(3):
            img = ext = None
            if volume is not None:
                img, ext = _section(volume, ds, axis)
            fig = plots.map_slice(ds, axis=axis, rank=2, image=img, image_extent=ext,
                                  units=units)
            blocks.append(FigureBlock(
                f"map_slice_axis{axis}",
                f"Short axis of each tile in the middle lattice slice along array axis {axis}, "
                "projected onto the slice; colour: its 95% credible cone.",
                report._png(fig)))
        for rank, name in ((2, "short"), (0, "long")):
            blocks.append(FigureBlock(
                f"map_stereonet_{name}",
                f"{name.capitalize()} axes of all fitted tiles (lower hemisphere, equal area; "
                "x, y, z = array axes 0, 1, 2), coloured by cone.",
                report._png(plots.map_stereonet(ds, rank=rank))))
        blocks.append(FigureBlock("map_cones", "Distribution of the 95% cones over the tiles.",
                                  report._png(plots.map_cone_histogram(ds))))
    failed = np.argwhere(status == 2)
    if len(failed):
        rows = [{"tile": ", ".join(map(str, idx)), "reason": str(ds["error"].values[tuple(idx)])}
                for idx in failed[:MAX_FAILURE_ROWS]]
        frame = pd.DataFrame(rows).set_index("tile")
        more = len(failed) - MAX_FAILURE_ROWS
        blocks += [Heading("Failed tiles"),
                   Table(frame, f"and {more} more" if more > 0 else "")]
    blocks += [Heading("Settings"),
               Paragraph(json.dumps(json.loads(ds.attrs["aniso_gp_map"]), sort_keys=True))]
    return blocks


def write_map_report(ds, out_dir, title: str = "Orientation map", volume=None):
    """Write ``report.html``, ``report.md`` and ``figures/`` into ``out_dir``
    (created); returns the HTML path. ``volume`` (a LazyVolume) adds sections."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(ds, volume)
    report._write_figures(out, blocks)
    write_file(out / report.REPORT_MD, report.render_markdown(blocks, title))
    return write_file(out / report.REPORT_HTML, report.render_html(blocks, title))
