"""Keypoint maths shared by the networks, both inference engines and the face tools.

Written once for numpy arrays and torch tensors alike (this file imports numpy only, so the
torch-free ONNX runtime and the face tools use the same code as the torch engine):

    matmul_2x2(a, b), inverse_2x2(m)     (..., 2, 2) algebra, elementwise (autocast never lowers it)
    convex_hull_area(points)             area of the convex hull of (N, 2) points
    movement_scale(kp_source, kp_init)   sqrt of the hull-area ratio (adapt_movement_scale)
    normalize_kp(...)                    relative motion transfer (Sec. 3.5 of the paper)

`normalize_kp` transfers motion, not shape: the driving keypoints' displacement from the initial
driving frame is added to the source keypoints, and the Jacobians are composed relatively,
J = J_D J_D1^-1 J_S, so a source whose object is shaped or placed differently from the driving
one keeps its own geometry.
"""
import sys
from typing import Dict

import numpy as np


def array_namespace(x):
    """torch for a torch tensor (already imported by whoever made it), numpy otherwise."""
    return sys.modules['torch'] if type(x).__module__.split('.')[0] == 'torch' else np


def matmul_2x2(a, b):
    """(..., 2, 2) @ (..., 2, 2), written elementwise: any device, promoted float dtype."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def inverse_2x2(m):
    """Inverse of (..., 2, 2) matrices by the adjugate formula (no batched LU, exportable)."""
    xp = array_namespace(m)
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    adj = xp.stack([xp.stack([d, -b], -1), xp.stack([-c, a], -1)], -2)
    return adj / det[..., None, None]


def convex_hull_area(points) -> float:
    """Area of the convex hull of (N, 2) points (Andrew's monotone chain + shoelace); 0 for
    fewer than three distinct points or collinear ones."""
    pts = sorted(set(map(tuple, np.asarray(points, dtype=np.float64)[:, :2].tolist())))
    if len(pts) < 3:
        return 0.0

    def half(seq):
        hull = []
        for p in seq:
            while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                      - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
                hull.pop()
            hull.append(p)
        return hull[:-1]

    hull = np.array(half(pts) + half(pts[::-1]))
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _host(x) -> np.ndarray:
    """A float64 numpy copy of an array or tensor (wherever it lives)."""
    if hasattr(x, 'detach'):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def movement_scale(kp_source: Dict, kp_driving_initial: Dict) -> float:
    """sqrt(area(source hull) / area(initial driving hull)), from the first item of the batch as
    the original (in inference the batch holds a single source); 1 for a degenerate driving hull."""
    source_area = convex_hull_area(_host(kp_source['value'][0]))
    driving_area = convex_hull_area(_host(kp_driving_initial['value'][0]))
    if driving_area <= 0:
        return 1.0
    return float(np.sqrt(source_area) / np.sqrt(driving_area))


def normalize_kp(kp_source, kp_driving, kp_driving_initial, adapt_movement_scale=False,
                 use_relative_movement=False, use_relative_jacobian=False):
    """Driving keypoints expressed relative to the source; dicts of 'value' (B, K, 2) and
    optionally 'jacobian' (B, K, 2, 2), numpy or torch. Without relative movement the driving
    keypoints are returned as they are (absolute transfer)."""
    scale = movement_scale(kp_source, kp_driving_initial) if adapt_movement_scale else 1.0

    kp_new = dict(kp_driving)
    if use_relative_movement:
        kp_value_diff = (kp_driving['value'] - kp_driving_initial['value']) * scale
        kp_new['value'] = kp_value_diff + kp_source['value']
        if use_relative_jacobian and 'jacobian' in kp_driving:
            jacobian_diff = matmul_2x2(kp_driving['jacobian'], inverse_2x2(kp_driving_initial['jacobian']))
            kp_new['jacobian'] = matmul_2x2(jacobian_diff, kp_source['jacobian'])
    return kp_new
