"""Tests for aniso_gp.so3 against independent oracles (scipy Rotation, scipy.linalg)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sla
from conftest import property_settings
from hypothesis import HealthCheck, assume, given
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

from aniso_gp import so3

PROPS = property_settings(40, HealthCheck.filter_too_much)

# jit once: hypothesis calls these many times, and eager dispatch would dominate.
exp_j = jax.jit(so3.exp)
log_j = jax.jit(so3.log)
metric_j = jax.jit(so3.metric)
canon_j = jax.jit(so3.canonicalize)
paxes_j = jax.jit(so3.principal_axes)
angle_j = jax.jit(so3.angle)
jacfwd_exp = jax.jit(jax.jacfwd(so3.exp))
jacrev_exp = jax.jit(jax.jacrev(so3.exp))
jacrev_log_exp = jax.jit(jax.jacrev(lambda v: so3.log(so3.exp(v))))


def _unit(rng, n):
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _scipy_R(a):
    return Rotation.from_rotvec(np.asarray(a, dtype=float)).as_matrix()


# --------------------------------------------------------------------------- #
# strategies
# --------------------------------------------------------------------------- #
finite = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False)
axis_angles = st.tuples(finite, finite, finite).map(np.array)
log_ls = st.floats(np.log(0.1), np.log(10.0))
lengthscales = st.tuples(log_ls, log_ls, log_ls).map(lambda t: np.exp(np.array(t)))


@st.composite
def separated_lengthscales(draw):
    """Three length-scales with neighbouring ratios > 1.05, in random order."""
    base = draw(st.floats(0.1, 2.0))
    r1 = draw(st.floats(1.06, 3.0))
    r2 = draw(st.floats(1.06, 3.0))
    l = np.array([base, base * r1, base * r1 * r2])
    perm = draw(st.permutations([0, 1, 2]))
    return l[list(perm)]


def _labellings(l, a):
    """All 24 labellings (|P l|, log(R P^T)) of one metric, built with scipy."""
    R = _scipy_R(a)
    G = np.asarray(so3.symmetry_group())
    ls = np.abs(np.einsum("pij,j->pi", G, l))
    Rs = np.einsum("ij,pkj->pik", R, G)  # R P^T
    return ls, Rotation.from_matrix(Rs).as_rotvec(), Rs


def _sign_pattern_margin(l, a):
    """Gap between the two smallest rotation angles among the 4 sign patterns of the
    descending labelling; canonical form is ambiguous when it is 0."""
    ls, avs, _ = _labellings(l, a)
    sorted_desc = np.all(np.diff(ls, axis=1) < 0, axis=1)
    angles = np.sort(np.linalg.norm(avs[sorted_desc], axis=1))
    assert angles.shape == (4,)
    return angles[1] - angles[0], angles[0]


# --------------------------------------------------------------------------- #
# hat / vee
# --------------------------------------------------------------------------- #
def test_hat_is_cross_product_and_vee_inverts_it():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3))
    v = rng.standard_normal((5, 3))
    K = np.asarray(so3.hat(a))
    assert K.shape == (5, 3, 3)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", K, v), np.cross(a, v), atol=1e-14)
    np.testing.assert_array_equal(K, -np.swapaxes(K, 1, 2))
    np.testing.assert_array_equal(np.asarray(so3.vee(K)), a)
    # single vector
    np.testing.assert_array_equal(
        np.asarray(so3.hat(np.array([1.0, 2.0, 3.0]))),
        [[0.0, -3.0, 2.0], [3.0, 0.0, -1.0], [-2.0, 1.0, 0.0]],
    )


# --------------------------------------------------------------------------- #
# exp
# --------------------------------------------------------------------------- #
MAGNITUDES = [
    0.0,
    1e-14,
    3e-9,
    1e-6,
    0.999e-3,
    1.001e-3,
    0.3,
    1.0,
    2.5,
    np.pi - 1e-6,
    np.pi - 1e-9,
    np.pi,
    np.pi + 1e-9,
    np.pi + 1e-6,
    5.0,
    4 * np.pi + 0.3,
]


@pytest.mark.parametrize("t", MAGNITUDES)
def test_exp_matches_scipy(t):
    rng = np.random.default_rng(int(1e6 * t) % 2**32)
    a = _unit(rng, 20) * t
    ref = _scipy_R(a)
    np.testing.assert_allclose(np.asarray(exp_j(a)), ref, rtol=0, atol=1e-12)
    # unbatched call as well
    np.testing.assert_allclose(np.asarray(exp_j(a[0])), ref[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("t", [1e-4, 5e-4, 0.999e-3, 1.001e-3, 2e-3])
def test_exp_is_accurate_to_a_few_ulp_across_the_taylor_switch(t):
    # a wrong Taylor coefficient of (1 - cos t)/t^2 costs ~t^4/24 ~ 4e-14 at t = 1e-3
    rng = np.random.default_rng(2)
    a = _unit(rng, 20) * t
    np.testing.assert_allclose(np.asarray(exp_j(a)), _scipy_R(a), rtol=0, atol=1e-15)


def test_exp_random_vectors_match_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(scale=2.0, size=(500, 3))
    np.testing.assert_allclose(np.asarray(exp_j(a)), _scipy_R(a), rtol=0, atol=1e-12)
    # two leading batch axes
    R2 = exp_j(a.reshape(25, 20, 3))
    assert R2.shape == (25, 20, 3, 3)
    np.testing.assert_allclose(np.asarray(R2).reshape(500, 3, 3), _scipy_R(a), atol=1e-12)


@given(axis_angles)
@PROPS
def test_exp_is_a_rotation(a):
    R = np.asarray(exp_j(a))
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-13)
    assert abs(np.linalg.det(R) - 1.0) < 1e-13
    # the rotation axis is fixed
    np.testing.assert_allclose(R @ a, a, atol=1e-12 * (1 + np.linalg.norm(a)))


# --------------------------------------------------------------------------- #
# exp gradients, including a = 0 exactly and near pi
# --------------------------------------------------------------------------- #
def _fd_jacobian_scipy(a, h=1e-6):
    cols = []
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        cols.append((_scipy_R(a + e) - _scipy_R(a - e)) / (2 * h))
    return np.stack(cols, -1)  # (3, 3, 3): dR_ij / da_k


@pytest.mark.parametrize(
    "a",
    [
        np.zeros(3),
        np.array([2e-4, -1e-4, 3e-4]),
        np.array([0.3, -0.7, 1.1]),
        (np.pi - 1e-6) * np.array([0.6, 0.0, 0.8]),
        (np.pi + 1e-6) * np.array([0.0, -1.0, 0.0]),
    ],
    ids=["zero", "small", "generic", "below_pi", "above_pi"],
)
def test_exp_jacobian_matches_scipy_finite_differences(a):
    ref = _fd_jacobian_scipy(a)
    for jac in (jacfwd_exp, jacrev_exp):
        J = np.asarray(jac(jnp.asarray(a)))
        assert np.all(np.isfinite(J))
        np.testing.assert_allclose(J, ref, rtol=0, atol=1e-8)


def test_exp_gradient_at_zero_is_the_generator():
    # dR/da_k at 0 is hat(e_k) exactly; grad of R[1, 0] is e_3.
    J = np.asarray(jacrev_exp(jnp.zeros(3)))
    for k in range(3):
        np.testing.assert_array_equal(J[..., k], np.asarray(so3.hat(np.eye(3)[k])))
    # trace R = 1 + 2 cos|a| ~ 3 - |a|^2, so its Hessian at 0 is -2 I (Taylor branch)
    H = jax.jit(jax.hessian(lambda a: jnp.trace(so3.exp(a))))(jnp.zeros(3))
    np.testing.assert_allclose(np.asarray(H), -2 * np.eye(3), atol=1e-14)


@pytest.mark.parametrize(
    "a",
    [np.zeros(3), (np.pi - 1e-6) * np.array([1.0, 2.0, 2.0]) / 3.0, np.array([0.4, 0.1, -0.2])],
    ids=["zero", "near_pi", "generic"],
)
def test_exp_check_grads(a):
    check_grads(exp_j, (jnp.asarray(a),), order=1, modes=["fwd", "rev"])
    # a step that crosses the Taylor / closed-form switch at 1e-3 must agree too
    check_grads(exp_j, (jnp.asarray(a),), order=1, modes=["fwd", "rev"], eps=2e-3)


# --------------------------------------------------------------------------- #
# log, angle
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "t",
    [
        0.0,
        1e-12,
        5e-9,
        1e-5,
        0.999e-3,
        1.001e-3,
        0.5,
        2.0,
        3.0,
        np.pi - 1.01e-2,
        np.pi - 0.99e-2,
        np.pi - 1e-6,
        np.pi - 1e-9,
    ],
)
def test_log_inverts_exp_below_pi(t):
    rng = np.random.default_rng(7)
    a = _unit(rng, 30) * t
    # relative accuracy: a wrong Taylor coefficient near 0 shows at ~1e-10 * |a|
    tol = 1e-13 * t
    np.testing.assert_allclose(np.asarray(log_j(exp_j(a))), a, rtol=0, atol=tol)
    # and on scipy's matrix of the same rotation vector
    np.testing.assert_allclose(np.asarray(log_j(_scipy_R(a))), a, rtol=0, atol=tol)


@pytest.mark.parametrize("t", [np.pi + 1e-9, np.pi + 1e-6, 4.0, 2 * np.pi - 0.1])
def test_log_wraps_beyond_pi(t):
    rng = np.random.default_rng(8)
    a = _unit(rng, 30) * t
    wrapped = a * (1.0 - 2.0 * np.pi / t)
    out = np.asarray(log_j(exp_j(a)))
    np.testing.assert_allclose(out, wrapped, rtol=0, atol=1e-9)
    assert np.all(np.linalg.norm(out, axis=1) <= np.pi + 1e-12)


def test_log_exactly_pi_is_one_of_the_two_equivalent_vectors():
    rng = np.random.default_rng(9)
    a = _unit(rng, 30) * np.pi
    out = np.asarray(log_j(exp_j(a)))
    err = np.minimum(np.abs(out - a).max(1), np.abs(out + a).max(1))
    assert err.max() < 1e-9
    np.testing.assert_allclose(np.asarray(exp_j(out)), _scipy_R(a), atol=1e-12)
    # axis-aligned half turns (diagonal R with two -1 entries)
    half = -np.stack([np.eye(3)] * 30)
    half[np.arange(30), np.arange(30) % 3, np.arange(30) % 3] = 1.0
    out = np.asarray(log_j(half))
    for k in range(3):
        assert abs(abs(out[k, k]) - np.pi) < 1e-12 and np.abs(np.delete(out[k], k)).max() == 0


def test_exp_log_round_trip_on_scipy_random_rotations():
    R = Rotation.random(1000, random_state=3).as_matrix()
    a = np.asarray(log_j(R))
    np.testing.assert_allclose(np.asarray(exp_j(a)), R, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, Rotation.from_matrix(R).as_rotvec(), rtol=0, atol=1e-10)
    assert np.all(np.linalg.norm(a, axis=1) <= np.pi)


@pytest.mark.parametrize(
    "a",
    [
        np.zeros(3),
        np.array([1e-5, 2e-5, -1e-5]),
        np.array([0.3, 0.2, -0.5]),
        np.array([0.0, 0.0, np.pi - 1e-3]),
        np.array([0.5, 0.5, np.pi / 2**0.5 - 1e-3]),
    ],
    ids=["identity", "small", "generic", "near_pi_z", "near_pi_oblique"],
)
def test_log_gradient(a):
    # d log(exp(a)) / da = I for |a| < pi, including the identity
    # (reverse mode is the one that used to produce NaN at the identity)
    J = np.asarray(jacrev_log_exp(jnp.asarray(a)))
    np.testing.assert_allclose(J, np.eye(3), rtol=0, atol=1e-7)


def test_angle():
    rng = np.random.default_rng(10)
    t = np.array([0.0, 1e-10, 1e-4, 0.5, 2.0, np.pi - 1e-8, np.pi, 4.0, 6.0])
    a = _unit(rng, len(t)) * t[:, None]
    expected = np.where(t <= np.pi, t, 2 * np.pi - t)
    np.testing.assert_allclose(np.asarray(angle_j(exp_j(a))), expected, rtol=1e-12, atol=1e-15)
    R = Rotation.random(200, random_state=4)
    np.testing.assert_allclose(
        np.asarray(angle_j(R.as_matrix())), R.magnitude(), rtol=0, atol=1e-12
    )
    g = jax.jit(jax.grad(lambda v: so3.angle(so3.exp(v))))(jnp.array([0.1, 0.2, 0.3]))
    np.testing.assert_allclose(np.asarray(g), np.array([1, 2, 3]) / np.sqrt(14), atol=1e-12)


def test_from_quaternion_matches_scipy():
    rng = np.random.default_rng(18)
    q = rng.standard_normal((50, 4)) * rng.uniform(0.1, 5.0, size=(50, 1))  # (w, x, y, z)
    ref = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy is scalar-last
    fq = jax.jit(so3.from_quaternion)
    np.testing.assert_allclose(np.asarray(fq(q)), ref, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(fq(-q)), ref, rtol=0, atol=1e-13)  # q ~ -q
    # (cos t/2, sin t/2 n) is exp(t n)
    a = np.array([0.3, -1.2, 0.5])
    t = np.linalg.norm(a)
    q1 = np.r_[np.cos(t / 2), np.sin(t / 2) * a / t]
    np.testing.assert_allclose(np.asarray(so3.from_quaternion(q1)), _scipy_R(a), atol=1e-14)


# --------------------------------------------------------------------------- #
# metric, principal axes
# --------------------------------------------------------------------------- #
def test_metric_matches_definition():
    rng = np.random.default_rng(11)
    l = rng.uniform(0.1, 3.0, size=(6, 3))
    a = rng.normal(scale=2.0, size=(6, 3))
    R = _scipy_R(a)
    ref = np.einsum("nij,nj,nkj->nik", R, l**-2.0, R)
    np.testing.assert_allclose(np.asarray(metric_j(l, a)), ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.asarray(metric_j(l[0], a[0])), ref[0], rtol=1e-12)
    # M (R e_i) = l_i^-2 (R e_i): column i of R is the direction of length-scale l_i
    M = np.asarray(metric_j(l[0], a[0]))
    for i in range(3):
        np.testing.assert_allclose(M @ R[0][:, i], R[0][:, i] / l[0, i] ** 2, rtol=1e-12)


@given(lengthscales, axis_angles)
@PROPS
def test_metric_is_symmetric_positive_definite(l, a):
    M = np.asarray(metric_j(l, a))
    np.testing.assert_allclose(M, M.T, rtol=0, atol=4e-16 * np.abs(M).max())
    lam = np.linalg.eigvalsh(M)
    assert lam.min() > 0
    np.testing.assert_allclose(np.sort(lam), np.sort(l**-2.0), rtol=1e-9)


@given(separated_lengthscales(), axis_angles)
@PROPS
def test_principal_axes_inverts_metric(l, a):
    M = np.asarray(metric_j(l, a))
    lp, V = (np.asarray(v) for v in paxes_j(M))
    order = np.argsort(-l)
    np.testing.assert_allclose(lp, l[order], rtol=1e-9)
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(V) - 1.0) < 1e-12
    np.testing.assert_allclose((V * lp**-2.0) @ V.T, M, rtol=0, atol=1e-9 * np.abs(M).max())
    # the directions are R's columns in the same order, up to sign
    R = _scipy_R(a)[:, order]
    ang = np.asarray(so3.axial_angle(V.T, R.T))
    assert ang.max() < 1e-5


def test_principal_axes_batched():
    rng = np.random.default_rng(12)
    l = rng.uniform(0.2, 2.0, size=(2, 4, 3))
    a = rng.normal(size=(2, 4, 3))
    lp, V = paxes_j(metric_j(l, a))
    assert lp.shape == (2, 4, 3) and V.shape == (2, 4, 3, 3)
    np.testing.assert_allclose(np.asarray(lp), -np.sort(-l, axis=-1), rtol=1e-9)
    np.testing.assert_allclose(np.linalg.det(np.asarray(V)), 1.0, atol=1e-12)


# --------------------------------------------------------------------------- #
# symmetry group, canonical form
# --------------------------------------------------------------------------- #
def test_symmetry_group_is_the_rotation_group_of_the_cube():
    G = np.asarray(so3.symmetry_group())
    assert G.shape == (24, 3, 3)
    assert len({tuple(P.ravel()) for P in G}) == 24
    np.testing.assert_allclose(np.linalg.det(G), 1.0)
    for P in G:
        assert set(np.unique(P)) <= {-1.0, 0.0, 1.0}
        np.testing.assert_array_equal(np.abs(P).sum(0), 1)
        np.testing.assert_array_equal(np.abs(P).sum(1), 1)
    keys = {tuple(P.ravel()) for P in G}
    assert tuple(np.eye(3).ravel()) in keys
    for P in G:  # closed under products
        for Q in G[::5]:
            assert tuple((P @ Q).ravel()) in keys


@given(lengthscales, axis_angles)
@PROPS
def test_symmetries_leave_the_metric_unchanged(l, a):
    ls, avs, Rs = _labellings(l, a)
    M = np.asarray(metric_j(l, a))
    M24 = np.asarray(metric_j(ls, avs))
    np.testing.assert_allclose(
        M24, np.broadcast_to(M, M24.shape), rtol=0, atol=1e-11 * np.abs(M).max()
    )
    # and the labels really differ (so the check is not vacuous)
    assert len({tuple(np.round(v, 6)) for v in np.c_[ls, avs]}) > 1


@given(separated_lengthscales(), axis_angles)
@PROPS
def test_canonicalize_maps_all_labellings_to_one(l, a):
    gap, _ = _sign_pattern_margin(l, a)
    assume(gap > 1e-5)
    ls, avs, _ = _labellings(l, a)
    # also the axis-angle wrap a -> a (1 - 2 pi / |a|) of each labelling
    t = np.linalg.norm(avs, axis=1, keepdims=True)
    wrapped = np.where(t > 1e-6, avs * (1 - 2 * np.pi / np.maximum(t, 1e-6)), avs)
    ls_all = np.concatenate([ls, ls, [l]])
    av_all = np.concatenate([avs, wrapped, [a]])
    lc, ac = (np.asarray(v) for v in canon_j(ls_all, av_all))
    np.testing.assert_allclose(lc, np.broadcast_to(lc[0], lc.shape), rtol=1e-12)
    np.testing.assert_allclose(ac, np.broadcast_to(ac[0], ac.shape), rtol=0, atol=1e-8)
    lc, ac = lc[0], ac[0]
    # canonical: descending, same metric, and the smallest angle of the four
    # descending labellings (a brute-force oracle built with scipy)
    assert np.all(np.diff(lc) < 0)
    M = np.asarray(metric_j(l, a))
    np.testing.assert_allclose(np.asarray(metric_j(lc, ac)), M, atol=1e-10 * np.abs(M).max())
    desc = np.all(np.diff(ls, axis=1) < 0, axis=1)
    best = avs[desc][np.argmin(np.linalg.norm(avs[desc], axis=1))]
    np.testing.assert_allclose(ac, best, atol=1e-8)
    # four sign patterns: the smallest angle is at most 2 pi / 3
    assert np.linalg.norm(ac) <= 2 * np.pi / 3 + 1e-9


@given(lengthscales, axis_angles)
@PROPS
def test_canonicalize_is_idempotent(l, a):
    lc, ac = canon_j(l, a)
    lc2, ac2 = canon_j(lc, ac)
    np.testing.assert_array_equal(np.asarray(lc2), np.asarray(lc))
    np.testing.assert_allclose(np.asarray(ac2), np.asarray(ac), rtol=0, atol=1e-10)


def test_canonicalize_known_cases_and_batching():
    # a half-turn-plus about z: flipping the x and y axes is the smaller rotation
    lc, ac = canon_j(np.array([3.0, 2.0, 1.0]), np.array([0.0, 0.0, 2.5]))
    np.testing.assert_array_equal(np.asarray(lc), [3.0, 2.0, 1.0])
    np.testing.assert_allclose(np.asarray(ac), [0.0, 0.0, 2.5 - np.pi], atol=1e-12)
    # swapping the labels of two axes: (l2, l1, l3) about z by 0 is (l1, l2, l3) turned
    # by a quarter turn about z (either sense is a valid canonical form: a genuine tie)
    lc, ac = canon_j(np.array([2.0, 3.0, 1.0]), np.zeros(3))
    np.testing.assert_array_equal(np.asarray(lc), [3.0, 2.0, 1.0])
    np.testing.assert_allclose(np.abs(np.asarray(ac)), [0.0, 0.0, np.pi / 2], atol=1e-12)
    # tied length-scales and a = 0 (a four-way tie of the sign patterns): still idempotent
    for l0 in ([1.0, 1.0, np.e], [1.0, 2.0, 2.0]):
        lc, ac = canon_j(np.array(l0), np.zeros(3))
        lc2, ac2 = canon_j(lc, ac)
        np.testing.assert_array_equal(np.asarray(lc2), np.asarray(lc))
        np.testing.assert_allclose(np.asarray(ac2), np.asarray(ac), atol=1e-12)
        np.testing.assert_allclose(
            np.asarray(metric_j(lc, ac)), np.diag(np.array(l0) ** -2.0), atol=1e-12
        )
    # already canonical input is returned unchanged
    l0, a0 = np.array([3.0, 2.0, 1.0]), np.array([0.1, -0.2, 0.3])
    lc, ac = canon_j(l0, a0)
    np.testing.assert_array_equal(np.asarray(lc), l0)
    np.testing.assert_allclose(np.asarray(ac), a0, atol=1e-14)
    # leading batch axes
    rng = np.random.default_rng(13)
    l = rng.uniform(0.2, 2, size=(2, 5, 3))
    a = rng.normal(size=(2, 5, 3))
    lc, ac = canon_j(l, a)
    assert lc.shape == (2, 5, 3) and ac.shape == (2, 5, 3)
    l1, a1 = canon_j(l[1, 3], a[1, 3])
    np.testing.assert_array_equal(np.asarray(lc[1, 3]), np.asarray(l1))
    np.testing.assert_allclose(np.asarray(ac[1, 3]), np.asarray(a1), atol=1e-14)


# --------------------------------------------------------------------------- #
# metric distances
# --------------------------------------------------------------------------- #
def _random_spd(rng, n=1):
    A = rng.standard_normal((n, 3, 3))
    return A @ np.swapaxes(A, 1, 2) + 0.2 * np.eye(3)


def _ai_ref(M1, M2):
    W = np.real(sla.inv(sla.sqrtm(M1)))
    return np.linalg.norm(np.real(sla.logm(W @ M2 @ W)), "fro")


def _le_ref(M1, M2):
    return np.linalg.norm(np.real(sla.logm(M1)) - np.real(sla.logm(M2)), "fro")


ai_j = jax.jit(so3.affine_invariant)
le_j = jax.jit(so3.log_euclidean)
rf_j = jax.jit(so3.relative_frobenius)
axial_j = jax.jit(so3.axial_angle)


def test_distances_match_scipy_references():
    rng = np.random.default_rng(14)
    M1, M2 = _random_spd(rng, 6), _random_spd(rng, 6)
    ai, le, rf = (np.asarray(f(M1, M2)) for f in (ai_j, le_j, rf_j))
    assert ai.shape == le.shape == rf.shape == (6,)
    for i in range(6):
        np.testing.assert_allclose(ai[i], _ai_ref(M1[i], M2[i]), rtol=1e-9)
        np.testing.assert_allclose(le[i], _le_ref(M1[i], M2[i]), rtol=1e-9)
        np.testing.assert_allclose(
            rf[i], np.linalg.norm(M2[i] - M1[i]) / np.linalg.norm(M1[i]), rtol=1e-12
        )
    # closed form: between I and diag(e, e^2, 1) both log distances are sqrt(5);
    # relative Frobenius normalises by its first argument (the truth)
    eye = np.stack([np.eye(3)] * 6)
    D = np.stack([np.diag([np.e, np.e**2, 1.0])] * 6)
    np.testing.assert_allclose(np.asarray(ai_j(eye, D)), np.sqrt(5), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(le_j(eye, D)), np.sqrt(5), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(rf_j(2 * eye, eye)), 0.5, rtol=1e-15)


def test_distances_zero_at_equality_and_symmetric():
    rng = np.random.default_rng(15)
    M1, M2 = _random_spd(rng, 6), _random_spd(rng, 6)
    for f in (ai_j, le_j, rf_j):
        np.testing.assert_allclose(np.asarray(f(M1, M1)), 0.0, atol=1e-7)
    for f in (ai_j, le_j):
        np.testing.assert_allclose(np.asarray(f(M1, M2)), np.asarray(f(M2, M1)), rtol=1e-9)
        assert np.all(np.asarray(f(M1, M2)) > 0.1)


def test_affine_invariant_distance_is_congruence_invariant():
    rng = np.random.default_rng(16)
    M1, M2 = _random_spd(rng, 6), _random_spd(rng, 6)
    A = rng.standard_normal((6, 3, 3))
    A[0] = -A[0]  # include a reflection
    C1, C2 = A @ M1 @ np.swapaxes(A, 1, 2), A @ M2 @ np.swapaxes(A, 1, 2)
    np.testing.assert_allclose(np.asarray(ai_j(C1, C2)), np.asarray(ai_j(M1, M2)), rtol=1e-7)
    # log-Euclidean is only rotation-invariant: equal under Q, different under A
    Q = _scipy_R(rng.normal(size=(6, 3)))
    Q1, Q2 = Q @ M1 @ np.swapaxes(Q, 1, 2), Q @ M2 @ np.swapaxes(Q, 1, 2)
    le = np.asarray(le_j(M1, M2))
    np.testing.assert_allclose(np.asarray(le_j(Q1, Q2)), le, rtol=1e-9)
    assert np.abs(np.asarray(le_j(C1, C2)) - le).max() > 1e-3


# --------------------------------------------------------------------------- #
# axial angle
# --------------------------------------------------------------------------- #
def test_axial_angle():
    rng = np.random.default_rng(17)
    v, w = rng.standard_normal((50, 3)), rng.standard_normal((50, 3))
    e = np.eye(3)
    R = _scipy_R(np.array([0.3, -0.2, 1.0]))
    special = [
        (e[0], -e[0], 0.0),
        (e[0], e[1], 90.0),
        (e[0], e[0] + e[1], 45.0),
        (e[0], [np.cos(1e-3), -np.sin(1e-3), 0.0], np.degrees(1e-3)),
        (R[:, 0], -R[:, 0], 0.0),  # a principal axis against its flipped copy
        (R[:, 0], R[:, 2], 90.0),
    ]
    for i, (vi, wi, _) in enumerate(special):
        v[i], w[i] = vi, wi
    ang = np.asarray(axial_j(v, w))
    cos = np.abs(np.sum(v * w, 1)) / np.linalg.norm(v, axis=1) / np.linalg.norm(w, axis=1)
    k = len(special)
    np.testing.assert_allclose(ang[k:], np.degrees(np.arccos(cos[k:])), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ang[:k], [x[2] for x in special], rtol=1e-8, atol=1e-6)
    assert ang[0] == 0.0
    assert np.all((ang >= 0) & (ang <= 90))
    # sign-blind and scale-free
    np.testing.assert_allclose(np.asarray(axial_j(v, -w)), ang, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(axial_j(-3 * v, 0.5 * w)), ang, rtol=1e-12, atol=1e-12)
    # direction sets as rows (V.T), with broadcasting against one direction, eager
    out = np.asarray(so3.axial_angle(R.T, e[2]))
    np.testing.assert_allclose(out, np.degrees(np.arccos(np.abs(R[2]))), rtol=1e-9)
