"""Keypoint maths against values worked out by hand (independent of any implementation), for
numpy arrays and torch tensors alike: relative motion, the hull-area scale, relative Jacobians."""
import numpy as np
import pytest
import torch

from modules.keypoints import convex_hull_area, inverse_2x2, matmul_2x2, movement_scale, normalize_kp

SQUARE = [[-0.2, -0.2], [0.2, -0.2], [0.2, 0.2], [-0.2, 0.2]]  # side 0.4: area 0.16


def kp(values, jacobians=None):
    out = {'value': np.array([values], dtype=np.float64)}
    if jacobians is not None:
        out['jacobian'] = np.array([jacobians], dtype=np.float64)
    return out


def as_torch(d):
    return {k: torch.from_numpy(v) for k, v in d.items()}


@pytest.mark.parametrize('backend', ['numpy', 'torch'])
def test_relative_motion_is_the_displacement_added_to_the_source(backend):
    source = kp(SQUARE)
    initial = kp([[0.0, 0.0], [0.1, 0.0], [0.1, 0.1], [0.0, 0.1]])
    driving = kp([[0.05, -0.1], [0.15, -0.1], [0.15, 0.0], [0.05, 0.0]])  # moved by (+0.05, -0.1)
    args = (source, driving, initial) if backend == 'numpy' else tuple(map(as_torch, (source, driving, initial)))
    out = normalize_kp(*args, use_relative_movement=True)
    expected = np.array(SQUARE) + [0.05, -0.1]
    np.testing.assert_allclose(np.asarray(out['value'])[0], expected, atol=1e-12)
    # absolute: the driving keypoints as they are
    np.testing.assert_allclose(np.asarray(normalize_kp(*args)['value']), driving['value'], atol=0)


@pytest.mark.parametrize('backend', ['numpy', 'torch'])
def test_adapt_scale_multiplies_the_displacement_by_the_hull_ratio(backend):
    source = kp(SQUARE)  # area 0.16
    initial = kp([[0.0, 0.0], [0.2, 0.0], [0.2, 0.2], [0.0, 0.2]])  # area 0.04: scale sqrt(0.16 / 0.04) = 2
    driving = kp([[0.01, 0.03], [0.21, 0.03], [0.21, 0.23], [0.01, 0.23]])  # moved by (0.01, 0.03)
    args = (source, driving, initial) if backend == 'numpy' else tuple(map(as_torch, (source, driving, initial)))
    assert movement_scale(*args[::2]) == pytest.approx(2.0)
    out = normalize_kp(*args, adapt_movement_scale=True, use_relative_movement=True)
    np.testing.assert_allclose(np.asarray(out['value'])[0], np.array(SQUARE) + [0.02, 0.06], atol=1e-12)


@pytest.mark.parametrize('backend', ['numpy', 'torch'])
def test_relative_jacobian_is_jd_times_inverse_jd1_times_js(backend):
    j_d, j_d1, j_s = [[2, 0], [0, 1]], [[1, 0], [0, 2]], [[1, 1], [0, 1]]
    # J_D J_D1^-1 = [[2, 0], [0, 0.5]]; times J_S = [[2, 2], [0, 0.5]]
    source, initial, driving = kp(SQUARE[:1], [j_s]), kp([[0, 0]], [j_d1]), kp([[0, 0]], [j_d])
    args = (source, driving, initial) if backend == 'numpy' else tuple(map(as_torch, (source, driving, initial)))
    out = normalize_kp(*args, use_relative_movement=True, use_relative_jacobian=True)
    np.testing.assert_allclose(np.asarray(out['jacobian'])[0, 0], [[2, 2], [0, 0.5]], atol=1e-12)
    # relative movement without relative Jacobians keeps the driving Jacobian
    out = normalize_kp(*args, use_relative_movement=True, use_relative_jacobian=False)
    np.testing.assert_allclose(np.asarray(out['jacobian'])[0, 0], j_d, atol=0)


def test_2x2_algebra_by_hand():
    m = np.array([[[4.0, 7.0], [2.0, 6.0]]])  # det 10: inverse [[0.6, -0.7], [-0.2, 0.4]]
    np.testing.assert_allclose(inverse_2x2(m)[0], [[0.6, -0.7], [-0.2, 0.4]], atol=1e-12)
    np.testing.assert_allclose(inverse_2x2(torch.from_numpy(m)).numpy()[0], [[0.6, -0.7], [-0.2, 0.4]], atol=1e-12)
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(matmul_2x2(a, b), [[2, 1], [4, 3]], atol=0)  # columns swapped
    np.testing.assert_allclose(matmul_2x2(torch.tensor(a), torch.tensor(b)).numpy(), [[2, 1], [4, 3]], atol=0)


def test_convex_hull_area_by_hand():
    assert convex_hull_area([[0, 0], [4, 0], [0, 3]]) == pytest.approx(6.0)
    assert convex_hull_area([[0, 0], [4, 0], [0, 3], [1, 1], [0.5, 0.5]]) == pytest.approx(6.0)  # inner points
    assert convex_hull_area(SQUARE) == pytest.approx(0.16)
    assert convex_hull_area([[0, 0], [1, 1], [2, 2]]) == 0.0  # collinear
    assert convex_hull_area([[1, 1], [1, 1]]) == 0.0
    # a degenerate driving hull: no scaling rather than a division by zero
    assert movement_scale(kp(SQUARE), kp([[0, 0], [0.1, 0.1], [0.2, 0.2]])) == 1.0
