"""Tests of aniso_gp.orientation on synthetic draws around a known frame.

Oracles are closed forms (draws at a fixed angle, Rayleigh-distributed
tangent errors, scaled metrics), scipy.linalg.logm/expm for the log-Euclidean
mean, and aniso_gp.so3 for the distances the module must reuse.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.linalg

from aniso_gp import orientation as ori
from aniso_gp import so3

A0 = (np.pi / 4) * np.ones(3) / np.sqrt(3.0)  # the benchmark's regime (a) rotation
R0 = np.asarray(so3.exp(A0))  # columns: the true principal directions

# Jitted once: eager so3 calls recompile every primitive for each new shape.
_exp = jax.jit(so3.exp)
_axial = jax.jit(so3.axial_angle)
_metric = jax.jit(so3.metric)


def _draws_around(R, sigma, n, rng, flip_signs=True):
    """(n, 3, 3) frames exp(sigma * xi) @ R, xi ~ N(0, I), columns randomly negated."""
    V = np.asarray(_exp(sigma * rng.standard_normal((n, 3)))) @ R
    if flip_signs:
        V = V * rng.choice([-1.0, 1.0], size=(n, 1, 3))
    return V


def _sorted_lognormal(l, sd, n, rng):
    """(n, 3) length-scales log l ~ N(log l_true, sd^2), each draw sorted descending."""
    draws = np.exp(np.log(l) + np.asarray(sd) * rng.standard_normal((n, 3)))
    return -np.sort(-draws, axis=1)


def _angle(u, w):
    return float(_axial(np.asarray(u), np.asarray(w)))


# --------------------------------------------------------------------------- #
# mean axis and orientation tensor                                            #
# --------------------------------------------------------------------------- #
def test_mean_axis_recovers_frame_despite_sign_flips():
    rng = np.random.default_rng(0)
    V = _draws_around(R0, 0.05, 1000, rng)
    for i in range(3):
        v = V[:, :, i]
        # The random signs make the naive vector mean useless, so the test bites.
        assert np.linalg.norm(v.mean(axis=0)) < 0.2
        m = ori.mean_axis(v)
        assert m.shape == (3,)
        np.testing.assert_allclose(np.linalg.norm(m), 1.0, atol=1e-12)
        assert m[2] <= 0.0
        # Estimation error ~ 0.05 rad / sqrt(1000) ~ 0.1 deg.
        assert _angle(m, R0[:, i]) < 0.5


def test_mean_axis_lower_hemisphere_and_horizontal_tie_rule():
    np.testing.assert_allclose(ori.mean_axis([[0, 1, 0], [0, -1, 0]]), [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(ori.mean_axis([[-1, 0, 0]]), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(ori.mean_axis([[0, 0, 2]]), [0, 0, -1], atol=1e-12)
    up = np.array([0.3, -0.2, 0.9])
    np.testing.assert_allclose(ori.mean_axis([up, up]), -up / np.linalg.norm(up), atol=1e-12)


def test_orientation_tensor_eigenvalues():
    e = ori.orientation_tensor_eigen([[0, 0, 1], [0, 0, -3]])
    np.testing.assert_allclose(e, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(ori.orientation_tensor_eigen(np.eye(3)), [1 / 3] * 3, atol=1e-12)
    # Girdle: axes spread evenly in the horizontal plane.
    phi = np.linspace(0, np.pi, 360, endpoint=False)
    girdle = np.stack([np.cos(phi), np.sin(phi), 0 * phi], -1)
    np.testing.assert_allclose(ori.orientation_tensor_eigen(girdle), [0.5, 0.5, 0], atol=1e-12)


# --------------------------------------------------------------------------- #
# credible cones                                                              #
# --------------------------------------------------------------------------- #
def test_cone_of_draws_at_a_fixed_angle_is_that_angle():
    rng = np.random.default_rng(1)
    theta = np.radians(12.0)
    m, e1, e2 = R0[:, 2], R0[:, 0], R0[:, 1]
    # Evenly spaced azimuths make the orientation tensor exactly symmetric about m.
    phi = np.linspace(0, 2 * np.pi, 400, endpoint=False)[:, None]
    v = np.cos(theta) * m + np.sin(theta) * (np.cos(phi) * e1 + np.sin(phi) * e2)
    v = v * rng.choice([-1.0, 1.0], size=(400, 1))
    assert ori.cone_half_angle(v, m) == pytest.approx(12.0, abs=1e-6)
    assert ori.cone_half_angle(v, -m, level=0.5) == pytest.approx(12.0, abs=1e-6)
    assert _angle(ori.mean_axis(v), m) < 1e-6
    assert ori.cone_half_angle(v, ori.mean_axis(v)) == pytest.approx(12.0, abs=1e-5)


@pytest.mark.parametrize("level", [0.5, 0.95])
def test_cone_matches_rayleigh_quantile(level):
    # v = normalise(m + sigma (z1 e1 + z2 e2)): angle = arctan(sigma R), R ~ Rayleigh(1),
    # whose quantile is sqrt(-2 log(1 - level)).
    rng = np.random.default_rng(2)
    sigma, n = 0.1, 20000
    m, e1, e2 = R0[:, 0], R0[:, 1], R0[:, 2]
    z = rng.standard_normal((n, 2))
    v = m + sigma * (z[:, :1] * e1 + z[:, 1:] * e2)
    v = v * rng.choice([-1.0, 1.0], size=(n, 1))
    expected = np.degrees(np.arctan(sigma * np.sqrt(-2 * np.log(1 - level))))
    # Sampling sd of the quantile is ~1.3% at 0.95 and ~0.5% at 0.5 for n = 20000.
    got = ori.cone_half_angle(v, ori.mean_axis(v), level)
    assert got == pytest.approx(expected, rel=0.04)


# --------------------------------------------------------------------------- #
# trend and plunge                                                            #
# --------------------------------------------------------------------------- #
S2 = np.sqrt(2.0)
KNOWN = [  # vector, trend, plunge; x = East, y = North, z = Up
    ((0, 0, -1), 0, 90),
    ((0, 0, 1), 0, 90),
    ((0, 1, 0), 0, 0),
    ((0, -1, 0), 0, 0),
    ((1 / S2, 0, -1 / S2), 90, 45),
    ((-1 / S2, 0, 1 / S2), 90, 45),
    ((0, -1, -1), 180, 45),
    ((-1, -1, -S2), 225, 45),
    ((-1, 0, 0), 90, 0),
    ((1, 1, 0), 45, 0),
    ((-1, 1, 0), 135, 0),
    ((-3, 0, -np.sqrt(3)), 270, 30),
]


@pytest.mark.parametrize(("v", "trend", "plunge"), KNOWN)
def test_trend_plunge_known_vectors(v, trend, plunge):
    for sign in (1.0, -1.0):
        t, p = ori.trend_plunge(sign * np.asarray(v, dtype=float))
        assert float(t) == pytest.approx(trend, abs=1e-9)
        assert float(p) == pytest.approx(plunge, abs=1e-9)


def test_trend_plunge_vectorised_and_inverts():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((4, 50, 3))
    t, p = ori.trend_plunge(v)
    assert t.shape == p.shape == (4, 50)
    assert np.all((t >= 0) & (t < 360)) and np.all((p >= 0) & (p <= 90))
    tr, pr = np.radians(t), np.radians(p)
    d = np.stack([np.cos(pr) * np.sin(tr), np.cos(pr) * np.cos(tr), -np.sin(pr)], -1)
    assert float(np.max(_axial(d, v))) < 1e-5


# --------------------------------------------------------------------------- #
# label switching                                                             #
# --------------------------------------------------------------------------- #
def test_align_axes_undoes_label_switching():
    rng = np.random.default_rng(4)
    n = 600
    V = _draws_around(R0, 0.03, n, rng)  # columns: physical directions A, B, C
    l_phys = np.column_stack([0.3 * np.exp(0.05 * rng.standard_normal((n, 2))), np.full(n, 0.1)])
    # What sorting does to a near-equal pair: whenever l_B > l_A the labels
    # "axis 1" and "axis 2" exchange directions.
    order = np.argsort(-l_phys, axis=1)
    swap = order[:, 0] == 1
    l = np.take_along_axis(l_phys, order, axis=1)
    V = np.take_along_axis(V, order[:, None, :], axis=2)
    assert 0.3 < swap.mean() < 0.7

    # Sorted labels: axis 1 is a girdle, its cone is meaningless...
    assert ori.orientation_tensor_eigen(V[:, :, 0])[1] > 0.3
    assert ori.cone_half_angle(V[:, :, 0], ori.mean_axis(V[:, :, 0])) > 45
    aligned, perm = ori.align_axes(V, R0)
    expected_perm = np.where(swap[:, None], [1, 0, 2], [0, 1, 2])
    np.testing.assert_array_equal(perm, expected_perm)
    np.testing.assert_allclose(np.take_along_axis(l, perm, axis=1), l_phys)
    assert np.all(np.einsum("ki,ski->si", R0, aligned) >= 0)
    for i in range(3):
        m = ori.mean_axis(aligned[:, :, i])
        assert _angle(m, R0[:, i]) < 0.5
        assert ori.cone_half_angle(aligned[:, :, i], m) < 10
    # ...while the well-separated axis is the same with or without alignment.
    c_sorted = ori.cone_half_angle(V[:, :, 2], ori.mean_axis(V[:, :, 2]))
    c_aligned = ori.cone_half_angle(aligned[:, :, 2], ori.mean_axis(aligned[:, :, 2]))
    assert c_sorted == pytest.approx(c_aligned, abs=1e-9)


# --------------------------------------------------------------------------- #
# identifiability notes                                                       #
# --------------------------------------------------------------------------- #
def test_no_notes_for_well_separated_length_scales():
    rng = np.random.default_rng(5)
    l = _sorted_lognormal([0.5, 0.2, 0.08], 0.05, 4000, rng)
    assert ori.identifiability_notes(l) == []
    assert ori.axis_notes(l) == ["", "", ""]
    # Diffuse but clearly ordered (log-ratio mean ~3.9 sd): still no note.
    l = _sorted_lognormal([1.0, 0.33, 0.1], 0.2, 4000, rng)
    assert ori.identifiability_notes(l) == []


def test_note_for_a_near_equal_pair():
    rng = np.random.default_rng(6)
    l = _sorted_lognormal([0.30, 0.28, 0.10], 0.1, 4000, rng)  # regime (c)
    notes = ori.identifiability_notes(l)
    assert len(notes) == 1
    assert notes[0].startswith("axes 1 and 2 are not distinguishable: length-scale ratio")
    assert "90% interval [1.0" in notes[0]
    assert "rotation about axis 3 is unidentified" in notes[0]
    assert "only the plane they span" in notes[0]
    per_axis = ori.axis_notes(l)
    assert "axis 2" in per_axis[0] and "axis 1" in per_axis[1] and per_axis[2] == ""
    assert "80% interval" in ori.identifiability_notes(l, interval=0.8)[0]

    l = _sorted_lognormal([0.30, 0.10, 0.095], 0.1, 4000, rng)
    (note,) = ori.identifiability_notes(l)
    assert note.startswith("axes 2 and 3 are not distinguishable")
    assert "rotation about axis 1 is unidentified" in note
    assert ori.axis_notes(l)[0] == ""


def test_note_for_a_diffuse_pair_folded_by_sorting():
    # Equal truth, very uncertain: sorting pushes the ratio's lower end above
    # 1.05, so only the folded-interval rule can catch it.
    rng = np.random.default_rng(7)
    l = _sorted_lognormal([1.0, 1.0, 0.01], [1.0, 1.0, 0.05], 4000, rng)
    lo = np.quantile(l[:, 0] / l[:, 1], 0.05)
    assert lo > 1.05
    (note,) = ori.identifiability_notes(l)
    assert note.startswith("axes 1 and 2 are not distinguishable")


def test_isotropic_and_pairwise_overlap():
    rng = np.random.default_rng(8)
    l = _sorted_lognormal([0.3, 0.3, 0.3], 0.1, 4000, rng)
    (note,) = ori.identifiability_notes(l)
    assert note.startswith("the field is close to isotropic: no direction is identified")
    assert all("close to isotropic" in s for s in ori.axis_notes(l))

    l = _sorted_lognormal([0.30, 0.27, 0.24], 0.05, 4000, rng)
    (note,) = ori.identifiability_notes(l)
    assert note.startswith("axes 1, 2 and 3 are not distinguishable pairwise")
    assert all("direction not identified" in s for s in ori.axis_notes(l))


def test_note_for_length_scale_beyond_the_domain():
    rng = np.random.default_rng(9)
    l = _sorted_lognormal([5.0, 0.2, 0.08], 0.3, 2000, rng)
    (note,) = ori.identifiability_notes(l, extent=1.0)
    assert note.startswith("axis 1 is longer than the sampled domain: only a lower bound")
    per_axis = ori.axis_notes(l, extent=1.0)
    assert "longer than the sampled domain" in per_axis[0] and per_axis[1:] == ["", ""]
    assert ori.identifiability_notes(l, extent=20.0) == []
    assert ori.identifiability_notes(l, extent=[20.0, 0.1, 1.0])[0].startswith("axis 2 is longer")


# --------------------------------------------------------------------------- #
# the table                                                                   #
# --------------------------------------------------------------------------- #
COLUMNS = [
    "l_median",
    "l_lo",
    "l_hi",
    "dir_x",
    "dir_y",
    "dir_z",
    "trend_deg",
    "plunge_deg",
    "cone95_deg",
    "note",
]


def test_orientation_table_well_separated():
    rng = np.random.default_rng(10)
    n = 2000
    l = _sorted_lognormal([0.5, 0.2, 0.08], 0.05, n, rng)
    V = _draws_around(R0, 0.05, n, rng)
    df = ori.orientation_table(l, V)
    assert list(df.columns) == COLUMNS
    assert list(df.index) == ["axis 1 (longest)", "axis 2 (intermediate)", "axis 3 (shortest)"]
    np.testing.assert_allclose(df["l_median"], [0.5, 0.2, 0.08], rtol=0.01)
    assert np.all(df["l_lo"] < df["l_median"]) and np.all(df["l_median"] < df["l_hi"])
    dirs = df[["dir_x", "dir_y", "dir_z"]].to_numpy()
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-12)
    assert np.all(dirs[:, 2] <= 0)
    assert np.max(_axial(dirs, R0.T)) < 0.5
    t, p = ori.trend_plunge(dirs)
    np.testing.assert_allclose(df["trend_deg"], t)
    np.testing.assert_allclose(df["plunge_deg"], p)
    # A tangent error of 0.05 rad in two directions: 95% cone ~ arctan(0.05 * 2.45) ~ 7 deg.
    assert np.all((df["cone95_deg"] > 5) & (df["cone95_deg"] < 9))
    assert list(df["note"]) == ["", "", ""] and df.attrs["notes"] == []
    assert "cone90_deg" in ori.orientation_table(l, V, cone_level=0.9).columns


def test_orientation_table_flags_near_equal_pair_and_long_axis():
    rng = np.random.default_rng(11)
    n = 2000
    l = _sorted_lognormal([0.30, 0.28, 0.10], 0.1, n, rng)
    V = _draws_around(R0, 0.05, n, rng)
    df = ori.orientation_table(l, V, interval=0.9)
    assert df["note"].iloc[0] and df["note"].iloc[1] and df["note"].iloc[2] == ""
    assert len(df.attrs["notes"]) == 1
    # A box extent projects onto axis d as sum |d_i| L_i <= sqrt(3) * 0.1 < 0.28.
    df = ori.orientation_table(l, V, extent=[0.1, 0.1, 0.1])
    assert "longer than the sampled domain" in df["note"].iloc[0]
    with pytest.raises(ValueError, match="draws"):
        ori.orientation_table(l[:10], V)


def test_fixed_axes_notes_speak_of_coordinate_axes():
    """ARD: a near-equal pair swaps labels between two coordinate axes. The notes say
    which coordinate axis is unresolved, never that a direction or plane is unknown,
    and the label switching's wide cones add no cone note."""
    rng = np.random.default_rng(13)
    n = 2000
    l = _sorted_lognormal([0.30, 0.28, 0.10], 0.1, n, rng)
    eye, swap = np.eye(3), np.eye(3)[:, [1, 0, 2]]
    V = np.where(rng.random(n)[:, None, None] < 0.5, eye, swap)  # x/y labels switch
    rotated = ori.orientation_table(l, V)
    assert "only the plane of axes 1 and 2" in rotated["note"].iloc[0]
    df = ori.orientation_table(l, V, fixed_axes=True)
    (note,) = df.attrs["notes"]
    assert note.startswith("axes 1 and 2 are not distinguishable: length-scale ratio l1/l2")
    assert note.endswith("so only which of the two carries the longer length-scale is unresolved")
    assert df["note"].iloc[0].endswith("which coordinate axis it is, is not identified")
    assert df["note"].iloc[2] == "" and df["cone95_deg"].iloc[0] > 80
    assert "plane" not in " ".join(df["note"])
    iso = _sorted_lognormal([0.3, 0.3, 0.3], 0.1, n, rng)
    (note,) = ori.identifiability_notes(iso, fixed_axes=True)
    assert "coordinate axes' length-scales are compatible" in note


def test_orientation_table_notes_wide_cones_with_resolved_ratios():
    """Axes 1 and 2 spin about a tight axis 3 by up to +-50 deg while their ratio
    (2.5) is clearly resolved: only the cones can show the weak rotation."""
    rng = np.random.default_rng(12)
    n = 2000
    l = _sorted_lognormal([0.5, 0.2, 0.08], 0.05, n, rng)
    spin = rng.uniform(-np.radians(50), np.radians(50), n)
    about3 = np.asarray(_exp(spin[:, None] * R0[:, 2]))  # rotations about axis 3
    V = about3 @ _draws_around(R0, 0.01, n, rng, flip_signs=False)
    assert ori.identifiability_notes(l) == []
    df = ori.orientation_table(l, V)
    cones = df["cone95_deg"].to_numpy()
    assert cones[0] > 40 and cones[1] > 40 and cones[2] < 5
    assert all(df["note"].iloc[k].startswith("weakly identified: 95% cone") for k in (0, 1))
    assert "only the plane of axes 1 and 2" in df["note"].iloc[0]
    assert df["note"].iloc[2] == ""
    (note,) = df.attrs["notes"]
    assert note.startswith("axes 1 and 2 are weakly identified")
    assert "rotation about axis 3 only weakly (l1/l2 90% interval [2." in note
    # A looser limit silences it; a wide lone axis gets its own note.
    assert ori.orientation_table(l, V, cone_limit_deg=60).attrs["notes"] == []
    per_axis, sentences = ori.cone_notes([40.0, 10.0, 10.0], l, 0.9, 0.95)
    assert per_axis == ["weakly identified: 95% cone 40 deg", "", ""]
    assert sentences == ["axis 1 is weakly identified: its 95% credible cone (40 deg) "
                         "exceeds 30 deg"]
    # Axes that already carry a length-scale note are not noted twice.
    assert ori.cone_notes([40.0, 40.0, 5.0], l, 0.9, 0.95, skip=[True, True, False]) == (
        ["", "", ""], [])


# --------------------------------------------------------------------------- #
# errors against the truth                                                    #
# --------------------------------------------------------------------------- #
L_TRUE = np.array([0.5, 0.2, 0.08])
M_TRUE = np.asarray(_metric(L_TRUE, A0))


def test_metric_errors_zero_at_truth():
    out = ori.metric_errors(np.tile(M_TRUE, (5, 1, 1)), M_TRUE)
    assert set(out) == {"relative_frobenius", "affine_invariant", "log_euclidean"}
    for value in out.values():
        assert isinstance(value, float) and abs(value) < 1e-10
    np.testing.assert_allclose(
        ori.log_euclidean_mean(np.tile(M_TRUE, (5, 1, 1))), M_TRUE, rtol=1e-10
    )
    # Scale draws c and 1/c: their log-Euclidean (geometric) mean is the truth.
    draws = np.stack([1.2 * M_TRUE, M_TRUE / 1.2])
    assert ori.metric_errors(draws, M_TRUE)["affine_invariant"] < 1e-10
    assert ori.metric_errors(draws, M_TRUE, estimator="median")["relative_frobenius"] > 0.01


def test_metric_errors_match_so3_and_closed_forms():
    M2 = np.asarray(_metric(np.array([0.45, 0.22, 0.07]), A0 + 0.1))
    out = ori.metric_errors(np.tile(M2, (3, 1, 1)), M_TRUE)
    assert out["relative_frobenius"] == pytest.approx(float(so3.relative_frobenius(M_TRUE, M2)))
    assert out["affine_invariant"] == pytest.approx(float(so3.affine_invariant(M_TRUE, M2)))
    assert out["log_euclidean"] == pytest.approx(float(so3.log_euclidean(M_TRUE, M2)))
    # Uniform scaling by c: relative Frobenius |c - 1|, the two log distances sqrt(3)|log c|.
    out = ori.metric_errors(np.tile(1.3 * M_TRUE, (2, 1, 1)), M_TRUE)
    assert out["relative_frobenius"] == pytest.approx(0.3, rel=1e-10)
    assert out["affine_invariant"] == pytest.approx(np.sqrt(3) * np.log(1.3), rel=1e-10)
    assert out["log_euclidean"] == pytest.approx(np.sqrt(3) * np.log(1.3), rel=1e-10)


def test_log_euclidean_mean_against_scipy():
    draws = np.stack([M_TRUE, np.asarray(_metric(np.array([0.1, 0.3, 0.6]), -A0))])
    expected = scipy.linalg.expm(np.mean([scipy.linalg.logm(m).real for m in draws], axis=0))
    np.testing.assert_allclose(ori.log_euclidean_mean(draws), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="estimator"):
        ori.metric_errors(draws, M_TRUE, estimator="mean")


def test_axis_errors_for_a_rotation_about_axis_one():
    # Turning the true frame by theta about its own axis 1 leaves axis 1 fixed
    # and moves axes 2 and 3 by exactly theta.
    rng = np.random.default_rng(12)
    theta = np.radians(7.0)
    V = np.tile(R0 @ np.asarray(_exp(np.array([theta, 0.0, 0.0]))), (50, 1, 1))
    V = V * rng.choice([-1.0, 1.0], size=(50, 1, 3))
    np.testing.assert_allclose(ori.axis_errors(V, R0), [0.0, 7.0, 7.0], atol=1e-5)


# --------------------------------------------------------------------------- #
# metrics -> axes, and input checks                                           #
# --------------------------------------------------------------------------- #
def test_axes_from_metrics_matches_generating_frame():
    rng = np.random.default_rng(13)
    a = 0.8 * rng.standard_normal((12, 3))
    perms = np.array([rng.permutation(3) for _ in range(12)])
    l_unsorted = L_TRUE[perms]
    M = np.asarray(_metric(l_unsorted, a)).reshape(3, 4, 3, 3)  # leading dims flatten
    l, V = ori.axes_from_metrics(M)
    assert l.shape == (12, 3) and V.shape == (12, 3, 3)
    np.testing.assert_allclose(l, np.tile(L_TRUE, (12, 1)), rtol=1e-10)
    R = np.asarray(_exp(a))
    for s in range(12):
        order = np.argsort(-l_unsorted[s])
        assert np.max(_axial(V[s].T, R[s][:, order].T)) < 1e-5
    np.testing.assert_allclose(np.linalg.det(V), 1.0, atol=1e-12)
    rebuilt = (V * l[:, None, :] ** -2) @ np.swapaxes(V, 1, 2)
    np.testing.assert_allclose(rebuilt, M.reshape(12, 3, 3), rtol=1e-9)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ori.axes_from_metrics(-np.eye(3)[None]), "positive definite"),
        (lambda: ori.axes_from_metrics(np.triu(np.ones((3, 3)))[None] + np.eye(3)), "symmetric"),
        (lambda: ori.axes_from_metrics(np.ones((4, 3))), "shape"),
        (lambda: ori.cone_half_angle(np.eye(3), [0, 0, 1], level=1.0), "level"),
        (lambda: ori.mean_axis([[0, 0, 0], [1, 0, 0]]), "zero vectors"),
        (lambda: ori.mean_axis([[np.nan, 0, 1]]), "NaN"),
        (lambda: ori.identifiability_notes([[0.1, 0.2, 0.3]]), "sorted descending"),
        (lambda: ori.identifiability_notes([[0.3, 0.2, 0.1]], extent=-1), "extent"),
        (lambda: ori.align_axes(np.tile(np.eye(3), (2, 1, 1)), np.eye(2)), "reference_axes"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
