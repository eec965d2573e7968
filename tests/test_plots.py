"""Stereonet projection maths and rendering of every figure."""

from __future__ import annotations

import io as _io
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy.spatial.transform import Rotation

from aniso_gp import plots
from aniso_gp.datasets import Volume

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _render(fig: Figure) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    data = buf.getvalue()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    return data


def _axes_draws(S=300, spread=0.05, seed=0):
    """Rotations scattered around a fixed frame: (S, 3, 3) with axes as columns."""
    rng = np.random.default_rng(seed)
    R0 = Rotation.from_rotvec([0.4, -0.3, 0.5]).as_matrix()
    noise = Rotation.from_rotvec(spread * rng.standard_normal((S, 3))).as_matrix()
    return noise @ R0, R0


# --------------------------------------------------------------------------- #
# Projection maths
# --------------------------------------------------------------------------- #
def test_vertical_to_centre_horizontal_to_primitive():
    np.testing.assert_allclose(plots.equal_area([0.0, 0.0, -1.0]), [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(plots.equal_area([0.0, 0.0, 2.0]), [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(plots.equal_area([1.0, 0.0, 0.0]), [1.0, 0.0])  # East
    np.testing.assert_allclose(plots.equal_area([0.0, 3.0, 0.0]), [0.0, 1.0])  # North
    phi = np.linspace(0, 2 * np.pi, 17)
    horiz = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], -1)
    np.testing.assert_allclose(np.linalg.norm(plots.equal_area(horiz), axis=-1), 1.0)


def test_axial_flip_and_radius_law():
    v = np.array([0.0, 0.6, 0.8])  # upward: the same axis as (0, -0.6, -0.8)
    np.testing.assert_allclose(plots.equal_area(v), plots.equal_area(-v))
    assert plots.equal_area(v)[1] < 0  # plots to the South
    theta = np.radians(np.linspace(0, 90, 10))  # angle from the downward vertical
    v = np.stack([np.sin(theta), np.zeros_like(theta), -np.cos(theta)], -1)
    r = np.linalg.norm(plots.equal_area(v), axis=-1)
    np.testing.assert_allclose(r, np.sqrt(2.0) * np.sin(theta / 2), atol=1e-14)


def test_projection_is_equal_area():
    """|d(x, y)/d(theta, phi)| = sin(theta) / 2 everywhere: every patch of the lower
    hemisphere (area element sin(theta) dtheta dphi) maps to half its area."""
    rng = np.random.default_rng(0)
    theta = rng.uniform(0.05, np.pi / 2 - 0.05, 50)
    phi = rng.uniform(0, 2 * np.pi, 50)

    def P(t, p):
        return plots.equal_area(
            np.stack([np.sin(t) * np.sin(p), np.sin(t) * np.cos(p), -np.cos(t)], -1)
        )

    h = 1e-6
    dt = (P(theta + h, phi) - P(theta - h, phi)) / (2 * h)
    dp = (P(theta, phi + h) - P(theta, phi - h)) / (2 * h)
    jac = np.abs(dt[:, 0] * dp[:, 1] - dt[:, 1] * dp[:, 0])
    np.testing.assert_allclose(jac / np.sin(theta), 0.5, rtol=1e-6)
    # And globally: uniform axes fill the unit disk uniformly (P(r < rho) = rho^2).
    u = rng.standard_normal((200_000, 3))
    r = np.linalg.norm(plots.equal_area(u), axis=-1)
    for rho in (0.3, 0.6, 0.9):
        assert np.mean(r < rho) == pytest.approx(rho**2, abs=0.005)


def test_trend_plunge():
    tp = plots.trend_plunge(np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, -1.0], [-1.0, 0, 1.0]]))
    np.testing.assert_allclose(tp[0], [90.0, 0.0])
    assert tp[1, 1] == pytest.approx(90.0)
    np.testing.assert_allclose(tp[2], [0.0, 45.0])
    np.testing.assert_allclose(tp[3], [90.0, 45.0])  # up-West is the axis down-East


def test_mean_axis_cone_and_small_circle():
    rng = np.random.default_rng(0)
    v = np.array([0.3, -0.5, -0.8])
    v /= np.linalg.norm(v)
    draws = v + 0.05 * rng.standard_normal((500, 3))
    draws *= rng.choice([-1.0, 1.0], size=(500, 1))  # random signs: axial data
    m = plots.mean_axis(draws)
    assert plots.axial_angle_deg(m, v) < 1.0
    c = plots.cone_angle(draws, m)
    ang = plots.axial_angle_deg(draws, m[None])
    assert np.mean(ang <= c) == pytest.approx(0.95, abs=0.01)
    ring = plots.small_circle(v, 12.0)
    np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 1.0)
    np.testing.assert_allclose(np.degrees(np.arccos(ring @ v)), 12.0, atol=1e-9)


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #
def test_stereonet_renders():
    draws, R0 = _axes_draws()
    fig = plots.stereonet(draws, truth_axes=R0, title="test")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    _render(fig)
    fig2 = plots.stereonet(draws, mean_axes=R0, cone_deg=(5.0, 6.0, 7.0))
    _render(fig2)


def test_stereonet_cone_crossing_horizontal_renders():
    """A near-horizontal mean axis: its cone wraps to the antipodal side."""
    rng = np.random.default_rng(0)
    draws = Rotation.from_rotvec(0.2 * rng.standard_normal((100, 3))).as_matrix()
    rim = plots._projected_curve(plots.small_circle([1.0, 0.0, 0.0], 10.0))
    assert np.isnan(rim[:, 0]).sum() == 2  # crosses the horizontal twice: two breaks
    assert np.nanmax(np.linalg.norm(rim, axis=1)) <= 1.0 + 1e-12
    _render(plots.stereonet(draws))


def test_stereonet_errors():
    with pytest.raises(ValueError, match=r"`axes_draws` must have shape \(S, 3, 3\)"):
        plots.stereonet(np.zeros((10, 3)))
    draws, _ = _axes_draws(S=10)
    with pytest.raises(ValueError, match="`cone_deg`"):
        plots.stereonet(draws, cone_deg=120.0)
    with pytest.raises(ValueError, match=r"`truth_axes` must have shape \(3, 3\)"):
        plots.stereonet(draws, truth_axes=np.eye(2))


def test_ellipsoid_renders_and_checks_metric():
    R = Rotation.from_rotvec([0.3, 0.2, -0.4]).as_matrix()
    M = R @ np.diag([1 / 9.0, 1 / 4.0, 1.0]) @ R.T
    fig = plots.ellipsoid(M, truth=np.diag([1 / 8.0, 1 / 4.0, 1.0]), units="m")
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and fig.axes[0].name == "3d"
    _render(fig)
    own = Figure()
    ax = own.add_subplot(projection="3d")
    assert plots.ellipsoid(M, ax=ax) is own
    with pytest.raises(ValueError, match="positive definite"):
        plots.ellipsoid(np.diag([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="symmetric"):
        plots.ellipsoid(np.array([[1.0, 0.5, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="3-D Axes"):
        plots.ellipsoid(M, ax=Figure().add_subplot())


def test_lengthscale_densities_renders():
    rng = np.random.default_rng(0)
    draws = {
        "rotated": np.exp(np.log([8.0, 4.0, 2.0]) + 0.1 * rng.standard_normal((200, 3))),
        "ard": np.exp(np.log([2.5, 6.0, 3.0]) + 0.2 * rng.standard_normal((200, 3))),
        "point": np.tile([7.0, 3.0, 1.5], (5, 1)),  # degenerate: drawn as lines
    }
    fig = plots.lengthscale_densities(draws, truth=(2.0, 8.0, 4.0), units="nm")
    assert len(fig.axes) == 3
    _render(fig)
    with pytest.raises(ValueError, match="shape \\(S, 3\\)"):
        plots.lengthscale_densities({"bad": np.ones((4, 2))})
    with pytest.raises(ValueError, match="finite and positive"):
        plots.lengthscale_densities({"bad": -np.ones((4, 3))})


def test_slices_renders_rows_and_colourbars():
    rng = np.random.default_rng(0)
    data = Volume(rng.normal(size=(6, 7, 8)), spacing=2.0)
    mean = rng.normal(size=(6, 7, 8))
    sd = np.abs(rng.normal(size=(6, 7, 8)))
    fig = plots.slices(
        {"data": data, "predictive mean": mean, "predictive sd": sd},
        cmap={"predictive sd": "magma"},
    )
    assert len(fig.axes) == 3 * 3 + 3  # 3 planes per volume + one colour bar per row
    _render(fig)
    one = plots.slices(mean, index=(0, 1, 2), spacing=(1.0, 2.0, 3.0), units="nm")
    assert len(one.axes) == 4
    _render(one)
    with pytest.raises(ValueError, match="outside volume"):
        plots.slices(mean, index=(6, 0, 0))
    with pytest.raises(ValueError, match="must be 3-D"):
        plots.slices({"flat": np.zeros((3, 3))})


def test_trace_rank_renders():
    rng = np.random.default_rng(0)
    draws = {
        "M_00": rng.normal(size=(4, 150)),
        "l_short": rng.normal(size=(4, 150)) + 2.0,
        "one chain": rng.normal(size=150),
    }
    fig = plots.trace_rank(draws)
    assert len(fig.axes) == 6
    _render(fig)
    with pytest.raises(ValueError, match="NaN"):
        plots.trace_rank({"bad": np.full((2, 10), np.nan)})
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.trace_rank({})


def test_plots_do_not_touch_pyplot():
    code = (
        "import sys, aniso_gp.plots as p, numpy as np\n"
        "p.trace_rank({'a': np.zeros((2, 5)) + np.arange(5)})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_influence_map_labels_the_largest_and_rings_the_unreliable():
    import pandas as pd

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"x": rng.uniform(0, 5, 12), "y": rng.uniform(0, 5, 12),
                          "z": rng.uniform(0, 2, 12), "short_axis_change_deg": np.arange(12.0),
                          "unreliable": np.arange(12) % 5 == 0},
                         index=pd.Index([f"h{i}" for i in range(12)], name="group"))
    fig = plots.influence_map(table, units="m", top=3)
    ax_plan, ax_section = fig.axes[:2]
    assert [t.get_text() for t in ax_plan.texts] == ["h11", "h10", "h9"]
    assert ax_plan.get_xlabel() == "x (m)" and ax_section.get_ylabel() == "z (m)"
    rings = ax_plan.collections[1]
    assert len(rings.get_offsets()) == 3  # h0, h5, h10
    # A first-order table has no Pareto k: nothing is ringed.
    fig = plots.influence_map(table.drop(columns="unreliable"), top=3)
    assert len(fig.axes[0].collections[1].get_offsets()) == 0
    with pytest.raises(ValueError, match="no column 'short_axis_change_deg'"):
        plots.influence_map(table.drop(columns="short_axis_change_deg"))
